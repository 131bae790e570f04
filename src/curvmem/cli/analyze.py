"""CLI: `curvmem analyze {activation-ratio,task-interaction,spectra,per-example,stability,stress}`.

Each writes one JSON (with the exact definition it computed) and, with --figure, a PNG. Inputs are
checked before anything is computed or written.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# Existing curvmem names used here (the lead rewrites these imports after the layout refactor):
from curvmem.cli.common import add_model_args
from curvmem.io import cost


def _files(**paths) -> None:
    for flag, path in paths.items():
        if path is not None and not Path(path).exists():
            raise ValueError(f"--{flag.replace('_', '-')} {path}: no such file or directory")


def _named(entries, flag: str) -> dict:
    """['NAME=PATH', ...] -> {name: path}, names unique, paths present."""
    out = {}
    for entry in entries or []:
        name, sep, path = entry.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{flag} '{entry}' must look like NAME=PATH")
        if name in out or name == "base" and flag == "--edit":
            raise ValueError(f"{flag} name '{name}' is given twice or reserved")
        if not Path(path).exists():
            raise ValueError(f"{flag} {name}: {path} does not exist")
        out[name] = path
    return out


def _modules(text) -> list[str]:
    mods = [m.strip() for m in str(text).split(",") if m.strip()]
    if not mods:
        raise ValueError("--modules is empty")
    return mods


def _layers(text) -> list[int]:
    from curvmem.model import parse_int_list

    try:
        layers = parse_int_list(text)
    except ValueError:
        raise ValueError(f"--layers must be like 1,2 or 1-3, got '{text}'") from None
    if not layers:
        raise ValueError("--layers is empty")
    return layers


def _check_counts(args, *names) -> None:
    for name in names:
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")


def _load_model(args):
    import torch

    from curvmem.model import default_device, load_model, load_tokenizer

    torch.set_num_threads(args.threads)
    model = load_model(args.model, trust_remote_code=args.trust_remote_code,
                       device=default_device(args.device))
    return model, load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)


def _finish(args, result: dict, figure_fn, c: dict) -> None:
    from curvmem.io import write_json

    result["cost"] = c
    result["inputs"] = {k: v for k, v in vars(args).items()
                        if k not in ("func", "command", "analysis") and not callable(v)}
    write_json(args.out, result)
    if args.figure:
        figure_fn(result, args.figure)
    print(json.dumps({"analysis": result["analysis"], "out": args.out, "figure": args.figure,
                      "seconds": c["seconds"]}))


def _prepare(args, need_model: bool = True) -> None:
    """Every check that needs no computation, before anything runs."""
    from curvmem.analysis.common import check_outputs

    check_outputs(args.out, args.figure)
    args.layer_list, args.module_list = _layers(args.layers), _modules(args.modules)
    if need_model:
        _files(model=args.model)
    for flag in ("eigen", "memorized", "clean", "tasks", "summary"):
        if hasattr(args, flag):
            _files(**{flag: getattr(args, flag)})


def _bands(args):
    from curvmem.analysis.common import parse_bands

    return parse_bands(args.bands)


# --------------------------------------------------------------------------- commands


def cmd_activation_ratio(args) -> None:
    from curvmem.analysis import activation_ratio as ar
    from curvmem.analysis.common import load_eigen
    from curvmem.evaluate.lm import read_rows, read_texts

    _prepare(args)
    _check_counts(args, "max_items", "max_clean_blocks", "batch_size")
    bands, rows, texts = _bands(args), read_rows(args.memorized), read_texts(args.clean)
    with cost() as c:
        model, tok = _load_model(args)
        eigen = load_eigen(args.eigen, model, args.layer_list, args.module_list)
        result = ar.activation_ratio(model, tok, eigen, args.layer_list, args.module_list, rows,
                                     texts, bands, args.prefix_len, args.suffix_len,
                                     args.max_items, args.max_clean_blocks, args.batch_size)
    _finish(args, result, ar.activation_ratio_figure, c)


def cmd_task_interaction(args) -> None:
    from curvmem.analysis import task_interaction as ti
    from curvmem.analysis.common import load_eigen
    from curvmem.evaluate.lm import read_rows, read_texts
    from curvmem.io import read_json
    from curvmem.report.lm import retention

    _prepare(args)
    _check_counts(args, "max_per_category", "max_clean_blocks", "batch_size", "block_len")
    bands = _bands(args)
    rows = read_rows(args.tasks, ("category", "prompt", "answer"))
    texts = read_texts(args.clean)
    summary = read_json(args.summary)
    mem = read_rows(args.memorized) if args.memorized else None
    selected = args.selected or summary.get("selected")
    if selected not in summary.get("models", {}):
        raise ValueError(f"--summary has no edit '{selected}'; pass --selected NAME "
                         f"(one of {sorted(summary.get('models', {}))})")
    kept = retention(summary, selected)  # edited / base per category (the report's rule)
    with cost() as c:
        model, tok = _load_model(args)
        eigen = load_eigen(args.eigen, model, args.layer_list, args.module_list)
        result = ti.task_interaction(model, tok, eigen, args.layer_list, args.module_list, rows,
                                     texts, kept, selected, mem, bands, args.max_per_category,
                                     args.max_clean_blocks, args.block_len, args.prefix_len,
                                     args.suffix_len, args.batch_size)
    _finish(args, result, ti.task_interaction_figure, c)


def cmd_spectra(args) -> None:
    from curvmem.analysis import spectra as sp
    from curvmem.edit import check_rho

    _prepare(args, need_model=False)
    rhos = [check_rho(r) for r in str(args.rhos).split(",") if r.strip()] if args.rhos else []
    with cost() as c:
        result = sp.spectra(args.eigen, args.layer_list, args.module_list, rhos)
    _finish(args, result, sp.spectra_figure, c)


def cmd_per_example(args) -> None:
    from curvmem.analysis import per_example as pe
    from curvmem.analysis.common import load_eigen
    from curvmem.evaluate.lm import read_rows, read_texts

    _prepare(args)
    _check_counts(args, "max_items", "batch_size")
    bands, rows, texts = _bands(args), read_rows(args.memorized), read_texts(args.clean)
    with cost() as c:
        model, tok = _load_model(args)
        eigen = load_eigen(args.eigen, model, args.layer_list, args.module_list)
        result = pe.per_example_curvature(model, tok, eigen, args.layer_list, args.module_list,
                                          rows, texts, bands, args.prefix_len, args.suffix_len,
                                          args.max_items, args.batch_size)
    _finish(args, result, pe.per_example_figure, c)


def cmd_stability(args) -> None:
    from curvmem.analysis import stability as st
    from curvmem.edit import check_rho

    _prepare(args, need_model=False)
    sets = _named(args.set, "--set")
    check_rho(args.rho)
    with cost() as c:
        result = st.stability(sets, args.layer_list, args.module_list, args.rho, args.top_k)
    _finish(args, result, st.stability_figure, c)


def _selected_only(edits: dict, summary_path) -> dict:
    """Drop the K-FAC edits (sidecar method 'kfac') other than the summary's selected one."""
    from curvmem.io import read_json
    from curvmem.schema import edit_sidecar

    _files(summary=summary_path)
    selected = read_json(summary_path).get("selected")
    out = {}
    for name, path in edits.items():
        side = edit_sidecar(path)
        method = read_json(side).get("method") if side.is_file() else None
        if method != "kfac" or name == selected:
            out[name] = path
    return out


