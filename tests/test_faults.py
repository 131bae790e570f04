"""Faults across the smoke DAG: SIGKILL at seeded job counts, a locked directory, a SLURM job
cancelled under the profile, a full disk. After each, the same command (with --unlock where the
kill left a lock) must finish the DAG, recompute nothing that had finished, and give result files
byte for byte those of an uninterrupted run (measured costs are in their own files).

Kill points are spread over ONE run sequence: run, kill when the k-th job of the DAG has finished
(plus a seeded delay, so most kills land inside a running job), unlock, rerun until the next kill
point, ..., then a last run to the end. One extra run of the DAG, not ten.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from curvmem.report.costs import is_cost_file
from slurm_cluster import SMOKE, copy_repo, dry_run_jobs, smoke_run, snakemake

KILL_POINTS = 10
SEED = 20


def incomplete_outputs(work: Path) -> set[str]:
    """Outputs of jobs that started and did not finish (snakemake's own markers)."""
    marks = work / ".snakemake/incomplete"
    if not marks.is_dir():
        return set()
    return {base64.urlsafe_b64decode(m.name.encode()).decode(errors="replace")
            for m in marks.iterdir()}


def finished_files(work: Path) -> dict[str, int]:
    """{path: mtime_ns} of every result file a finished job wrote: not an incomplete output (or
    a file inside or beside one: its checksum sidecar), not a hidden temp or lock file, not a
    job's log ({outdir}/logs/: a killed job's log is rewritten when the job runs again) and not
    its benchmark TSV ({outdir}/benchmarks/: snakemake writes it after the job's command and
    before it clears the job's incomplete marks, so a kill between the two reruns a job whose
    TSV looked finished; a finished job's own outputs still tell whether it ran again)."""
    broken = incomplete_outputs(work)
    files = {}
    for p in (work / "results").rglob("*"):
        rel = str(p.relative_to(work))
        parts = p.relative_to(work).parts
        if not p.is_file() or any(part.startswith(".") for part in parts) \
                or "logs" in parts or "benchmarks" in parts:
            continue
        # beside an incomplete output: its checksum (x.safetensors.sha256) or its JSON sidecar
        # (x.json, written by the same job: the vision data's record, an edit's spec)
        if any(rel == b or rel.startswith(b.rstrip("/") + "/") or rel.startswith(b + ".")
               or (Path(b).suffix and rel.startswith(str(Path(b).with_suffix("")) + "."))
               for b in broken):
            continue
        files[rel] = p.stat().st_mtime_ns
    return files


def result_files(work: Path) -> dict[str, bytes]:
    """Every result file under the outdir, as its bytes: all but the measured costs (`*.cost.json`
    and cost tables, curvmem.report.costs.is_cost_file), the jobs' logs/ and benchmarks/, hidden
    temp and lock files, and report.html (snakemake's report embeds each job's runtime). Every
    other byte is compared: safetensors files included (each holds one metadata key, so its
    header, and with it the sha256 its sidecars record, is the same in every run)."""
    files = {}
    for p in sorted(p for p in (work / "results").rglob("*") if p.is_file()):
        rel = p.relative_to(work)
        if (is_cost_file(p) or p.name == "report.html"
                or any(part.startswith(".") for part in rel.parts)
                or "logs" in rel.parts or "benchmarks" in rel.parts):
            continue
        files[str(rel)] = p.read_bytes()
    return files


class Run:
    """One `snakemake` of the smoke DAG in its own process group; counts finished jobs."""

    def __init__(self, work: Path, *extra: str):
        self.done = 0
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            ["snakemake", "--cores", "2", f"--configfile={SMOKE}", *extra], cwd=work,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)
            m = re.match(r"(\d+) of \d+ steps", line)
            if m:
                self.done = int(m.group(1))

    def kill(self):
        os.killpg(self.proc.pid, signal.SIGKILL)  # snakemake and its running jobs, no cleanup
        self.proc.wait()
        self.reader.join(10)

    def wait(self, timeout=900) -> int:
        rc = self.proc.wait(timeout=timeout)
        self.reader.join(10)
        return rc


