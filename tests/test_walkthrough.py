"""examples/walkthrough.py runs top to bottom in under a minute and tells its story: the
curvature edit takes recitation of the memorized canaries away and keeps most of the rule, and
as many random pairs keep neither."""

from __future__ import annotations

import re
import resource
import subprocess
import sys
import time
from pathlib import Path

WALKTHROUGH = Path(__file__).resolve().parents[1] / "examples" / "walkthrough.py"


def recitation_rows(stdout: str) -> dict:
    """{row label: (canaries, unseen rule sequences)} from the printed recitation table."""
    rows = {}
    for label, canaries, rules in re.findall(
            r"^  (.+?)\s+canaries \(memorized\):\s+(\d+)%\s+unseen rule sequences:\s+(\d+)%",
            stdout, flags=re.M):
        rows[label.strip()] = (int(canaries) / 100, int(rules) / 100)
    return rows


def test_the_walkthrough_runs_in_under_a_minute_and_tells_its_story():
    def cpu_seconds():
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        return used.ru_utime + used.ru_stime

    t0, cpu0 = time.perf_counter(), cpu_seconds()
    done = subprocess.run([sys.executable, str(WALKTHROUGH)], capture_output=True, text=True,
                          timeout=300)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    assert done.returncode == 0, done.stderr[-2000:]
    # CPU time, not wall time: on a shared machine the wall clock also counts others' work
    # (13 s of CPU here; 18 to 34 s wall on this 2-core machine at loads of 6 to 8)
    assert cpu < 60, f"the walkthrough took {cpu:.0f} s of CPU time ({wall:.0f} s wall)"
    rows = recitation_rows(done.stdout)
    before, after = rows["before any edit"], rows["after the edit (rho 0.9, layer 0)"]
    control = rows["control: as many random pairs"]
    assert before[0] == 1.0 and before[1] >= 0.9  # memorized, and the rule learned
    assert after[1] >= 0.75  # the rule survives the edit
    assert before[0] - after[0] > before[1] - after[1]  # recitation goes first
    assert control[1] < after[1]  # curvature chose the pairs, not their number
    assert "back to the trained model:        canaries 100%" in done.stdout  # restored
    assert re.search(r"the top \d+ \([\d.]+%\) hold 90% of the curvature mass", done.stdout)