def cmd_stress(args) -> None:
    from curvmem.analysis import stress as ss
    from curvmem.analysis.common import check_outputs
    from curvmem.evaluate.lm import read_rows

    check_outputs(args.out, args.figure)
    _files(model=args.model, memorized=args.memorized)
    edits = _named(args.edit, "--edit")
    if args.summary is not None:
        edits = _selected_only(edits, args.summary)
    _check_counts(args, "max_items", "batch_size")
    if args.t < 0:
        raise ValueError(f"--t must be >= 0, got {args.t}")
    rows = read_rows(args.memorized)
    with cost() as c:
        model, tok = _load_model(args)
        result = ss.stress_test(model, tok, rows, edits, args.t, args.prefix_len,
                                args.suffix_len, args.max_items, args.batch_size)
    _finish(args, result, ss.stress_figure, c)


# --------------------------------------------------------------------------- registration


def _common(p, model: bool = True, eigen: bool = True) -> None:
    if model:
        add_model_args(p)
        p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
        p.add_argument("--device", default=None, help="cpu, cuda (default: cuda if present)")
    if eigen:
        p.add_argument("--eigen", required=True, help="directory of eigen layer files")
        p.add_argument("--layers", required=True, help="blocks to analyse, e.g. 1,2")
        p.add_argument("--modules", default="mlp.gate_proj,mlp.up_proj",
                       help="MLP modules inside a block")
    p.add_argument("--out", required=True, help="result JSON file")
    p.add_argument("--figure", default=None, help="figure PNG file")


