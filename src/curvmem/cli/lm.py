"""CLI: the embedded world (world, tokenizer, train-lm), the LM evaluations, report-lm."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from curvmem.cli.common import add_model_args, check_name
from curvmem.io import cost


def _check_out_json(out) -> None:
    if Path(out).suffix != ".json":
        raise ValueError(f"--out must be a .json file, got {out}")


# --------------------------------------------------------------------------- world, tokenizer, train


def cmd_world(args) -> None:
    from curvmem import presets
    from curvmem.world import lm as world

    cfg = presets.world_config(args.preset, args.seed, args.config)
    meta = world.write_world(args.out, cfg)
    print(json.dumps({"out": args.out, **meta["counts"], "seconds": meta["seconds"]}))


def cmd_tokenizer(args) -> None:
    from curvmem.model import lm

    info = lm.train_tokenizer(args.corpus, args.out, args.vocab_size)
    print(json.dumps({"out": args.out, **info}))


def cmd_train_lm(args) -> None:
    from dataclasses import replace

    from curvmem import presets
    from curvmem.model import lm

    cfg = presets.train_config(args.preset, args.seed, args.steps, args.weight_decay)
    if args.threads is not None:
        cfg = replace(cfg, threads=args.threads)
    if args.compile is not None:
        cfg = replace(cfg, compile=args.compile)
    if args.optimizer is not None:
        cfg = replace(cfg, optimizer=args.optimizer)
    log = lm.train_lm(args.world, args.tokenizer, args.out, cfg, progress=True)
    print(json.dumps({"out": args.out, "steps": log["steps"], "final_loss": log["final_loss"],
                      "parameters": log["parameters"], "seconds": log["seconds"]}))


# --------------------------------------------------------------------------- evaluations


def _load(args, need_edit: bool = False):
    """Model + tokenizer, with the edit applied (unless the caller applies it itself)."""
    import torch

    from curvmem.model import default_device, load_model, load_tokenizer

    if args.edit is not None and not Path(args.edit).is_file():
        raise ValueError(f"--edit {args.edit}: no such file")
    torch.set_num_threads(args.threads)
    model = load_model(args.model, dtype=getattr(torch, args.dtype),
                       trust_remote_code=args.trust_remote_code, device=default_device(args.device))
    tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    meta = None
    if args.edit is not None and not need_edit:
        from curvmem.edit import apply

        meta = apply(model, args.edit)
    return model, tokenizer, meta


def _edit_summary(meta) -> dict | None:
    if meta is None:
        return None
    return {k: meta.get(k) for k in ("method", "spec")}


def _write(args, result: dict, meta, c: dict) -> None:
    """The evaluation's result file, then its cost file: this evaluation's seconds and peak RSS
    and, under "edit", the cost of the edit it evaluates (from the edit's own cost file)."""
    from curvmem.io import read_cost, write_cost, write_json
    from curvmem.model import default_device

    result = {"model": args.model, "data": args.data, "edit_file": args.edit,
              "edit": _edit_summary(meta), **result,
              "load": {"dtype": args.dtype, "device": default_device(args.device)}}
    write_json(args.out, result)
    write_cost(args.out, {**c, "edit": read_cost(args.edit) if args.edit else None})
    brief = {k: v for k, v in result.items() if k not in ("examples", "items", "edit", "edit_meta")}
    print(json.dumps({**brief, "seconds": c["seconds"]}, default=str)[:2000])


# Each evaluation kind: read (and check) its data before any model is loaded, then compute.


def _read_memorization(args):
    from curvmem.cli.common import check_ids
    from curvmem.evaluate import lm as evaluate

    return check_ids(evaluate.read_rows(args.data), args.data)


def _memorization(model, tokenizer, rows, args) -> dict:
    from curvmem.evaluate import lm as evaluate

    return evaluate.evaluate_memorization(model, tokenizer, rows, args.prefix_len,
                                          args.suffix_len, args.batch_size, progress=True,
                                          where=args.data)


def _read_texts(args):
    from curvmem.evaluate import lm as evaluate

    return evaluate.read_texts(args.data)


def _perplexity(model, tokenizer, texts, args) -> dict:
    from curvmem.evaluate import lm as evaluate

    return evaluate.evaluate_perplexity(model, tokenizer, texts, args.block_len, args.batch_size,
                                        args.max_tokens, progress=True, where=args.data)


def _read_tasks(args):
    from curvmem.evaluate import lm as evaluate
    from curvmem.presets import TASK_CATEGORIES

    rows = evaluate.read_rows(args.data, ("category", "prompt", "answer"))
    unknown = sorted({str(r["category"]) for r in rows} - set(TASK_CATEGORIES))
    if unknown:
        raise ValueError(f"{args.data}: unknown task categories {unknown} (known: "
                         f"{list(TASK_CATEGORIES)}); they would count in the overall accuracy "
                         "but in no category the reports show")
    return rows


def _tasks(model, tokenizer, rows, args) -> dict:
    from curvmem.evaluate import lm as evaluate

    return evaluate.evaluate_tasks(model, tokenizer, rows, args.batch_size, progress=True)


def _coherence(model, tokenizer, texts, args, apply_edit) -> dict:
    """Top-10 tokens before and after `apply_edit(model)`; the result carries "edit_meta"."""
    from curvmem.evaluate import lm as evaluate

    return evaluate.evaluate_coherence(model, tokenizer, texts, apply_edit, k=10,
                                       block_len=args.block_len, batch_size=args.batch_size,
                                       max_tokens=args.max_tokens, where=args.data)


KINDS = {"memorization": (_read_memorization, _memorization),
         "perplexity": (_read_texts, _perplexity),
         "tasks": (_read_tasks, _tasks),
         "coherence": (_read_texts, _coherence)}


def cmd_evaluate(args) -> None:
    """One evaluation (`curvmem evaluate memorization|perplexity|tasks|coherence`)."""
    from curvmem.edit import apply

    read, compute = KINDS[args.evaluation]
    _check_out_json(args.out)
    data = read(args)
    with cost() as c:
        if args.evaluation == "coherence":
            model, tokenizer, _ = _load(args, need_edit=True)
            result = compute(model, tokenizer, data, args, lambda m: apply(m, args.edit))
            meta = result.pop("edit_meta")
        else:
            model, tokenizer, meta = _load(args)
            result = compute(model, tokenizer, data, args)
    _write(args, result, meta, c)


def _run_args(args, kind: str, data: str, out: str):
    """The namespace `curvmem evaluate KIND` would have for one --run of `evaluate batch`."""
    shared = {k: v for k, v in vars(args).items() if k not in ("run", "func")}
    options = {name: default for name, (default, _) in KIND_OPTIONS.get(kind, {}).items()}
    return argparse.Namespace(**{**options, **shared, "evaluation": kind, "data": data,
                                 "out": out})


def cmd_evaluate_batch(args) -> None:
    """Several evaluations of one model (and edit) in one process: the model loads once.

    Each --run writes the file `curvmem evaluate KIND` would write, with the same numbers: the
    same functions run on the same weights. Coherence needs the unedited model, so coherence
    runs go first and the base weights are put back after each; the other kinds then run on
    the edited model. A file's cost file (`<file>.cost.json`) has its own compute;
    `shared_load_seconds` there is the model load they share.
    """
    from curvmem.edit import apply, restored_after

    runs = [_run_args(args, kind, data, out) for kind, data, out in args.run]
    outs = [r.out for r in runs]
    if len(set(outs)) != len(outs):
        raise ValueError(f"--run: two runs write the same file ({outs})")
    for r in runs:
        if r.evaluation not in KINDS:
            raise ValueError(f"--run {r.evaluation}: unknown evaluation kind; choose one of "
                             f"{sorted(KINDS)}")
        if r.evaluation == "coherence" and args.edit is None:
            raise ValueError("--run coherence compares an edit with the base model: give --edit")
        _check_out_json(r.out)
    data = [KINDS[r.evaluation][0](r) for r in runs]  # every input checked before the model loads
    with cost() as load:
        model, tokenizer, _ = _load(args, need_edit=True)
    meta, edited = None, False
    # coherence runs first, on the base weights; then the edit stays applied for the rest
    for i in sorted(range(len(runs)), key=lambda i: runs[i].evaluation != "coherence"):
        r = runs[i]
        with cost() as c:
            if r.evaluation == "coherence":
                with restored_after(model, args.edit):  # back to the base weights after it
                    result = _coherence(model, tokenizer, data[i], r,
                                        lambda m: apply(m, args.edit))
                meta = result.pop("edit_meta")
            else:
                if args.edit is not None and not edited:
                    meta, edited = apply(model, args.edit), True
                result = KINDS[r.evaluation][1](model, tokenizer, data[i], r)
        _write(r, result, meta, {**c, "shared_load_seconds": load["seconds"]})


# --------------------------------------------------------------------------- report


def cmd_report_lm(args) -> None:
    from curvmem.io import atomic_output, write_cost, write_json
    from curvmem.report import lm as report
    from curvmem.report.costs import cost_table_path

    for entry in args.entry:  # names are labels results are filed under, never paths
        check_name(entry.partition("=")[0], "--entry")
    entries = report.parse_entries(args.entry)
    if args.figure and Path(args.figure).suffix != ".png":
        raise ValueError(f"--figure must be a .png file, got {args.figure}")
    columns = report.parse_labels(args.label, args.paper_dolma)
    summary = report.build_summary(entries, max_ppl_rise=args.max_ppl_rise,
                                   task_weight=args.task_weight, columns=columns)
    text = report.report_text(summary, max_ppl_rise=args.max_ppl_rise)
    costs = report.build_costs(entries)

    write_json(args.out, summary)
    write_cost(args.out, costs)  # measured: beside the summary, never in it
    if args.table:
        with atomic_output(args.table) as tmp:
            tmp.write_text(text)
        with atomic_output(cost_table_path(args.table)) as tmp:
            tmp.write_text(report.cost_text(summary, costs["models"]))
    if args.figure or args.sweep_figure:
        from curvmem.report import figures as plots

        if args.figure:
            plots.retention_figure(summary, args.figure)
        if args.sweep_figure:
            plots.sweep_figure(summary, args.sweep_figure, max_ppl_rise=args.max_ppl_rise)
    sys.stdout.write(text)


def cmd_report_readme(args) -> None:
    from curvmem.io import atomic_output, read_json
    from curvmem.plan import ANALYSES
    from curvmem.report.readme import readme_tables

    if not (args.lm_summary or args.vit_summary):
        raise ValueError("report-readme needs --lm-summary and/or --vit-summary")
    analyses = {}
    if args.analysis:
        if not Path(args.analysis).is_dir():
            raise ValueError(f"--analysis {args.analysis}: not a directory")
        analyses = {n: read_json(Path(args.analysis) / f"{n}.json") for n in ANALYSES
                    if (Path(args.analysis) / f"{n}.json").is_file()}
    text = readme_tables(read_json(args.lm_summary) if args.lm_summary else None,
                         read_json(args.vit_summary) if args.vit_summary else None, analyses)
    with atomic_output(args.out) as tmp:
        tmp.write_text(text)
    sys.stdout.write(text)


def _labelled_runs(items, flag: str, expected: str, parse, load) -> dict:
    """{label: load(DIR)} from LABEL=DIR arguments; `parse` gives the label or None if invalid."""
    runs = {}
    for item in items:
        text, sep, outdir = item.partition("=")
        label = parse(text) if sep else None
        if label is None:
            raise ValueError(f"{flag} {item!r}: expected {expected}")
        if label in runs:
            raise ValueError(f"{flag}: {text} given twice")
        runs[label] = load(outdir)
    return runs


def cmd_report_seeds(args) -> None:
    from curvmem.io import atomic_output, write_cost, write_json
    from curvmem.report.costs import cost_table_path
    from curvmem.report.seeds import (
        aggregate,
        aggregate_costs,
        cost_tables,
        fronts_figure,
        load_run,
        tables,
    )

    runs = _labelled_runs(args.seed_dir, "--seed-dir", "SEED=DIR, e.g. 1=results/paper/seed-1",
                          lambda s: int(s) if s.isdecimal() else None, load_run)
    agg, costs = aggregate(runs), aggregate_costs(runs)
    text = tables(agg)
    with atomic_output(args.tables) as tmp:
        tmp.write_text(text)
    with atomic_output(cost_table_path(args.tables)) as tmp:  # measured: beside the tables
        tmp.write_text(cost_tables(costs))
    write_json(args.out, agg)
    write_cost(args.out, costs)
    if args.figure:
        fronts_figure(runs, args.figure)
    sys.stdout.write(text)


def cmd_report_weight_decay(args) -> None:
    from curvmem.io import atomic_output, write_json
    from curvmem.report.seeds import load_run
    from curvmem.report.weight_decay import compare, load_decay_dir, table

    def decay(text):
        try:
            value = float(text)
        except ValueError:
            return None
        return value if value >= 0 else None

    runs = _labelled_runs(args.decay_dir, "--decay-dir",
                          "WEIGHT_DECAY=DIR, e.g. 0.1=results/lm-weight-decay/wd0.1", decay,
                          lambda d: load_decay_dir(d, load_run))
    result = compare(runs)
    text = table(result)
    with atomic_output(args.table) as tmp:
        tmp.write_text(text)
    write_json(args.out, result)
    sys.stdout.write(text)


# --------------------------------------------------------------------------- registration


# The options of each evaluation kind: name -> (default, help). `evaluate batch` runs each
# kind with these defaults.
KIND_OPTIONS = {
    "memorization": {"prefix_len": (64, None), "suffix_len": (48, None), "batch_size": (32, None)},
    "perplexity": {"block_len": (112, None), "batch_size": (8, None),
                   "max_tokens": (None, "cap on evaluated tokens")},
    "tasks": {"batch_size": (32, None)},
    "coherence": {"block_len": (112, None), "batch_size": (8, None),
                  "max_tokens": (8192, "cap on evaluated positions")},
}


def _eval_common(p, edit_required: bool = False, batch: bool = False) -> None:
    add_model_args(p)
    p.add_argument("--edit", required=edit_required,
                   help="edit file (.safetensors) to apply before evaluating")
    if not batch:
        p.add_argument("--data", required=True, help="JSONL file")
        p.add_argument("--out", required=True, help="result JSON file")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="dtype to load the model in (default float32; bfloat16 halves a 7B's "
                        "memory; the loss is always computed in float32)")


