"""DVC round trip: share the smoke run's artifacts through a local remote; a fresh clone pulls
them, `snakemake --touch` marks them up to date, and `snakemake -n` finds nothing to do."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from slurm_cluster import SMOKE, copy_repo, dry_run_jobs, smoke_run, snakemake

GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org"]


def sh(cwd, *cmd):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_collaborator_pulls_touches_and_has_nothing_to_do(tmp_path):
    work = smoke_run()
    origin = copy_repo(tmp_path / "origin")
    shutil.copytree(work / "results/smoke", origin / "results/smoke")
    sh(origin, *GIT, "init", "-q")
    sh(origin, "dvc", "remote", "add", "-d", "shared", str(tmp_path / "remote"))
    sh(origin, "dvc", "commit", "--force", "smoke")  # record the outputs snakemake produced
    sh(origin, "dvc", "push", "smoke")
    sh(origin, *GIT, "add", "-A")
    sh(origin, *GIT, "commit", "-q", "-m", "smoke results")
    assert "results/smoke" in (origin / "dvc.lock").read_text()

    clone = tmp_path / "clone"
    sh(tmp_path, *GIT, "clone", "-q", str(origin), str(clone))
    assert not (clone / "results").exists()  # results travel through DVC, not git
    sh(clone, "dvc", "pull", "smoke")
    summary = "results/smoke/lm_summary.json"
    assert (clone / summary).read_bytes() == (work / summary).read_bytes()

    snakemake(clone, "--touch", "--cores", "1", f"--configfile={SMOKE}")
    assert dry_run_jobs(clone, f"--configfile={SMOKE}") == {}
