"""CLI: `curvmem analyze {activation-ratio,task-interaction,spectra,per-example,stability,stress,
vit-activation-ratio,vit-per-example,batch}`.

Each writes one JSON (with the exact definition it computed) and, with --figure, a PNG. Inputs are
checked before anything is computed or written. Every subcommand is planned in two steps: a
`_plan_*` function checks its inputs and returns the computation, which runs after; `batch` plans
all its runs first, then runs them in one process, loading each model once.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from curvmem.cli.common import add_model_args, check_name, check_seed, check_seq_len, unique
from curvmem.io import cost


def _files(**paths) -> None:
    for flag, path in paths.items():
        if path is not None and not Path(path).exists():
            raise ValueError(f"--{flag.replace('_', '-')} {path}: no such file or directory")


def _named(entries, flag: str, optional=()) -> dict:
    """['NAME=PATH', ...] -> {name: path}, names unique, paths present (except names in
    `optional`: those the command writes)."""
    out = {}
    for entry in entries or []:
        name, sep, path = entry.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{flag} '{entry}' must look like NAME=PATH")
        if name in out or name == "base" and flag == "--edit":
            raise ValueError(f"{flag} name '{name}' is given twice or reserved")
        check_name(name, flag)
        if name not in optional and not Path(path).exists():
            raise ValueError(f"{flag} {name}: {path} does not exist")
        out[name] = path
    return out


def _memorized(args, flag: str = "memorized") -> list[dict] | None:
    """The rows of --memorized (or another memorized-format flag), one id never given to two
    texts; None for a flag not given."""
    from curvmem.cli.common import check_ids
    from curvmem.evaluate.lm import read_rows

    path = getattr(args, flag)
    return None if path is None else check_ids(read_rows(path), path)


def _same_kind_sets(args) -> dict:
    """The memorized and control files of a same-kind analysis, read and checked: documents
    (--memorized, --control) and quotes (--quotes, --control-quotes)."""
    if args.control_quotes is not None and args.quotes is None:
        raise ValueError("--control-quotes needs --quotes (the memorized quotes it controls)")
    return {"memorized_rows": _memorized(args), "control_rows": _memorized(args, "control"),
            "quote_rows": _memorized(args, "quotes"),
            "control_quote_rows": _memorized(args, "control_quotes")}


def _modules(text) -> list[str]:
    mods = [m.strip() for m in str(text).split(",") if m.strip()]
    if not mods:
        raise ValueError("--modules is empty")
    return unique(mods, "--modules", "module")


def _layers(text) -> list[int]:
    from curvmem.model import parse_int_list

    try:
        layers = parse_int_list(text)
    except ValueError:
        raise ValueError(f"--layers must be like 1,2 or 1-3, got '{text}'") from None
    if not layers:
        raise ValueError("--layers is empty")
    return unique(layers, "--layers", "layer")


def _check_counts(args, *names) -> None:
    for name in names:
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")


# Models loaded in this process, by (path, trust_remote_code, device, dtype): `batch` runs share
# them. Every analysis leaves the weights as it found them (edits are restored, gradients are
# taken with the weights frozen and their requires_grad flags put back).
_MODELS: dict = {}


def _model_key(args, dtype: str | None = None) -> tuple:
    from curvmem.model import default_device

    return (str(args.model), bool(args.trust_remote_code), default_device(args.device), dtype)


def _load_model(args, dtype: str | None = None):
    """(model, tokenizer or None for a ViT), loaded once per process."""
    import torch

    from curvmem.model import load_model, load_tokenizer
    from curvmem.model.vit import is_vision_model

    torch.set_num_threads(args.threads)
    key = _model_key(args, dtype)
    if key not in _MODELS:
        model = load_model(args.model, trust_remote_code=args.trust_remote_code, device=key[2],
                           dtype=getattr(torch, dtype) if dtype else None)
        tok = None if is_vision_model(args.model) else load_tokenizer(
            args.model, trust_remote_code=args.trust_remote_code)
        _MODELS[key] = (model, tok)
    return _MODELS[key]


def _finish(args, result: dict, figure_fn, c: dict) -> None:
    from curvmem.io import write_cost, write_json

    shared = getattr(args, "shared_load_seconds", None)
    result["inputs"] = {k: v for k, v in vars(args).items()
                        if k not in ("func", "command", "analysis", "plan",
                                     "shared_load_seconds") and not callable(v)}
    write_json(args.out, result)
    # measured: in the cost file beside the result, never in it
    write_cost(args.out, c if shared is None else {**c, "shared_load_seconds": shared})
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
    for flag in ("eigen", "memorized", "control", "quotes", "control_quotes", "clean", "tasks",
                 "summary", "data"):
        if hasattr(args, flag):
            _files(**{flag: getattr(args, flag)})


def _bands(args):
    from curvmem.analysis.common import parse_bands

    return parse_bands(args.bands)


# --------------------------------------------------------------------------- commands
# Each _plan_X(args) checks everything it can without computing and returns the computation.


def _max_per_kind(args) -> int | None:
    if args.max_per_kind is not None:
        _check_counts(args, "max_per_kind")
    return args.max_per_kind


def _plan_activation_ratio(args):
    from curvmem.analysis import activation_ratio as ar
    from curvmem.analysis.common import load_eigen
    from curvmem.evaluate.lm import read_texts

    _prepare(args)
    _check_counts(args, "max_clean_blocks", "batch_size", "resamples")
    bands, sets, texts = _bands(args), _same_kind_sets(args), read_texts(args.clean)
    max_per_kind = _max_per_kind(args)

    def run():
        with cost() as c:
            model, tok = _load_model(args)
            eigen = load_eigen(args.eigen, model, args.layer_list, args.module_list)
            result = ar.activation_ratio(
                model, tok, eigen, args.layer_list, args.module_list, clean_texts=texts, **sets,
                bands=bands, prefix_len=args.prefix_len, suffix_len=args.suffix_len,
                max_per_kind=max_per_kind, max_clean_blocks=args.max_clean_blocks,
                batch_size=args.batch_size, n_resamples=args.resamples)
        _finish(args, result, ar.activation_ratio_figure, c)
    return run


def _plan_task_interaction(args):
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
    mem = _memorized(args) if args.memorized else None
    selected = args.selected or summary.get("selected")
    if selected not in summary.get("models", {}):
        raise ValueError(f"--summary has no edit '{selected}'; pass --selected NAME "
                         f"(one of {sorted(summary.get('models', {}))})")
    # edited / base per category (the report's rule) and per category/subcategory
    kept = {**retention(summary, selected), **ti.subcategory_retention(summary, selected)}

    def run():
        with cost() as c:
            model, tok = _load_model(args)
            eigen = load_eigen(args.eigen, model, args.layer_list, args.module_list)
            result = ti.task_interaction(model, tok, eigen, args.layer_list, args.module_list,
                                         rows, texts, kept, selected, mem, bands,
                                         args.max_per_category, args.max_clean_blocks,
                                         args.block_len, args.prefix_len, args.suffix_len,
                                         args.batch_size)
        _finish(args, result, ti.task_interaction_figure, c)
    return run


def _plan_spectra(args):
    from curvmem.analysis import spectra as sp
    from curvmem.edit import check_rho

    _prepare(args, need_model=False)
    rhos = [check_rho(r) for r in str(args.rhos).split(",") if r.strip()] if args.rhos else []

    def run():
        with cost() as c:
            result = sp.spectra(args.eigen, args.layer_list, args.module_list, rhos)
        _finish(args, result, sp.spectra_figure, c)
    return run


def _plan_per_example(args):
    from curvmem.analysis import per_example as pe
    from curvmem.analysis.common import load_eigen
    from curvmem.evaluate.lm import read_texts

    _prepare(args)
    _check_counts(args, "batch_size", "resamples")
    bands, sets, texts = _bands(args), _same_kind_sets(args), read_texts(args.clean)
    max_per_kind = _max_per_kind(args)

    def run():
        with cost() as c:
            model, tok = _load_model(args)
            eigen = load_eigen(args.eigen, model, args.layer_list, args.module_list)
            result = pe.per_example_curvature(
                model, tok, eigen, args.layer_list, args.module_list, clean_texts=texts, **sets,
                bands=bands, prefix_len=args.prefix_len, suffix_len=args.suffix_len,
                max_per_kind=max_per_kind, batch_size=args.batch_size,
                n_resamples=args.resamples)
        _finish(args, result, pe.lm_per_example_figure, c)
    return run


def _slice_dtype(args) -> str | None:
    """`collect` loads in bfloat16 on a GPU: the slices do the same."""
    from curvmem.model import default_device

    return "bfloat16" if default_device(args.device).startswith("cuda") else None


def _plan_stability(args):
    from curvmem.analysis import stability as st
    from curvmem.edit import check_rho

    _prepare(args, need_model=False)
    slices = {}
    for entry in args.slice or []:
        name, sep, spec = entry.partition("=")
        if not sep or not name or name in slices:
            raise ValueError(f"--slice '{entry}' must look like NAME=TOKENS,K/N,SEED, each NAME "
                             "once")
        check_name(name, "--slice")
        slices[name] = st.parse_slice(spec)
        check_seed(slices[name][2], f"--slice {name}: SEED")
    sets = _named(args.set, "--set", optional=slices)
    unknown = sorted(set(slices) - set(sets))
    if unknown:
        raise ValueError(f"--slice {unknown}: no --set NAME=DIR says where to write them")
    if slices:
        if not args.model or not args.data:
            raise ValueError("--slice collects factors: it needs --model and --data")
        _files(model=args.model)
        _check_counts(args, "seq_len", "batch_size")
        check_seq_len(args.model, args.seq_len)
    check_rho(args.rho)
    if len(sets) < 2:
        raise ValueError("stability needs at least two factor sets (--set NAME=DIR)")

    def run():
        with cost() as c:
            if slices:
                model, _ = _load_model(args, _slice_dtype(args))
                st.collect_slices(model, args.model, args.data,
                                  {sets[n]: spec for n, spec in slices.items()},
                                  args.layer_list, args.module_list, seq_len=args.seq_len,
                                  batch_size=args.batch_size, fisher=args.fisher,
                                  dtype=args.dtype, trust_remote_code=args.trust_remote_code)
            result = st.stability(sets, args.layer_list, args.module_list, args.rho, args.top_k)
        _finish(args, result, st.stability_figure, c)
    return run


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


def _plan_stress(args):
    from curvmem.analysis import stress as ss
    from curvmem.analysis.common import check_outputs

    check_outputs(args.out, args.figure)
    _files(model=args.model, memorized=args.memorized)
    edits = _named(args.edit, "--edit")
    if args.summary is not None:
        edits = _selected_only(edits, args.summary)
    _check_counts(args, "batch_size")
    max_per_kind = _max_per_kind(args)
    if args.t < 0:
        raise ValueError(f"--t must be >= 0, got {args.t}")
    rows = _memorized(args)

    def run():
        with cost() as c:
            model, tok = _load_model(args)
            result = ss.stress_test(model, tok, rows, edits, args.t, args.prefix_len,
                                    args.suffix_len, max_per_kind, args.batch_size)
        _finish(args, result, ss.stress_figure, c)
    return run


def _vit_inputs(args):
    """Checks of a ViT analysis: (bands, dataset tensors); the model must be a ViT directory."""
    from curvmem.model.vit import is_vision_model
    from curvmem.world.images import load_dataset

    _prepare(args)
    if not is_vision_model(args.model):
        raise ValueError(f"--model {args.model}: not a curvmem ViT directory (train-vit); the "
                         "language-model analyses are activation-ratio and per-example")
    _check_counts(args, "batch_size")
    if args.max_images is not None:
        _check_counts(args, "max_images")
    return _bands(args), load_dataset(args.data)[0]


def _plan_vit_activation_ratio(args):
    from curvmem.analysis import vit as av
    from curvmem.analysis.common import load_eigen

    bands, tensors = _vit_inputs(args)

    def run():
        with cost() as c:
            model, _ = _load_model(args)
            eigen = load_eigen(args.eigen, model, args.layer_list, args.module_list)
            result = av.vit_activation_ratio(model, tensors, eigen, args.layer_list,
                                             args.module_list, bands, args.max_images,
                                             args.batch_size)
        _finish(args, result, av.vit_activation_ratio_figure, c)
    return run


def _plan_vit_per_example(args):
    from curvmem.analysis import per_example as pe
    from curvmem.analysis import vit as av
    from curvmem.analysis.common import load_eigen

    bands, tensors = _vit_inputs(args)

    def run():
        with cost() as c:
            model, _ = _load_model(args)
            eigen = load_eigen(args.eigen, model, args.layer_list, args.module_list)
            result = av.vit_per_example(model, tensors, eigen, args.layer_list,
                                        args.module_list, bands, args.max_images,
                                        args.batch_size)
        _finish(args, result, pe.per_example_figure, c)
    return run


def _single(plan):
    """A subcommand's func: plan (every check), then run."""
    def cmd(args) -> None:
        plan(args)()
    return cmd


