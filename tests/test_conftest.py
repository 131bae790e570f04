"""tests/conftest.py's rule: under CI a test skipped for a missing package fails (at module level
and inside a test), every other skip stays a skip, and outside CI nothing changes. Checked by
running pytest on a small suite that uses this conftest."""

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


def run_suite(tmp_path: Path, ci: str | None) -> str:
    for name, text in SUITE.items():
        (tmp_path / name).write_text(text)
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    argv = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-p",
            "no:xdist", "--continue-on-collection-errors", str(tmp_path)]
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


@pytest.mark.parametrize("ci", [None, "false"])
def test_outside_ci_a_missing_package_is_a_skip(tmp_path, ci):
    out = run_suite(tmp_path, ci)
    assert "1 passed, 3 skipped" in out, out
    assert "failed" not in out and "error" not in out, out
