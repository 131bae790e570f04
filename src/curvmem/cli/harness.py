"""CLI: harness (lm-evaluation-harness on a checkpoint directory), harness-tasks (the embedded
world's task categories as local harness tasks)."""

from __future__ import annotations

import argparse
import json

from curvmem.cli.common import add_model_args


def run_harness_tasks(args) -> None:
    from curvmem.evaluate.harness import write_task_files
    from curvmem.model.load import load_tokenizer

    names = write_task_files(args.data, load_tokenizer(args.tokenizer), args.out)
    print(json.dumps({"out": args.out, "tasks": names}))


def run_harness(args) -> None:
    from curvmem.evaluate.harness import run_harness

    summary = run_harness(args.model, args.tasks.split(","), args.out,
                          include_path=args.include_path, batch_size=args.batch_size,
                          limit=args.limit, dtype=args.dtype, device=args.device,
                          trust_remote_code=args.trust_remote_code)
    print(json.dumps(summary["results"]))


def register(sub, evaluate_sub) -> None:
    p = sub.add_parser(
        "harness", help="run lm-evaluation-harness tasks on a checkpoint directory ([eval] extra)",
        description="lm_eval.simple_evaluate(model='hf') of --model (a base model or a `curvmem "
        "export` directory) on --tasks; writes the harness's per-task results as JSON.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_args(p)
    p.add_argument("--tasks", required=True, help="comma-separated harness task names")
    p.add_argument("--include-path", default=None,
                   help="directory of local task files (e.g. from `curvmem harness-tasks`)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--limit", type=int, default=None, help="at most this many items per task")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--device", default=None, help="default: cuda if present")
    p.add_argument("--out", required=True, help="FILE.json")
    p.set_defaults(func=run_harness)

    p = sub.add_parser(
        "harness-tasks", help="write a curvmem tasks JSONL as local lm-evaluation-harness tasks",
        description="One task per category (curvmem_<category>), scored with `curvmem evaluate "
        "tasks`' own metric; run them with `curvmem harness --include-path OUT`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="tasks JSONL {category, prompt, answer}")
    p.add_argument("--tokenizer", required=True, help="the model's tokenizer (directory)")
    p.add_argument("--out", required=True,
                   help="directory to create (an existing one must be empty)")
    p.set_defaults(func=run_harness_tasks)