class _RunParser(argparse.ArgumentParser):
    """Parses one `batch --run`: a bad run is a ValueError (one line), not an exit."""

    def error(self, message):
        raise ValueError(message)


def batch_runs(args) -> list:
    """The parsed `--run`s of `analyze batch` (each as `curvmem analyze ANALYSIS ...` would
    parse it): a bad one is a ValueError naming it."""
    parser = _RunParser(prog="curvmem analyze batch --run")
    _register_analyses(parser.add_subparsers(dest="analysis", metavar="ANALYSIS",
                                             required=True, parser_class=_RunParser))
    runs = []
    for text in args.run:
        try:
            r = parser.parse_args(shlex.split(text))
        except ValueError as e:
            raise ValueError(f"--run '{text}': {e}") from None
        r.command = "analyze"
        if args.threads is not None and hasattr(r, "threads"):
            r.threads = args.threads
        runs.append(r)
    return runs


def cmd_batch(args) -> None:
    """Several analyses in one process: every run is checked first, then they run in order,
    each model loaded once (`shared_load_seconds` in each result's cost file: that load)."""
    runs = batch_runs(args)
    outs = [str(r.out) for r in runs]
    if len(set(outs)) != len(outs):
        raise ValueError(f"--run: two runs write the same file ({outs})")
    planned = [r.plan(r) for r in runs]  # every run's inputs checked before anything computes
    load_seconds = {}
    for r, run in zip(runs, planned):
        if getattr(r, "model", None) and (r.analysis != "stability" or r.slice):
            key = _model_key(r, _slice_dtype(r) if r.analysis == "stability" else None)
            if key not in load_seconds:
                with cost() as c:
                    _load_model(r, key[3])
                load_seconds[key] = c["seconds"]
            r.shared_load_seconds = load_seconds[key]
        run()


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


