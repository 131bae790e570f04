"""lm-evaluation-harness (optional extra `[eval]`): the paper scored skills with OLMES-style
benchmarks, which the harness runs on any checkpoint directory (a base model, or base + edit from
`curvmem export`). So it can be checked offline, the embedded world's task categories are also
written as local harness tasks whose metric is `curvmem evaluate tasks`' own (greedy
continuation; the answer at its start, ending at a word boundary)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from curvmem.io import atomic_dir, read_jsonl, write_json

TASK_PREFIX = "curvmem_"
# the metric, in the task directory: the harness imports it from there (`!function`)
UTILS = '''"""Written by curvmem harness-tasks: the metric of `curvmem evaluate tasks`."""
from curvmem.evaluate.lm import answer_matches


def process_results(doc, results):
    return {"acc": float(answer_matches(results[0], str(doc["answer"])))}
'''


def write_task_files(tasks_file, tokenizer, out) -> list[str]:
    """One harness task per category of a curvmem tasks JSONL ({category, prompt, answer}):
    OUT/curvmem_<category>.{yaml,jsonl} and OUT/utils.py. Greedy generation of up to one token
    more than the category's longest answer needs (curvmem generates that per item)."""
    rows = read_jsonl(tasks_file, ("category", "prompt", "answer"))
    if not rows:
        raise ValueError(f"{tasks_file}: no task rows")
    by_cat = defaultdict(list)
    for row in rows:
        by_cat[row["category"]].append(row)
    names = []
    out = Path(out)
    with atomic_dir(out) as tmp:
        (tmp / "utils.py").write_text(UTILS)
        for cat, items in sorted(by_cat.items()):
            name = f"{TASK_PREFIX}{cat}"
            n_new = 1 + max(len(tokenizer(" " + str(r["answer"]).strip(),
                                          add_special_tokens=False)["input_ids"]) for r in items)
            (tmp / f"{name}.jsonl").write_text("".join(
                json.dumps({"prompt": r["prompt"], "answer": str(r["answer"])}) + "\n"
                for r in items))
            (tmp / f"{name}.yaml").write_text(_task_yaml(name, out / f"{name}.jsonl", n_new))
            names.append(name)
    return names


def _task_yaml(name: str, data: Path, max_gen_toks: int) -> str:
    # doc_to_text names the field itself (no template: a prompt's trailing space stays)
    return f"""task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {json.dumps(str(data))}
test_split: test
output_type: generate_until
doc_to_text: prompt
doc_to_target: answer
target_delimiter: ""
generation_kwargs:
  until: []
  max_gen_toks: {max_gen_toks}
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def run_harness(model_dir, tasks: list[str], out, include_path=None, batch_size: int = 1,
                limit: int | None = None, dtype: str = "float32", device: str | None = None,
                trust_remote_code: bool = False) -> dict:
    """lm_eval.simple_evaluate of a checkpoint directory on `tasks`; OUT.json holds the
    harness's per-task results and the settings."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ValueError("lm-evaluation-harness is not installed: pip install 'curvmem[eval]'") \
            from None
    from curvmem.model import default_device

    if not tasks:
        raise ValueError("--tasks: name at least one harness task")
    if include_path is not None and not Path(include_path).is_dir():
        raise ValueError(f"--include-path {include_path}: no such directory")
    manager = None
    if include_path is not None:  # local tasks only: skip indexing the harness's thousands
        manager = TaskManager(include_path=str(include_path), include_defaults=False)
        if any(t not in manager.all_tasks for t in tasks):
            manager = None
    if manager is None:
        manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(f"--tasks: the harness knows no task {unknown}"
                         + ("" if include_path else " (local tasks need --include-path)"))
    args = {"pretrained": str(model_dir), "dtype": dtype, "device": default_device(device),
            "trust_remote_code": trust_remote_code}
    res = lm_eval.simple_evaluate(model="hf", model_args=args, tasks=list(tasks),
                                  batch_size=batch_size, limit=limit, task_manager=manager,
                                  log_samples=False)
    summary = {"model": str(model_dir), "tasks": list(tasks), "load": args,
               "batch_size": batch_size, "limit": limit,
               "results": res["results"], "n_samples": res.get("n-samples"),
               "versions": res.get("versions"), "lm_eval_version": lm_eval.__version__}
    write_json(out, summary)
    return summary