def register(sub, evaluate_sub) -> None:
    p = sub.add_parser("world", help="generate the embedded synthetic world (JSONL files)",
                       description="Write train/heldout/retain/tasks/canary JSONL files and "
                       "world.json to DIR (layout: docs/lm.md).")
    p.add_argument("--out", required=True,
                   help="output directory to create (an existing one must be empty)")
    p.add_argument("--preset", default="default", help="default | adamw | smoke")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--config", default=None,
                   help="JSON object overriding world sizes, e.g. '{\"canary_repeats\": 32}'")
    p.set_defaults(func=cmd_world)

    p = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer on a JSONL corpus")
    p.add_argument("--corpus", required=True, help="JSONL with a 'text' field (train.jsonl)")
    p.add_argument("--out", required=True,
                   help="output directory to create (AutoTokenizer loads it; an existing one "
                   "must be empty)")
    p.add_argument("--vocab-size", type=int, default=1024)
    p.set_defaults(func=cmd_tokenizer)

    p = sub.add_parser("train-lm", help="train the tiny OLMo-2 on the world (CPU)")
    p.add_argument("--world", required=True, help="world directory (reads train.jsonl)")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory")
    p.add_argument("--out", required=True,
                   help="model directory to create (model + tokenizer; an existing one must "
                   "be empty)")
    p.add_argument("--preset", default="default", help="default | adamw | smoke")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the initial weights and batch order (default: the preset's, 0)")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps (default: the preset's passes over train.jsonl; "
                   "default preset: 4)")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="decoupled weight decay of the blocks' weight matrices (Muon), or of "
                   "every matrix (AdamW); embeddings, LM head and norms are not decayed under "
                   "Muon (default: the preset's, 0)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: the preset's, 2; the thread count changes "
                   "the float summation order, hence the trained weights)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the training step (default: the preset's; needs a C++ "
                   "compiler; compiled and eager training give slightly different weights)")
    p.add_argument("--optimizer", choices=["adamw", "muon"], default=None,
                   help="adamw, or muon (Muon for the blocks' matrices, AdamW for the rest) "
                   "(default: the preset's)")
    p.set_defaults(func=cmd_train_lm)

    helps = {"memorization": ("strict/loose recitation of memorized text", "Greedy |S| tokens "
                              "after each prefix; token-level Levenshtein distance to the true "
                              "suffix."),
             "perplexity": ("held-out perplexity in fixed-length blocks", None),
             "tasks": ("accuracy per task category (greedy exact match)", None),
             "coherence": ("nDCG@10 of edited vs unedited top-10 tokens", None)}
    for kind, (help_, description) in helps.items():
        p = evaluate_sub.add_parser(kind, help=help_, description=description)
        _eval_common(p, edit_required=kind == "coherence")
        for name, (default, option_help) in KIND_OPTIONS[kind].items():
            p.add_argument("--" + name.replace("_", "-"), type=int, default=default,
                           help=option_help)
        p.set_defaults(func=cmd_evaluate)

    p = evaluate_sub.add_parser(
        "batch", help="several evaluations of one model (and edit), loading it once",
        description="Each --run KIND DATA OUT writes the file `curvmem evaluate KIND --data DATA "
        "--out OUT` would, with the same numbers, and the model loads once for all of them (the "
        "workflow runs one such job per model or edit). Each kind's options take their "
        "defaults.")
    _eval_common(p, batch=True)
    p.add_argument("--run", nargs=3, action="append", required=True,
                   metavar=("KIND", "DATA", "OUT"),
                   help=f"one evaluation: KIND ({', '.join(KIND_OPTIONS)}), its data file and its "
                   "result JSON; repeat for each")
    p.set_defaults(func=cmd_evaluate_batch)

    p = sub.add_parser("report-readme", help="the README's results tables from a run's summaries",
                       description="Markdown of the rows the README shows, chosen by rule (base, "
                       "the selected edit, each layer set's pick, every control, SVD and BSN "
                       "edit), the paper's rows beside them, the counts the README cites, and "
                       "the analyses' headline numbers.")
    p.add_argument("--lm-summary", default=None, help="lm_summary.json (report-lm)")
    p.add_argument("--vit-summary", default=None, help="vit_summary.json (report-vit)")
    p.add_argument("--analysis", default=None, help="directory of analysis JSONs (optional)")
    p.add_argument("--out", required=True, help="Markdown file")
    p.set_defaults(func=cmd_report_readme)

    p = sub.add_parser("report-seeds", help="a multi-seed study: means, 95 %% intervals, k-of-n",
                       description="Each --seed-dir SEED=DIR names one seed's run directory (its "
                       "outdir: lm_summary.json, vit_summary.json, analysis/, benchmarks/). "
                       "Writes every number the README shows as mean ± 95 % t-interval across "
                       "the seeds, and the paper's claims as 'holds in k of n seeds' "
                       "(curvmem.report.seeds).")
    p.add_argument("--seed-dir", action="append", required=True, metavar="SEED=DIR",
                   help="one seed's run directory; repeat for each seed")
    p.add_argument("--out", required=True, help="the seeds summary (JSON)")
    p.add_argument("--tables", required=True, help="the README's results tables (Markdown)")
    p.add_argument("--figure", default=None, help="each seed's Pareto fronts (PNG)")
    p.set_defaults(func=cmd_report_seeds)

    p = sub.add_parser("report-weight-decay", help="the LM at several weight decays (App. H.1)",
                       description="Each --decay-dir WEIGHT_DECAY=DIR names the outdir of the same "
                       "config trained at that lm.model.weight_decay: its seed-N/ runs, or one "
                       "run (seed 0); one must be 0. Writes each run's base model, controls, "
                       "activation ratio and selected edits, and H.1's three predictions per "
                       "decayed run against the undecayed run of its seed "
                       "(curvmem.report.weight_decay).")
    p.add_argument("--decay-dir", action="append", required=True, metavar="WEIGHT_DECAY=DIR",
                   help="one weight decay's outdir; repeat for each weight decay")
    p.add_argument("--out", required=True, help="the comparison (JSON)")
    p.add_argument("--table", required=True, help="the comparison table (Markdown)")
    p.set_defaults(func=cmd_report_weight_decay)

    p = sub.add_parser("report-lm", help="Table-1/Figure-3 style summary of LM evaluations",
                       description="Each --entry NAME=DIR names a directory of evaluation JSONs "
                       "(memorization_{forget,untargeted,control}.json, perplexity.json, "
                       "tasks.json, coherence.json). One entry must be 'base'.")
    p.add_argument("--entry", action="append", required=True, metavar="NAME=DIR")
    p.add_argument("--out", required=True, help="summary JSON (e.g. results/lm_summary.json); "
                   "the edits' measured costs go to OUT.cost.json beside it")
    p.add_argument("--table", default=None, help="also write the tables as Markdown (and the "
                   "edits' costs beside it: lm_table.md -> lm_costs.md)")
    p.add_argument("--figure", default=None, help="retention figure (.png)")
    p.add_argument("--sweep-figure", default=None, help="sweep figure (.png)")
    p.add_argument("--max-ppl-rise", type=float, default=0.10,
                   help="selection: edits whose selection perplexity rises at most this fraction")
    p.add_argument("--task-weight", type=float, default=0.5,
                   help="selection: weight of (1 - mean validation-task retention) beside forget "
                   "strict")
    p.add_argument("--label", action="append", default=None, metavar="SPLIT=TEXT",
                   help="column title of a memorization set (forget, forget_validation, "
                   "untargeted, control, ...)")
    p.add_argument("--paper-dolma", default="forget_validation",
                   help="our set the paper's Table 1 Dolma numbers (its validation half) go "
                   "beside (default forget_validation)")
    p.set_defaults(func=cmd_report_lm)
