"""Time and peak memory of the embedded default, end to end: a fresh clone, `snakemake --cores N`.

docs/benchmarks.md's figures for the default (wall time, jobs, LM training time, memory) come from this.
It clones the repository's committed HEAD (uncommitted changes are not measured) into a scratch
directory, runs the whole DAG there with the installed curvmem, and samples memory every
`--interval` seconds: the machine's used memory (MemTotal - MemAvailable) above its level before
the run, and the largest resident set of any process under snakemake. Linux only (/proc).
torch.compile's kernel cache (TORCHINDUCTOR_CACHE_DIR) starts empty, as on a fresh machine.

Where the time goes, per rule: the sum of its jobs' wall times (Snakemake's `benchmark:` TSVs)
split into process start-up (interpreter, imports, model load: until the job's model is ready)
and compute, from the `curvmem timing:` line each CLI process writes to its job log.

    python benchmarks/bench_default.py                       # docs/benchmarks.md's figures
    python benchmarks/bench_default.py --cores 2 --keep /tmp/run   # keep the run's results/
    python benchmarks/bench_default.py --configfile workflow/config/adamw.yaml  # AdamW, 8 layers
    python benchmarks/bench_default.py --snapshot docs/results/default   # the README's numbers
    python benchmarks/bench_default.py --isa avx2 --snapshot docs/results/default-avx2

`--snapshot DIR` copies what the README's results section is generated from into DIR (the
summaries, readme_tables.md, the analyses' JSON, and run.json: these figures, the commit, the
machine and the versions); commit DIR, then paste DIR/readme_tables.md into the README.
A multi-seed study (workflow/config/paper.yaml) is snapshotted per seed, then across seeds:

    for s in 0 1 2; do python benchmarks/bench_default.py --existing LOG_s \
        --configfile workflow/config/paper.yaml --seed $s --snapshot docs/results/paper/seed-$s; done
    snakemake --cores 1 --configfile workflow/config/paper.yaml seeds   # the report across seeds
    cp results/paper/seeds/* docs/results/paper/      # seeds_summary.json, readme_tables.md
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What makes a CPU run as an AVX2-only one (`--isa avx2`): ATen's vector kernels, oneDNN and MKL
# each capped at AVX2, so bf16 matmuls are emulated and Muon iterates in float32, as on such a CPU.
AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
             "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
# the environment variables that change speed (and, for the first three, which kernels run)
RECORDED_ENV = (*AVX2_ONLY, "OMP_WAIT_POLICY", "OMP_NUM_THREADS")


def recorded_env(env) -> dict:
    return {k: env[k] for k in RECORDED_ENV if k in env}


def used_memory_mb() -> float:
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        info[key] = int(value.split()[0])  # kB
    return (info["MemTotal"] - info["MemAvailable"]) / 1024


def tree_max_rss_mb(root_pid: int) -> float:
    """The largest VmRSS among root_pid and its descendants (processes can vanish mid-scan)."""
    parents, rss = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        parents[int(entry)] = int(fields.get("PPid", "0").strip() or 0)
        rss[int(entry)] = int(fields.get("VmRSS", "0 kB").split()[0]) / 1024
    best = 0.0
    for pid, mb in rss.items():
        p = pid
        while p and p != root_pid:
            p = parents.get(p, 0)
        if p == root_pid:
            best = max(best, mb)
    return best


def sample(proc: subprocess.Popen, interval: float, out: dict) -> None:
    while proc.poll() is None:
        out["used_mb"] = max(out["used_mb"], used_memory_mb())
        out["max_rss_mb"] = max(out["max_rss_mb"], tree_max_rss_mb(proc.pid))
        time.sleep(interval)


def _cpuinfo() -> str:
    return Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""


def cpu_model() -> str:
    model = re.search(r"^model name\s*:\s*(.+)$", _cpuinfo(), re.M)
    return model[1].strip() if model else platform.processor()


def cpu_description() -> str:
    """The CPU model and the instruction sets that matter to torch on CPU."""
    flags = set((re.search(r"^flags\s*:\s*(.+)$", _cpuinfo(), re.M) or [None, ""])[1].split())
    sets = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{cpu_model()} ({', '.join(sets) or 'no AVX2'})"


def job_records(snakemake_log: Path, work: Path) -> list[dict]:
    """One record per job of the run: its rule, and from its benchmark TSV and job log the wall
    seconds, peak RSS and the start-up / compute split (None where a job has no such file)."""
    jobs, job = [], None
    for line in snakemake_log.read_text().splitlines():
        started = re.match(r"^(?:local)?rule (\S+):$", line)
        if started:
            job = {"rule": started[1], "log": None, "benchmark": None}
            jobs.append(job)
        elif job is not None and (field := re.match(r"^\s+(log|benchmark): (\S+)", line)):
            job[field[1]] = field[2]
    for job in jobs:
        tsv = work / job["benchmark"] if job["benchmark"] else None
        if tsv and tsv.is_file():
            rows = [r.split("\t") for r in tsv.read_text().splitlines()]
            row = dict(zip(rows[0], rows[-1]))
            job["wall"] = float(row["s"])
            job["max_rss_mb"] = float(row["max_rss"]) if row["max_rss"] not in ("-", "") else None
        log = work / job["log"] if job["log"] else None
        timing = None
        if log and log.is_file():
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("curvmem timing:"):
                    timing = json.loads(line.removeprefix("curvmem timing:"))
        job["timing"] = timing
    return jobs


def per_rule(jobs: list[dict]) -> dict:
    """{rule: {"jobs", "wall", "startup", "compute", "max_rss_mb"}} over the jobs that ran."""
    out = {}
    for job in jobs:
        r = out.setdefault(job["rule"], {"jobs": 0, "wall": 0.0, "startup": 0.0, "compute": 0.0,
                                         "max_rss_mb": 0.0})
        r["jobs"] += 1
        r["wall"] += job.get("wall") or 0.0
        if job["timing"]:
            r["startup"] += job["timing"]["startup_seconds"]
            r["compute"] += job["timing"]["compute_seconds"]
        r["max_rss_mb"] = max(r["max_rss_mb"], job.get("max_rss_mb") or 0.0)
    return out


def print_rules(rules: dict) -> None:
    print(f"  {'rule':<18}{'jobs':>5}{'wall s':>9}{'start-up s':>12}{'compute s':>11}"
          f"{'max RSS MB':>12}")
    for name, r in sorted(rules.items(), key=lambda kv: -kv[1]["wall"]):
        print(f"  {name:<18}{r['jobs']:>5}{r['wall']:>9.1f}{r['startup']:>12.1f}"
              f"{r['compute']:>11.1f}{r['max_rss_mb']:>12.0f}")
    total = {k: sum(r[k] for r in rules.values()) for k in ("jobs", "wall", "startup", "compute")}
    print(f"  {'all jobs':<18}{total['jobs']:>5}{total['wall']:>9.1f}{total['startup']:>12.1f}"
          f"{total['compute']:>11.1f}")


def snapshot(work: Path, dest: Path, figures: dict, outdir: str = "results") -> None:
    """What the README's results are generated from, with the facts of the run that made it."""
    out = work / outdir
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("lm_summary.json", "vit_summary.json", "readme_tables.md", "lm_table.md",
                 "vit_table.md", "compare.md"):
        if (out / name).is_file():
            shutil.copy2(out / name, dest / name)
    if (out / "analysis").is_dir():
        (dest / "analysis").mkdir(exist_ok=True)
        for f in (out / "analysis").glob("*.json"):
            shutil.copy2(f, dest / "analysis" / f.name)
    versions = {p: importlib.metadata.version(p) for p in ("torch", "transformers", "timm",
                                                          "snakemake")}
    run = {**figures, "versions": versions, "python": platform.python_version()}
    (dest / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    print(f"  snapshot in {dest}")


def training_log(train_logs: list[Path]) -> dict:
    """The first LM's training log, with its measured "seconds" from the cost file beside its
    model directory (`model.cost.json`; an older train_log.json held them itself)."""
    if not train_logs:
        return {}
    log = json.loads(train_logs[0].read_text())
    side = train_logs[0].parent.with_name(train_logs[0].parent.name + ".cost.json")
    if side.is_file():
        log["seconds"] = json.loads(side.read_text()).get("seconds")
    return log


def log_wall_seconds(text: str) -> float | None:
    """First to last job timestamp of a snakemake log ([Wed Dec  2 09:12:01 2026])."""
    stamps = [time.mktime(time.strptime(m, "%a %b %d %H:%M:%S %Y"))
              for m in re.findall(r"^\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]$", text, re.M)]
    return round(stamps[-1] - stamps[0], 1) if len(stamps) > 1 else None


def existing_run(log: Path, args) -> int:
    """The facts of a run already made in this checkout (its log, benchmark files and training
    log), for a snapshot when a fresh clone's run does not fit the time at hand. What was not
    measured (memory of the whole run) is recorded as null, not guessed."""
    import yaml

    config = yaml.safe_load((REPO / args.configfile).read_text()) if args.configfile else {}
    outdir = (config.get("outdir") or "results").rstrip("/")
    if config.get("seeds"):  # a multi-seed study: one run per seed, under {outdir}/seed-N
        seed = config["seeds"][0] if args.seed is None else args.seed
        if seed not in config["seeds"]:
            sys.exit(f"--seed {seed}: not one of the config's seeds {config['seeds']}")
        outdir = f"{outdir}/seed-{seed}"
    text = log.read_text()
    train = training_log(sorted(REPO.glob(f"{outdir}/lm/models/*/model/train_log.json")))
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=True).stdout.strip()
    figures = {
        "commit": commit, "config": args.configfile, "fresh_clone": False, "outdir": outdir,
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, "
                   f"torch {importlib.metadata.version('torch')}",
        "cpu": cpu_description(), "cores": args.cores,
        "wall_seconds": log_wall_seconds(text), "jobs": text.count("Finished job"),
        "lm_training_seconds": train.get("seconds"), "lm_training_steps": train.get("steps"),
        "lm_final_loss": train.get("final_loss"), "lm_muon_ns_dtype": train.get("muon_ns_dtype"),
        "environment": recorded_env(os.environ), "peak_memory_above_idle_mb": None, "largest_process_mb": None,
        "rules": per_rule(job_records(log, REPO)),
    }
    print(json.dumps(figures))
    print_rules(figures["rules"])
    if args.snapshot:
        snapshot(REPO, Path(args.snapshot), figures, outdir)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", default="all", help="snakemake --cores (default: all)")
    ap.add_argument("--interval", type=float, default=2.0, help="memory sampling period, s")
    ap.add_argument("--keep", default=None, help="run in this new directory and keep it")
    ap.add_argument("--configfile", default=None,
                    help="a config of the clone, e.g. workflow/config/adamw.yaml (default: none, "
                    "the embedded default)")
    ap.add_argument("--snapshot", default=None,
                    help="copy the run's summaries, README tables and run facts into this directory")
    ap.add_argument("--isa", choices=["native", "avx2"], default="native",
                    help="avx2: run this CPU as an AVX2-only one (no AVX-512, no native bf16): "
                    "ATen, oneDNN and MKL capped at AVX2 (default: native)")
    ap.add_argument("--existing", default=None, metavar="LOG",
                    help="no new run: take the facts of the finished run in this checkout whose "
                    "snakemake output is LOG (with --configfile; --snapshot as usual)")
    ap.add_argument("--seed", type=int, default=None,
                    help="with --existing and a multi-seed config: which seed's run (its "
                    "snakemake was given --config seed=N; default the first)")
    args = ap.parse_args()
    if args.existing:
        return existing_run(Path(args.existing), args)

    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=True).stdout.strip()
    if args.keep and Path(args.keep).exists():
        sys.exit(f"--keep {args.keep}: already exists; give a new directory")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="curvmem-bench-")) / "run"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(work)], check=True)
    idle = used_memory_mb()
    peaks = {"used_mb": idle, "max_rss_mb": 0.0}
    log = work / "bench_snakemake.log"
    t0 = time.perf_counter()
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(work.parent / f"{work.name}-inductor"),
           **(AVX2_ONLY if args.isa == "avx2" else {})}
    config = ["--configfile", args.configfile] if args.configfile else []
    with log.open("w") as fh:
        proc = subprocess.Popen(["snakemake", "--cores", str(args.cores), *config], cwd=work,
                                stdout=fh, stderr=subprocess.STDOUT, env=env)
        sampler = threading.Thread(target=sample, args=(proc, args.interval, peaks), daemon=True)
        sampler.start()
        rc = proc.wait()
        sampler.join()
    wall = time.perf_counter() - t0
    text = log.read_text()
    if rc != 0:
        print(text[-4000:], file=sys.stderr)
        sys.exit(f"snakemake failed ({rc}); the run is in {work}")

    train = training_log(sorted(work.glob("results/**/lm/models/*/model/train_log.json")))
    figures = {
        "commit": commit,
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, "
                   f"torch {importlib.metadata.version('torch')}",
        "cpu": cpu_description(),
        "cores": args.cores,
        "wall_seconds": round(wall, 1),
        "jobs": text.count("Finished job"),
        "lm_training_seconds": train.get("seconds"),
        "lm_training_steps": train.get("steps"),
        "lm_final_loss": train.get("final_loss"),
        "peak_memory_above_idle_mb": round(peaks["used_mb"] - idle),
        "largest_process_mb": round(peaks["max_rss_mb"]),
        "lm_muon_ns_dtype": train.get("muon_ns_dtype"),
        "environment": recorded_env(env),
        "rules": per_rule(job_records(log, work)),
    }
    print(f"embedded default DAG, commit {commit}, --cores {args.cores} ({figures['machine']})")
    minutes, seconds = divmod(round(wall), 60)
    print(f"  wall time              {minutes} min {seconds} s ({figures['jobs']} jobs)")
    print(f"  LM training            {figures['lm_training_seconds']} s, "
          f"{figures['lm_training_steps']} steps, final loss {figures['lm_final_loss']}")
    print(f"  peak memory above idle {figures['peak_memory_above_idle_mb']} MB")
    print(f"  largest process        {figures['largest_process_mb']} MB")
    print(f"  CPU                    {figures['cpu']}; Muon iterations in "
          f"{figures['lm_muon_ns_dtype']}")
    print("  where the time goes (sums over jobs; start-up = interpreter, imports, model load):")
    print_rules(figures["rules"])
    print(json.dumps(figures))
    if figures["environment"]:
        print(f"  environment: {figures['environment']}")
    if args.snapshot:
        snapshot(work, Path(args.snapshot), figures)
    if not args.keep:
        shutil.rmtree(work.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