def _positions(p, max_items: int, memorized_required: bool = True) -> None:
    p.add_argument("--memorized", required=memorized_required,
                   help="memorized items, JSONL (e.g. canaries_forget.jsonl)")
    p.add_argument("--prefix-len", type=int, default=64)
    p.add_argument("--suffix-len", type=int, default=48)
    p.add_argument("--max-items", type=int, default=max_items, help="memorized items used")


def _band_arg(p) -> None:
    p.add_argument("--bands", default="0.1,0.25,0.5",
                   help="inner cut points of the bands, as shares from the top")


def register(subparsers) -> None:
    top = subparsers.add_parser(
        "analyze", help="analyses of the curvature edit (JSON + figure each)",
        description="Analyses behind the paper's Figs. 2 and 4 and Table 6, and the spectra, "
        "per-example curvature and basis stability. Each writes a JSON that records its exact "
        "definition.")
    sub = top.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    p = sub.add_parser("activation-ratio", formatter_class=fmt,
                       help="memorized ÷ clean output norm per curvature band (Fig. 2)")
    _common(p)
    _positions(p, 40)
    p.add_argument("--clean", required=True, help="held-out text, JSONL with 'text'")
    p.add_argument("--max-clean-blocks", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16)
    _band_arg(p)
    p.set_defaults(func=cmd_activation_ratio)

    p = sub.add_parser("task-interaction", formatter_class=fmt,
                       help="per task category: activation ratio vs retention (Fig. 4)")
    _common(p)
    _positions(p, 40, memorized_required=False)
    p.add_argument("--tasks", required=True, help="tasks JSONL (category, prompt, answer)")
    p.add_argument("--clean", required=True, help="held-out text, JSONL with 'text'")
    p.add_argument("--summary", required=True, help="lm_summary.json from report-lm")
    p.add_argument("--selected", default=None,
                   help="edit name in the summary (default: the summary's selected edit)")
    p.add_argument("--max-per-category", type=int, default=40)
    p.add_argument("--max-clean-blocks", type=int, default=40)
    p.add_argument("--block-len", type=int, default=64, help="tokens per clean block")
    p.add_argument("--batch-size", type=int, default=16)
    _band_arg(p)
    p.set_defaults(func=cmd_task_interaction)

    p = sub.add_parser("spectra", formatter_class=fmt,
                       help="eigenvalues of A and G, λμ mass curve, effective ranks")
    _common(p, model=False)
    p.add_argument("--rhos", default=None, help="ρ values of the sweep to mark, e.g. 0.5,0.6")
    p.set_defaults(func=cmd_spectra)

    p = sub.add_parser("per-example", formatter_class=fmt,
                       help="per-sequence gradients in the K-FAC eigenbasis, by band")
    _common(p)
    _positions(p, 20)
    p.add_argument("--clean", required=True, help="held-out text, JSONL with 'text'")
    p.add_argument("--batch-size", type=int, default=8)
    _band_arg(p)
    p.set_defaults(func=cmd_per_example)

    p = sub.add_parser("stability", formatter_class=fmt,
                       help="agreement of eigenbases from other token slices / seeds")
    p.add_argument("--set", action="append", required=True, metavar="NAME=DIR",
                   help="an eigen directory (repeat; >= 2); token counts and seeds are read "
                   "from its files")
    p.add_argument("--layers", required=True)
    p.add_argument("--modules", default="mlp.gate_proj,mlp.up_proj")
    p.add_argument("--rho", type=float, default=0.6, help="ρ of the kept pair sets compared")
    p.add_argument("--top-k", type=int, default=16, help="eigenvectors for principal angles")
    _common(p, model=False, eigen=False)
    p.set_defaults(func=cmd_stability)

    p = sub.add_parser("stress", formatter_class=fmt,
                       help="positional perturbations of memorized prompts (Table 6)")
    _common(p, eigen=False)
    _positions(p, 20)
    p.add_argument("--edit", action="append", default=[], metavar="NAME=FILE",
                   help="an edit to score beside the base model (repeat)")
    p.add_argument("--summary", default=None,
                   help="lm_summary.json: of the K-FAC edits given, keep only its selected one")
    p.add_argument("--t", type=int, default=20, help="perturbation size t")
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=cmd_stress)
