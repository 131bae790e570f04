"""The `curvmem` command line. Each command group lives in its own file and registers itself.

    core       collect, merge, eigen, edit                      (curvature core)
    lm         world, tokenizer, train-lm, evaluate {memorization,perplexity,tasks,coherence},
               report-lm                                        (embedded default, LM evaluations)
    vision     vision-data, train-vit, evaluate vit, report-vit (ViT on noisy digits)
    baselines  baseline {bsn}, compare                          (BalancedSubnet, SVD, controls)
    mine       mine                                             (memorized windows of a corpus)
    export     export                                           (base + edit -> HF checkpoint)
    hub        download, tokenize, fetch                        (public sources, once, for offline jobs)
    harness    harness, harness-tasks                           (lm-evaluation-harness, [eval] extra)
    analyze    analyze {activation-ratio,task-interaction,spectra,per-example,stability,stress}
                                                                (mechanism analyses)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from curvmem import __version__
from curvmem.cli import analyze, baselines, core, export, harness, hub, lm, mine, vision
from curvmem.io import begin_command, startup_split


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="curvmem",
        description="Find and remove memorization in transformers through K-FAC loss curvature. "
        "Typical path: collect -> eigen -> edit -> evaluate. Run `curvmem COMMAND --help`.",
    )
    parser.add_argument("--version", action="version", version=f"curvmem {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    evaluate = sub.add_parser("evaluate", help="evaluate a model, optionally with an edit applied",
                              description="Evaluations write one JSON file each.")
    evaluate_sub = evaluate.add_subparsers(dest="evaluation", metavar="EVALUATION", required=True)
    for group in (core, lm, vision, baselines, mine, export, hub, harness):
        group.register(sub, evaluate_sub)
    analyze.register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command_age = begin_command()
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        if os.environ.get("CURVMEM_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"curvmem {args.command}: error: {msg}", file=sys.stderr)
        return 2
    split = startup_split(command_age)
    if split is not None:  # benchmarks/bench_default.py reads this line from the job logs
        print(f"curvmem timing: {json.dumps(split)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