def _positions(p, memorized_required: bool = True,
               what: str = "memorized items, JSONL (e.g. canaries_forget.jsonl)") -> None:
    p.add_argument("--memorized", required=memorized_required, help=what)
    p.add_argument("--prefix-len", type=int, default=64)
    p.add_argument("--suffix-len", type=int, default=48)


def _per_kind(p) -> None:
    p.add_argument("--max-per-kind", type=int, default=None,
                   help="items of each kind per file, in file order (default: every item)")


def _same_kind_args(p) -> None:
    """The never-trained controls of the same kinds (the primary contrast) and the quotes."""
    p.add_argument("--control", default=None,
                   help="never-trained documents of the memorized kinds, JSONL (e.g. "
                   "canaries_control.jsonl): the primary, same-kind contrast")
    p.add_argument("--quotes", default=None, help="memorized quotes, JSONL (e.g. quotes.jsonl)")
    p.add_argument("--control-quotes", default=None,
                   help="never-trained quotes, JSONL (e.g. quotes_control.jsonl)")
    p.add_argument("--resamples", type=int, default=2000,
                   help="bootstrap resamples of the same-kind intervals")
    _per_kind(p)


def _band_arg(p) -> None:
    p.add_argument("--bands", default="0.1,0.25,0.5",
                   help="inner cut points of the bands, as shares from the top")


