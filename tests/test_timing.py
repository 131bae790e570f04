"""The start-up/compute split each CLI process logs (benchmarks/bench_default.py reads it)."""

from __future__ import annotations

import json
import time

import pytest

from curvmem import io
from curvmem.cli import main


def test_process_age_counts_from_the_process_start():
    if io.process_age() is None:
        pytest.skip("no /proc on this system")
    a = io.process_age()
    time.sleep(0.05)
    assert 0 < a < io.process_age()


def test_startup_ends_at_the_first_model_ready():
    if io.process_age() is None:
        pytest.skip("no /proc on this system")
    command_age = io.begin_command()
    split = io.startup_split(command_age)
    assert split["model_ready"] is False and split["startup_seconds"] == round(command_age, 2)
    time.sleep(0.05)
    io.note_model_ready()
    ready = io.process_age()
    time.sleep(0.05)
    io.note_model_ready()  # a second model (coherence's base, say) does not move the mark
    split = io.startup_split(command_age)
    assert split["model_ready"] is True
    assert split["startup_seconds"] == pytest.approx(ready, abs=0.02)
    assert split["compute_seconds"] >= 0.04
    io.begin_command()  # the next command starts afresh
    assert io.startup_split(io.process_age())["model_ready"] is False


def test_the_cli_logs_one_timing_line(tmp_path, capsys):
    if io.process_age() is None:
        pytest.skip("no /proc on this system")
    assert main(["world", "--out", str(tmp_path / "w"), "--preset", "smoke"]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("curvmem timing:")]
    assert len(lines) == 1
    split = json.loads(lines[0].removeprefix("curvmem timing:"))
    assert split["model_ready"] is False and split["compute_seconds"] >= 0
