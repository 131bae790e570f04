"""Resume after a hard kill: SIGKILL the whole DAG during factor collection, unlock, run the same
command again: finished jobs are not recomputed and no partial file is taken as complete."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import time

import pytest
import xarray as xr

from slurm_cluster import SMOKE, copy_repo, dry_run_jobs, snakemake


def incomplete_outputs(work):
    """Outputs of jobs that started but did not finish (snakemake's own markers)."""
    marks = work / ".snakemake/incomplete"
    if not marks.is_dir():
        return []
    return [base64.urlsafe_b64decode(m.name.encode()).decode(errors="replace")
            for m in marks.iterdir()]


@pytest.mark.slow
def test_sigkill_during_collection_then_resume(tmp_path):
    work = copy_repo(tmp_path / "repo")
    out = work / "results/smoke/lm"
    cmd = ["snakemake", "--cores", "2", f"--configfile={SMOKE}", "--rerun-incomplete"]
    # the LM factor path only: world, tokenizer, training, 2 collection shards, merge, eigen
    eigen_dir = "results/smoke/lm/eigen"
    listing = snakemake(work, "-n", *cmd[1:]).stdout
    target = next(w for w in listing.split() if w.startswith(eigen_dir) and w.endswith(".nc"))
    targets = [target.rstrip(",")]

    proc = subprocess.Popen(cmd + targets, cwd=work, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not any("/factors/" in f for f in incomplete_outputs(work)):
            assert proc.poll() is None, "the run ended before factor collection started"
            assert time.time() < deadline, "factor collection never started"
            time.sleep(0.2)
        time.sleep(1.0)  # well inside `curvmem collect`
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # snakemake and its running jobs, no cleanup
        proc.wait()

    killed = [f for f in incomplete_outputs(work) if "/factors/" in f]
    assert killed
    finished = {p: p.stat().st_mtime_ns for p in (out / "models").rglob("*") if p.is_file()}
    assert any(p.name == "model.safetensors" for p in finished)
    # a writer that is not atomic would leave a truncated file behind: plant one
    partial = work / killed[0]
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(b"\x89HDF\r\n truncated")

    snakemake(work, "--unlock", *cmd[1:])
    rerun = snakemake(work, *cmd[1:], *targets)
    log = rerun.stdout + rerun.stderr
    for rule in ("world", "tokenizer", "train_lm"):
        assert f"rule {rule}:" not in log, f"{rule} was recomputed"
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    # the planted partial file was recomputed, never taken as complete: a shard is temp(), so
    # merge consumed and removed it, and the merged factor file is readable
    if "/shard-" in killed[0]:
        assert not partial.exists()
        partial = partial.parent.parent / partial.name
    tree = xr.open_datatree(partial, engine="h5netcdf")
    assert tree.attrs["kind"] == "factors"
    tree.close()
    assert (work / targets[0]).is_file()
    assert dry_run_jobs(work, *cmd[1:], *targets) == {}