@pytest.mark.slow
@pytest.mark.xdist_group("smoke-and-slurm")
def test_sigkill_at_ten_job_counts_then_resume(tmp_path):
    # the shared uninterrupted run, in another directory: results name paths relative to the
    # repository, so they are the same bytes in any checkout
    reference = result_files(smoke_run())
    work = copy_repo(tmp_path / "repo")
    total = sum(dry_run_jobs(work, f"--configfile={SMOKE}").values())
    rng = random.Random(SEED)
    points = sorted(rng.sample(range(1, total - 1), KILL_POINTS))  # `all` is the last job
    t0 = time.time()
    kept: dict[str, int] = {}  # files of jobs that had finished before some kill
    finished_before = 0
    log = []
    for i, point in enumerate(points):
        run = Run(work, "--rerun-incomplete")
        deadline = time.time() + 600
        while finished_before + run.done < point:
            assert run.proc.poll() is None, "".join(run.lines[-40:])
            assert time.time() < deadline, f"kill point {point} never reached"
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 1.5))  # most kills land inside a running job
        run.kill()
        finished_before += run.done
        broken = incomplete_outputs(work)
        log.append({"point": point, "finished": finished_before, "killed_inside": sorted(broken)})
        now = finished_files(work)
        # a finished job's files are untouched by every later run (temp() shards excepted:
        # merge consumes them)
        changed = [p for p, t in kept.items() if p in now and now[p] != t]
        assert not changed, f"kill {i}: finished jobs ran again: {changed}"
        kept.update(now)
        if i == 0:
            # the dead run's lock: a second snakemake exits with snakemake's message, touches
            # nothing. --rerun-incomplete, as a user resuming would pass: without it a kill that
            # landed inside a job is refused first for its incomplete files (the lock is then
            # never reached, and which message comes depends on where the kill landed)
            before = {p.relative_to(work): p.stat().st_mtime_ns
                      for p in (work / "results").rglob("*") if p.is_file()}
            locked = snakemake(work, "--cores", "2", f"--configfile={SMOKE}",
                               "--rerun-incomplete", check=False)
            assert locked.returncode != 0
            assert "Directory cannot be locked" in locked.stdout + locked.stderr
            assert {p.relative_to(work): p.stat().st_mtime_ns
                    for p in (work / "results").rglob("*") if p.is_file()} == before
        snakemake(work, "--unlock", "--cores", "1", f"--configfile={SMOKE}")
    final = Run(work, "--rerun-incomplete")
    assert final.wait() == 0, "".join(final.lines[-60:])
    now = finished_files(work)
    changed = [p for p, t in kept.items() if p in now and now[p] != t]
    assert not changed, f"finished jobs ran again: {changed}"
    results = result_files(work)
    assert sorted(results) == sorted(reference)
    differ = [p for p in reference if results[p] != reference[p]]
    assert not differ, f"result files that differ from an uninterrupted run's: {differ}"
    assert dry_run_jobs(work, f"--configfile={SMOKE}") == {}
    print(json.dumps({"total_jobs": total, "kill_points": points, "kills": log,
                      "seconds": round(time.time() - t0, 1)}), file=sys.stderr)


# --------------------------------------------------------------------------- SLURM: scancel


