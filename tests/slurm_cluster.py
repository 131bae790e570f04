"""Helpers for the workflow tests: copies of the repository, one shared smoke run, and a one-node
SLURM cluster on this machine (munge + slurmctld + slurmd, no accounting database, one fake GPU).

Not a test module: test_workflow / test_slurm / test_dvc / test_resume import it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMOKE = "workflow/config/smoke.yaml"


# --------------------------------------------------------------------------- repository copies


def repo_files() -> list[str]:
    """Tracked plus untracked-but-not-ignored files (what a clone plus your edits would hold)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, check=True, capture_output=True).stdout.decode()
    return [f for f in out.split("\0") if f and (REPO / f).is_file()]


def copy_repo(dest: Path) -> Path:
    """A copy of the working tree at `dest` (no results/, logs/, .snakemake/)."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in repo_files():
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, target)
    return dest


def snakemake(workdir, *args, check=True, timeout=900, env=None) -> subprocess.CompletedProcess:
    """Run snakemake in `workdir`; on failure, the error shows its output."""
    proc = subprocess.run(["snakemake", *args], cwd=workdir, capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def dry_run_jobs(workdir, *args, env=None) -> dict[str, int]:
    """{rule: number of jobs} that `snakemake -n` would run (empty dict: nothing to do)."""
    return job_counts(snakemake(workdir, "-n", "--quiet", "rules", *args, env=env).stdout)


def job_counts(output: str) -> dict[str, int]:
    """{rule: number of jobs} from the job stats table snakemake prints (a dry run's, or what a
    real run ran, from its stderr); empty when there was nothing to do."""
    counts, in_table = {}, False
    for line in output.splitlines():
        parts = line.split()
        if line.startswith("job") and "count" in line:
            in_table = True
        elif in_table and len(parts) == 2 and parts[1].isdigit():
            if parts[0] == "total":
                break
            counts[parts[0]] = int(parts[1])
    return counts


_SMOKE_RUN: Path | None = None


def smoke_run() -> Path:
    """A repository copy in which the smoke DAG has run to completion, shared by every test of
    this pytest process (the run takes a minute or two; it is done at most once)."""
    global _SMOKE_RUN
    if _SMOKE_RUN is None:
        tmp = Path(tempfile.mkdtemp(prefix="curvmem-smoke-"))
        atexit.register(shutil.rmtree, tmp, True)
        work = copy_repo(tmp / "repo")
        snakemake(work, "--cores", "2", "--configfile", SMOKE)
        _SMOKE_RUN = work
    return _SMOKE_RUN


# --------------------------------------------------------------------------- SLURM cluster


def slurm_installed() -> bool:
    return all(shutil.which(x) for x in ("slurmctld", "slurmd", "sbatch", "squeue", "munged"))


def install_slurm() -> None:
    """Debian's slurm-wlm and munge (we are root in CI); a no-op when they are present."""
    if slurm_installed():
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"], check=True, env=env,
                   capture_output=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mem_total_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise TimeoutError(f"timed out waiting for {what}")


ETC = Path("/etc/slurm")  # where srun inside a job looks: the jobstep plugin drops SLURM_CONF


class Cluster:
    """A running one-node cluster. Its slurm.conf and gres.conf go to /etc/slurm (any files there
    are backed up under `root` and put back by stop()); state, logs and sockets live in `root`."""

    def __init__(self, root: Path):
        self.root = root
        self.conf = ETC / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.procs: list[subprocess.Popen] = []
        self.node = socket.gethostname().split(".")[0]
        self.backups: dict[Path, Path | None] = {}

    def _install(self, name: str, text: str) -> None:
        target = ETC / name
        backup = None
        if target.exists():
            backup = self.root / f"{name}.backup"
            shutil.copy2(target, backup)
        self.backups[target] = backup
        ETC.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def _restore(self) -> None:
        for target, backup in self.backups.items():
            if backup is None:
                target.unlink(missing_ok=True)
            else:
                shutil.copy2(backup, target)
        self.backups.clear()

    def write_config(self) -> None:
        for d in ("state", "spool", "munge"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        cpus = os.cpu_count() or 1
        mem = int(_mem_total_mb() * 0.8)  # below what slurmd measures, or it drains the node
        self._install("slurm.conf", f"""\
ClusterName=curvmemtest
SlurmctldHost={self.node}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.root / 'munge' / 'munge.socket'}
CredType=cred/munge
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
StateSaveLocation={self.root / 'state'}
SlurmdSpoolDir={self.root / 'spool'}
SlurmctldPidFile={self.root / 'slurmctld.pid'}
SlurmdPidFile={self.root / 'slurmd.pid'}
SlurmctldLogFile={self.root / 'slurmctld.log'}
SlurmdLogFile={self.root / 'slurmd.log'}
SlurmctldDebug=debug
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=86400
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
GresTypes=gpu
NodeName={self.node} CPUs={cpus} RealMemory={mem} Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=ALL Default=NO MaxTime=INFINITE State=UP
""")
        self._install("gres.conf", f"NodeName={self.node} Name=gpu File=/dev/null\n")

    def _start(self, cmd: list[str]) -> None:
        """Start a daemon in the foreground of its own session (so stop() can end its group)."""
        with open(self.root / f"{Path(cmd[0]).name}.out", "w") as log:
            self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=log,
                                               stderr=subprocess.STDOUT, start_new_session=True))

    def start(self) -> None:
        self.write_config()
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True)
        sock = self.root / "munge" / "munge.socket"
        self._start(["munged", "--foreground", "--force", f"--socket={sock}",
                     f"--pid-file={self.root / 'munge' / 'munged.pid'}",
                     f"--seed-file={self.root / 'munge' / 'munge.seed'}",
                     f"--log-file={self.root / 'munge' / 'munged.log'}"])
        _wait(sock.exists, 20, "munged")
        self._start(["slurmctld", "-D", "-i"])
        _wait(lambda: self.run("sinfo", check=False).returncode == 0, 60, "slurmctld")
        self._start(["slurmd", "-D"])
        _wait(lambda: self.run("sinfo", "-h", "-o", "%t", check=False).stdout.strip() == "idle",
              60, "the node to become idle")

    def run(self, *cmd, check=True) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=check)

    def jobs(self) -> list[dict]:
        """Every job the controller still knows (MinJobAge keeps finished ones for a day)."""
        out = self.run("scontrol", "show", "job", "--oneliner", check=False).stdout
        jobs = []
        for line in out.splitlines():
            if line.startswith("JobId="):
                fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
                jobs.append(fields)
        return jobs

    def stop(self) -> None:
        """Cancel this cluster's jobs, then stop every daemon it started (each by its own
        process group, newest first)."""
        if self.procs:
            live = [j["JobId"] for j in self.jobs() if j.get("JobState") in ("PENDING", "RUNNING")]
            if live:
                self.run("scancel", *live, check=False)
                time.sleep(2)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        self.procs.clear()
        self._restore()

    def log(self) -> str:
        return (self.root / "slurmctld.log").read_text(errors="replace")


@contextmanager
def slurm_cluster(root: Path):
    """Start a one-node cluster under `root`; stop it on exit, also when the block fails."""
    root.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