def register(subparsers) -> None:
    top = subparsers.add_parser(
        "analyze", help="analyses of the curvature edit (JSON + figure each)",
        description="Analyses behind the paper's Figs. 2 and 4 and Table 6, and the spectra, "
        "per-example curvature and basis stability, for the LM and (vit-*) the ViT. Each writes "
        "a JSON that records its exact definition.")
    sub = top.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    _register_analyses(sub)
    p = sub.add_parser("batch", help="several analyses in one process, each model loaded once",
                       description="Runs each --run (the arguments of `curvmem analyze "
                       "ANALYSIS ...`, one string) in order, after checking all of them; each "
                       "writes what it writes alone.")
    p.add_argument("--run", action="append", required=True, metavar="'ANALYSIS ARGS...'",
                   help="one analysis and its arguments, quoted (repeat)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads of every run (default: each run's own --threads)")
    p.set_defaults(func=cmd_batch)


def _register_analyses(sub) -> None:
    """Every analysis subcommand on `sub` (the `analyze` subparsers, or those of a batch run)."""
    fmt = argparse.ArgumentDefaultsHelpFormatter

    def add(name, plan, help):
        p = sub.add_parser(name, formatter_class=fmt, help=help)
        p.set_defaults(func=_single(plan), plan=plan)
        return p

    p = add("activation-ratio", _plan_activation_ratio,
            "memorized ÷ same-kind control output norm per curvature band (Fig. 2)")
    _common(p)
    _positions(p)
    _same_kind_args(p)
    p.add_argument("--clean", required=True,
                   help="held-out text, JSONL with 'text' (the secondary column)")
    p.add_argument("--max-clean-blocks", type=int, default=40,
                   help="held-out blocks read at each item shape")
    p.add_argument("--batch-size", type=int, default=16)
    _band_arg(p)

    p = add("task-interaction", _plan_task_interaction,
            "per task category: activation ratio vs retention (Fig. 4)")
    _common(p)
    _positions(p, memorized_required=False,
               what="memorized items drawn as a reference point, never in the correlation "
               "(the workflow: quotes.jsonl, whose retention is the untargeted one)")
    p.add_argument("--tasks", required=True,
                   help="tasks JSONL (category, prompt, answer; optional subcategory)")
    p.add_argument("--clean", required=True, help="held-out text, JSONL with 'text'")
    p.add_argument("--summary", required=True, help="lm_summary.json from report-lm")
    p.add_argument("--selected", default=None,
                   help="edit name in the summary (default: the summary's selected edit)")
    p.add_argument("--max-per-category", type=int, default=40,
                   help="items per task group (and memorized items per kind)")
    p.add_argument("--max-clean-blocks", type=int, default=40)
    p.add_argument("--block-len", type=int, default=64, help="tokens per clean block")
    p.add_argument("--batch-size", type=int, default=16)
    _band_arg(p)

    p = add("spectra", _plan_spectra, "eigenvalues of A and G, λμ mass curve, effective ranks")
    _common(p, model=False)
    p.add_argument("--rhos", default=None, help="ρ values of the sweep to mark, e.g. 0.5,0.6")

    p = add("per-example", _plan_per_example,
            "per-sequence gradients in the K-FAC eigenbasis, by band, against the same kind")
    _common(p)
    _positions(p)
    _same_kind_args(p)
    p.add_argument("--clean", required=True,
                   help="held-out text, JSONL with 'text' (a twin block per memorized item)")
    p.add_argument("--batch-size", type=int, default=8)
    _band_arg(p)

    p = add("stability", _plan_stability,
            "agreement of eigenbases from other token slices / seeds")
    p.add_argument("--set", action="append", required=True, metavar="NAME=DIR",
                   help="an eigen directory (repeat; >= 2); token counts and seeds are read "
                   "from its files")
    p.add_argument("--layers", required=True)
    p.add_argument("--modules", default="mlp.gate_proj,mlp.up_proj")
    p.add_argument("--rho", type=float, default=0.6, help="ρ of the kept pair sets compared")
    p.add_argument("--top-k", type=int, default=16, help="eigenvectors for principal angles")
    p.add_argument("--slice", action="append", default=[], metavar="NAME=TOKENS,K/N,SEED",
                   help="compute set NAME's eigen files first (into its --set DIR), as `collect "
                   "--tokens TOKENS --shard K/N --seed SEED` + `eigen` would; all slices in one "
                   "pass (repeat; needs --model and --data)")
    add_model_args(p, required=False)
    p.add_argument("--data", default=None, help="--slice: the corpus (or vision dataset) file")
    p.add_argument("--seq-len", type=int, default=512, help="--slice: as collect --seq-len")
    p.add_argument("--batch-size", type=int, default=8, help="--slice: as collect --batch-size")
    p.add_argument("--fisher", choices=["sampled", "empirical"], default="sampled",
                   help="--slice: as collect --fisher")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="--slice: as collect --dtype")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda if present)")
    _common(p, model=False, eigen=False)

    p = add("stress", _plan_stress, "positional perturbations of memorized prompts (Table 6)")
    _common(p, eigen=False)
    _positions(p, what="memorized items, JSONL (e.g. canaries_forget_validation.jsonl: never "
               "the set a selection reads)")
    _per_kind(p)
    p.add_argument("--edit", action="append", default=[], metavar="NAME=FILE",
                   help="an edit to score beside the base model (repeat)")
    p.add_argument("--summary", default=None,
                   help="lm_summary.json: of the K-FAC edits given, keep only its selected one")
    p.add_argument("--t", type=int, default=20, help="perturbation size t")
    p.add_argument("--batch-size", type=int, default=64)

    for name, plan, what, max_images, batch in (
            ("vit-activation-ratio", _plan_vit_activation_ratio,
             "ViT: noisy ÷ clean images' CLS output norm per curvature band", None, 256),
            ("vit-per-example", _plan_vit_per_example,
             "ViT: per-image CLS gradients in the K-FAC eigenbasis, by band", 200, 64)):
        p = add(name, plan, what)
        _common(p)
        p.add_argument("--data", required=True, help="vision dataset file (vision-data)")
        p.add_argument("--max-images", type=int, default=max_images,
                       help="images per group (noisy / clean training, validation; None: all)")
        p.add_argument("--batch-size", type=int, default=batch)
        p.set_defaults(modules="mlp.fc1,mlp.fc2")
        _band_arg(p)
