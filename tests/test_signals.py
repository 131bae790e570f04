"""A command stopped by SIGTERM cleans up as after an error: no `.lock` file, no hidden temporary
file or directory, nothing a `--then` chain had written; one line, exit 143. A directory made
read-only mid-run is reported as the write that failed, not as a lock problem."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from conftest import smoke_lm
from curvmem.cli import main

# `curvmem ARGS`, writing the world's files slowly: after its first file inside the temporary
# directory of an output whose name holds SLOW, it says so and waits (to be sent SIGTERM)
SLOW_WORLD = """
import sys, time
from curvmem.cli import main
from curvmem.world import lm

write = lm._write_jsonl
def slow(path, rows):
    write(path, rows)
    if "SLOW" in str(path):
        print("writing", flush=True)
        time.sleep(120)
lm._write_jsonl = slow
sys.exit(main(sys.argv[1:]))
"""


def stop(proc: subprocess.Popen) -> tuple[int, str]:
    """SIGTERM `proc` once it says it is writing (an earlier command of a chain prints its own
    line first); its exit status and stderr."""
    for line in proc.stdout:
        if line.strip() == "writing":
            break
    else:
        pytest.fail(f"it never got to writing: {proc.communicate(timeout=60)}")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def left_behind(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*"))


def one_line(err: str, command: str) -> None:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("curvmem ")]
    assert lines == [f"curvmem {command}: stopped by SIGTERM; what it had begun writing was "
                     "removed"], err


def test_sigterm_mid_write_leaves_no_lock_and_no_temporary(tmp_path):
    out = tmp_path / "SLOW"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WORLD, "world", "--preset", "smoke",
                             "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    code, err = stop(proc)
    assert code == 143
    one_line(err, "world")
    assert left_behind(tmp_path) == [] and not out.exists()


def test_sigterm_in_a_chain_removes_its_first_output(tmp_path):
    """The same as a failed later command: the first command's finished output goes too."""
    first, second = tmp_path / "first", tmp_path / "SLOW"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WORLD, "world", "--preset", "smoke",
                             "--out", str(first), "--then", "world", "--preset", "smoke",
                             "--out", str(second)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    code, err = stop(proc)
    assert code == 143
    one_line(err, "world")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_sigterm_to_the_installed_command_mid_training(tmp_path):
    """The `curvmem` executable itself, training for long: stopped once it holds its lock."""
    w, tok, _ = smoke_lm(tmp_path / "in", steps=1)
    out = tmp_path / "run" / "model"
    # its output to files, not pipes: a long run's progress bars would fill a pipe nobody reads
    # while the test waits, and block the command in a write
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err_file:
        proc = subprocess.Popen(["curvmem", "train-lm", "--world", str(w), "--tokenizer",
                                 str(tok), "--preset", "smoke", "--steps", "100000", "--out",
                                 str(out)], stdout=subprocess.DEVNULL, stderr=err_file)
    lock = out.with_name(f".{out.name}.lock")
    deadline = time.monotonic() + 120
    while not lock.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # into the training steps
    assert proc.poll() is None, log.read_text()[-2000:]
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = log.read_text()
    assert proc.returncode == 143, err[-2000:]
    one_line(err, "train-lm")
    assert not (tmp_path / "run").exists() or left_behind(tmp_path / "run") == []
    assert not out.exists()


def test_a_directory_made_read_only_mid_run_is_named_as_the_write(tmp_path, capsys,
                                                                   monkeypatch):
    """Once the world is generated its directory turns read-only (`chmod a-w` for a user who is
    not root: simulated here, since root ignores modes and a mount with a file open for writing
    cannot be remounted read-only). The lock file beside the output cannot be removed either:
    that is a note; the error is the write that failed (it was the lock's removal, hiding it)."""
    import errno
    import os

    from curvmem.world import lm

    ro, read_only = tmp_path / "ro", []
    ro.mkdir()

    def refused(real):
        def call(path, *args, **kwargs):
            if read_only and str(path).startswith(str(ro)):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real(path, *args, **kwargs)
        return call

    for name in ("mkdir", "unlink", "rmdir"):
        monkeypatch.setattr(os, name, refused(getattr(os, name)))
    generate = lm.generate_world
    monkeypatch.setattr(lm, "generate_world", lambda cfg: (generate(cfg), read_only.append(1))[0])
    capsys.readouterr()
    assert main(["world", "--preset", "smoke", "--out", str(ro / "w")]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert "Permission denied" in errors[0] and f"'{ro / 'w'}'" in errors[0], errors[0]
    assert ".lock" not in errors[0] and ".tmp" not in errors[0], errors[0]


def test_the_previous_sigterm_handler_is_put_back(tmp_path):
    """In-process callers (tests, notebooks) keep their own handler after a command."""
    def mine(signum, frame):
        pass

    before = signal.signal(signal.SIGTERM, mine)
    try:
        assert main(["world", "--preset", "smoke", "--out", str(tmp_path / "w")]) == 0
        assert main(["world", "--preset", "smoke", "--out", str(tmp_path / "w")]) == 2
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)
