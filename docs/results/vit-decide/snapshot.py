"""Copy the vit-decide run's report into this folder and write run.json (commit, machine,
versions, per-rule jobs and times from the DAG's benchmark files). Run from the repository root
after `snakemake --cores 2 --configfile workflow/config/vit-decide.yaml`:

    python docs/results/vit-decide/snapshot.py --commit HASH --machine "TEXT"
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from importlib.metadata import version
from pathlib import Path

RUN = Path("results/vit-decide")
HERE = Path(__file__).resolve().parent
FILES = ("vit_decide.json", "vit_decide.md", "vit_decide.png")


def rule_times() -> dict:
    """{rule: {jobs, wall_s, cpu_s}} summed over the benchmark TSVs of each rule."""
    out: dict[str, dict] = {}
    for tsv in sorted((RUN / "benchmarks/vit_study").rglob("*.tsv")):
        rel = tsv.relative_to(RUN / "benchmarks/vit_study")
        rule = rel.parts[0] if len(rel.parts) > 1 else rel.stem.split("-")[0]
        with tsv.open() as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        slot = out.setdefault(rule, {"jobs": 0, "wall_s": 0.0, "cpu_s": 0.0})
        slot["jobs"] += 1
        slot["wall_s"] = round(slot["wall_s"] + float(row["s"]), 1)
        slot["cpu_s"] = round(slot["cpu_s"] + float(row["cpu_time"]), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--commit", required=True)
    ap.add_argument("--machine", required=True)
    args = ap.parse_args()
    for name in FILES:
        shutil.copyfile(RUN / name, HERE / name)
    times = rule_times()
    run = {"commit": args.commit, "config": "workflow/config/vit-decide.yaml",
           "machine": args.machine,
           "versions": {p: version(p) for p in ("torch", "timm", "numpy", "scikit-learn",
                                                 "snakemake")},
           "rules": times,
           "cpu_s_total": round(sum(r["cpu_s"] for r in times.values()), 1)}
    (HERE / "run.json").write_text(json.dumps(run, indent=1) + "\n")


if __name__ == "__main__":
    main()