@pytest.mark.slow
@pytest.mark.xdist_group("smoke-and-slurm")
def test_a_cancelled_slurm_job_is_retried_once_by_the_profile(tmp_path):
    from slurm_cluster import install_slurm, slurm_cluster

    install_slurm()
    work = copy_repo(tmp_path / "repo")
    target = "results/smoke/lm/models"  # world -> tokenizer: two short CPU jobs
    listing = snakemake(work, "-n", f"--configfile={SMOKE}").stdout
    tok = next(w.rstrip(",") for w in listing.split()
               if w.startswith(target) and w.rstrip(",").endswith("/tokenizer"))
    with slurm_cluster(tmp_path / "cluster") as cluster:
        proc = subprocess.Popen(
            ["snakemake", "--profile", "slurm", f"--configfile={SMOKE}",
             "--default-resources", "slurm_partition=debug", "--slurm-status-command", "squeue",
             "--slurm-init-seconds-before-status-checks", "1", tok],
            cwd=work, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True)
        try:
            deadline, cancelled = time.time() + 300, None
            while cancelled is None:
                assert proc.poll() is None and time.time() < deadline, "no job ever ran"
                running = [j for j in cluster.jobs() if j.get("JobState") == "RUNNING"]
                if running:
                    cancelled = running[0]
                    cluster.run("scancel", cancelled["JobId"])
                time.sleep(0.2)
            out, _ = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        jobs = cluster.jobs()
    assert proc.returncode == 0, out[-4000:]
    rule = cancelled["Comment"]
    same_rule = [j for j in jobs if j.get("Comment") == rule]
    states = sorted(j["JobState"] for j in same_rule)
    assert states == ["CANCELLED", "COMPLETED"], states  # retried once, and it finished
    assert (work / tok).is_dir()


# --------------------------------------------------------------------------- a full disk


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if not shutil.which("mount") or os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, check=False).returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["collect", "eigen"])
def test_a_full_disk_fails_the_job_leaves_nothing_and_resumes(tmp_path, rule):
    """A tmpfs with a size limit, filled but for a few KiB: the job fails with the job's own
    error, no file a rerun would take as complete is left; once space is freed it runs."""
    from conftest import tiny_olmo2
    from curvmem.cli import main
    from curvmem.schema import read_layer

    small = tmp_path / "small"
    if not _mount_tmpfs(small, "4m"):
        pytest.skip("mounting a size-limited tmpfs needs root and a mount-capable container")
    try:
        model = tmp_path / "olmo"
        tiny_olmo2(d=64, ff=256).save_pretrained(model)
        tokens = tmp_path / "tokens.npy"
        np.save(tokens, np.random.default_rng(0).integers(0, 61, 12 * 20))
        collect = ["collect", "--model", model, "--data", tokens, "--layers", "1", "--tokens",
                   240, "--seq-len", 12, "--batch-size", 4, "--device", "cpu"]
        factors = tmp_path / "factors"
        if rule == "eigen":
            assert main([str(a) for a in (*collect, "--out", factors)]) == 0
            cmd = ["eigen", "--factors", factors / "layer_1.nc", "--device", "cpu",
                   "--out", small / "eigen" / "layer_1.nc"]
            out_file = small / "eigen" / "layer_1.nc"
        else:
            cmd = [*collect, "--out", small / "factors"]
            out_file = small / "factors" / "layer_1.nc"
        filler = small / "filler"
        with open(filler, "wb") as f:  # leave 16 KiB: below one layer file
            free = shutil.disk_usage(small).free
            f.write(b"\0" * (free - 16 * 1024))
        proc = subprocess.run([shutil.which("curvmem"), *map(str, cmd)],
                              capture_output=True, text=True, check=False)
        assert proc.returncode != 0
        assert "No space left on device" in proc.stderr or "ENOSPC" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr
        leftover = [p for p in small.rglob("*") if p.is_file() and p != filler]
        # nothing, or a payload without its checksum, which no reader accepts
        for p in leftover:
            assert p == out_file, leftover
            with pytest.raises(ValueError, match="incomplete|corrupt"):
                read_layer(p, "factors" if rule == "collect" else "eigen")
        filler.unlink()
        proc = subprocess.run([shutil.which("curvmem"), *map(str, cmd)],
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        assert read_layer(out_file, "factors" if rule == "collect" else "eigen").layer == 1
    finally:
        subprocess.run(["umount", str(small)], check=False)
