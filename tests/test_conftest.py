"""tests/conftest.py's rules, checked by running pytest on small suites that use this conftest:
under CI a test skipped for a missing package fails (at module level and inside a test), every
other skip stays a skip, and outside CI nothing changes; on two workers the tests of one
xdist_group run on one worker, and a run that would not keep them together fails them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = {
    "test_module_level.py": 'import pytest\npytest.importorskip("no_such_package_here")\n\n\n'
                            "def test_never_collected():\n    pass\n",
    "test_inside.py": "import pytest\n\n\ndef test_import_inside():\n"
                      '    pytest.importorskip("no_such_package_here")\n\n\n'
                      "def test_plain_skip():\n"
                      '    pytest.skip("not on this machine")\n\n\n'
                      "def test_passes():\n    pass\n",
}


# each test writes the worker it ran on; two of them must share one
GROUPED = ("import os\nfrom pathlib import Path\n\nimport pytest\n\n\n"
           "def ran(name):\n"
           "    Path(name).write_text(os.environ.get('PYTEST_XDIST_WORKER', 'none'))\n\n\n"
           + "".join(f"{mark}def test_{i}():\n    ran('{i}.worker')\n\n\n"
                     for i, mark in enumerate(['@pytest.mark.xdist_group("shared")\n'] * 2
                                              + [""] * 6)))


def run_suite(tmp_path: Path, ci: str | None, suite=SUITE, *options: str) -> str:
    for name, text in suite.items():
        (tmp_path / name).write_text(text)
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    argv = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
            *(options or ("-p", "no:xdist")), "--continue-on-collection-errors", str(tmp_path)]
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    return proc.stdout + proc.stderr


def test_under_ci_a_missing_package_fails(tmp_path):
    out = run_suite(tmp_path, "true")
    assert "ERROR test_module_level.py" in out, out
    assert "FAILED test_inside.py::test_import_inside" in out, out
    assert "SKIPPED [1] test_inside.py" in out and "not on this machine" in out, out
    assert "under CI every test package is installed" in out
    assert "1 failed, 1 passed, 1 skipped, 1 error" in out, out


def test_outside_ci_a_missing_package_is_a_skip(tmp_path):
    out = run_suite(tmp_path, None)
    assert "1 passed, 3 skipped" in out, out
    assert "failed" not in out and "error" not in out, out


@pytest.mark.parametrize("value, ci", [(None, False), ("", False), ("0", False),
                                       ("false", False), ("False", False), ("true", True),
                                       ("1", True), ("yes", True)])
def test_what_counts_as_ci(value, ci):
    from conftest import in_ci

    assert in_ci({} if value is None else {"CI": value}) is ci


@pytest.mark.slow  # three pytest processes: what CI's two workers rely on
def test_an_xdist_group_runs_on_one_worker(tmp_path):
    pytest.importorskip("xdist")  # in [test]; under CI a missing one fails
    out = run_suite(tmp_path, None, {"test_grouped.py": GROUPED}, "-n", "2", "--dist",
                    "loadgroup")
    assert "8 passed" in out, out
    workers = {i: (tmp_path / f"{i}.worker").read_text() for i in range(8)}
    assert workers[0] == workers[1] and workers[0].startswith("gw"), workers
    assert len(set(workers.values())) == 2, workers  # the others did spread over both


@pytest.mark.slow  # three pytest processes: what CI's two workers rely on
def test_workers_that_would_split_a_group_fail_its_tests(tmp_path):
    pytest.importorskip("xdist")  # in [test]; under CI a missing one fails
    out = run_suite(tmp_path, None, {"test_grouped.py": GROUPED}, "-n", "2", "--dist", "load")
    assert "6 passed, 2 errors" in out, out
    assert "run with --dist loadgroup" in out
    assert not (tmp_path / "0.worker").exists() and not (tmp_path / "1.worker").exists()
