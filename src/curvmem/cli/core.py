"""collect, merge, eigen, edit: the curvature core's commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from curvmem.cli.common import add_model_args, check_memorized_file, check_seq_len, unique
from curvmem.io import cost, write_cost
from curvmem.presets import KEEP_MODES


def register(sub, evaluate_sub) -> None:
    p = sub.add_parser(
        "collect", help="collect K-FAC factors A and G for MLP modules, one netCDF file per layer",
        description="Stream packed token sequences (or, for a ViT, images) through a model and "
        "accumulate A = E[a aᵀ] (module inputs) and G = E[g gᵀ] (gradients of the summed "
        "next-token cross-entropy at the module outputs) per requested layer and module. Writes "
        "DIR/layer_<L>.nc.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_args(p)
    p.add_argument("--data", required=True,
                   help="JSONL ('text' field) or text corpus, .npy token ids (1-D stream or 2-D "
                   "[n_seq, seq_len]), a `datasets` directory or hf:NAME[:SPLIT]; for a ViT, "
                   "the dataset file from `curvmem vision-data`")
    p.add_argument("--layers", required=True, help="block indices, e.g. 5,6 or 3-5")
    p.add_argument("--modules", default=None,
                   help="modules inside a block, e.g. mlp.gate_proj,mlp.up_proj (default: all MLP "
                   "linear modules)")
    p.add_argument("--blocks-path", default=None,
                   help="for an architecture curvmem does not know: the block list's attribute "
                   "path (e.g. transformer.h); then --modules is required")
    p.add_argument("--tokens", type=int, required=True,
                   help="token budget (whole sequences of --seq-len are used); images for a ViT")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per packed sequence")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per batch")
    p.add_argument("--fisher", choices=["sampled", "empirical"], default="sampled",
                   help="sampled: targets drawn from the model (true Fisher, the paper's); "
                   "empirical: gold next tokens")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled targets")
    p.add_argument("--shard", default=None,
                   help="k/n: process only the k-th (from 0) of n contiguous slices; combine "
                   "the shard files with `curvmem merge`")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="accumulation and storage precision of the factors")
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="save running sums every N batches (DIR/.checkpoint...) and resume from "
                   "them when rerun; 0 = never")
    p.add_argument("--memorized", default=None,
                   help="memorized-set JSONL files, comma-separated: each factor file records "
                        "how many collected positions are their content (memorized_positions)")
    p.add_argument("--images", default="train",
                   help="ViT only: the Fisher's images: train (all training images with their "
                   "noisy labels, the paper's), clean (the clean ones only) or heldout (the "
                   "dataset's held-out split, vision-data --heldout-fraction); SET+augK adds K "
                   "copies of each image shifted by up to 1 pixel, SET+augKsS by up to S")
    p.add_argument("--augment-seed", type=int, default=0,
                   help="ViT only: seed of the augmented copies' shifts")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=run_collect)

    p = sub.add_parser("merge", help="combine shard factor files of one layer (token-weighted)")
    p.add_argument("files", nargs="+", help="factor files of shards 0/n ... (n-1)/n")
    p.add_argument("--out", required=True)
    p.set_defaults(func=run_merge)

    p = sub.add_parser("eigen", help="eigendecompose a factors file into an eigenbasis file",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--factors", required=True, help="layer_<L>.nc from `curvmem collect`")
    p.add_argument("--out", required=True, help="output layer_<L>.nc")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64",
                   help="precision of eigh")
    p.add_argument("--device", default=None, help="default: cuda if present")
    p.set_defaults(func=run_eigen)

    p = sub.add_parser(
        "edit", help="write an edited-weights file: K-FAC curvature-mass edit or SVD baseline",
        description="K-FAC: keep the top-curvature pairs (λᵢμⱼ) holding a fraction rho of the "
        "mass, W' = U_G (C ⊙ M) U_Aᵀ. --keep bottom keeps the complement, --keep random the same "
        "number of pairs at random (controls). SVD: drop the smallest --svd-drop fraction of "
        "singular values. Writes FILE.safetensors (full parameter names) + FILE.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_args(p)
    p.add_argument("--eigen", default=None, help="directory of eigen layer files (K-FAC)")
    p.add_argument("--layers", default=None, help="e.g. 23,24,25")
    p.add_argument("--modules", default=None, help="e.g. mlp.gate_proj,mlp.up_proj")
    p.add_argument("--rho", type=float, default=None, help="mass fraction kept, in (0, 1]")
    p.add_argument("--method", choices=["kfac", "svd"], default="kfac")
    p.add_argument("--keep", choices=list(KEEP_MODES), default="top",
                   help="top: the edit; the rest are controls (docs/baselines.md)")
    p.add_argument("--svd-drop", type=float, default=None,
                   help="SVD: fraction of singular values to drop")
    p.add_argument("--spec", default=None,
                   help='JSON {"layer": {"module": value}}: a rho (or drop) per layer and module')
    p.add_argument("--seed", type=int, default=0, help="seed of the random --keep controls")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                   default="auto",
                   help="dtype to load the model in and write the edited weights in (the edit "
                   "itself is computed in float64 from the weights as loaded); auto: the "
                   "checkpoint's stored dtype, so the edit starts from exactly the stored weights "
                   "and a bf16 checkpoint needs half a float32 load's memory")
    p.add_argument("--tag", default=None,
                   help="method label in the sidecar (e.g. kfac-shard for eigenbases from "
                   "another shard)")
    p.add_argument("--out", required=True, help="FILE.safetensors")
    p.set_defaults(func=run_edit)


def _layer_list(text):
    from curvmem.model import parse_int_list

    try:
        layers = parse_int_list(text)
    except ValueError:
        raise ValueError(f"--layers must be like 5,6 or 3-5, got '{text}'") from None
    return unique(layers, "--layers", "layer")


def _module_list(text) -> list[str] | None:
    return unique(text.split(","), "--modules", "module") if text else None


def _memorized_files(text) -> list[str] | None:
    """collect --memorized: the files, each read once here for its ids (before the model)."""
    if not text:
        return None
    files = unique(text.split(","), "--memorized", "file")
    for path in files:
        check_memorized_file(path, "--memorized")
    return files


def _spec_agrees(args, layers, modules) -> None:
    """A --spec names its layers, modules and values itself: --rho or --svd-drop beside it, or
    --layers/--modules that say otherwise, would be ignored silently, so they are refused; so
    is a spec giving one layer, or one module of a layer, twice (JSON keeps the last)."""
    import json

    def pairs(items):
        keys = [k for k, _ in items]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ValueError(f"--spec: '{twice[0]}' is given twice")
        return dict(items)

    value = [flag for flag, v in (("--rho", args.rho), ("--svd-drop", args.svd_drop))
             if v is not None]
    if value:
        raise ValueError(f"--spec gives a value per layer and module: drop {value[0]} (it "
                         "would be ignored)")
    try:
        spec = json.loads(args.spec, object_pairs_hook=pairs)
        spec_layers = sorted(int(k) for k in spec)
        spec_modules = [sorted(v) for v in spec.values()]
    except (json.JSONDecodeError, TypeError, ValueError, AttributeError) as e:
        if "given twice" in str(e):
            raise
        return  # parse_spec names a spec that is not {"layer": {"module": value}}
    if layers is not None and sorted(layers) != spec_layers:
        raise ValueError(f"--layers {args.layers} disagrees with --spec (layers "
                         f"{spec_layers}): give the same layers, or --spec alone")
    if modules is not None and any(m != sorted(modules) for m in spec_modules):
        raise ValueError(f"--modules {args.modules} disagrees with --spec (modules "
                         f"{spec_modules}): give the same modules, or --spec alone")


def check_fisher_images(spec: str) -> None:
    """Refuse a bad `--images` before any model or data is read."""
    from curvmem.model.vit import fisher_image_set
    from curvmem.world.images import IMAGE_SETS

    try:
        fisher_image_set(spec, IMAGE_SETS)
    except ValueError as e:
        raise ValueError(f"--images: {e}") from None


def run_collect(args) -> None:
    from curvmem.factors import collect_layer_files

    check_seq_len(args.model, args.seq_len)
    check_fisher_images(args.images)
    memorized = _memorized_files(args.memorized)
    n_tokens, layers = collect_layer_files(
        args.model, args.data, _layer_list(args.layers), args.out, tokens=args.tokens,
        modules=_module_list(args.modules), blocks_path=args.blocks_path,
        seq_len=args.seq_len, batch_size=args.batch_size, fisher=args.fisher, seed=args.seed,
        shard=args.shard, dtype=args.dtype, checkpoint_every=args.checkpoint_every,
        device=args.device, trust_remote_code=args.trust_remote_code, image_set=args.images,
        memorized=memorized, augment_seed=args.augment_seed)
    print(f"collected {n_tokens} positions for layers {layers} -> {Path(args.out)}")


def run_merge(args) -> None:
    from curvmem.factors import merge_layer_files

    merge_layer_files(args.files, args.out)
    print(f"merged {len(args.files)} shard files -> {args.out}")


def run_eigen(args) -> None:
    import torch

    from curvmem.eigen import eigen_layer
    from curvmem.model import default_device
    from curvmem.schema import layer_cost

    device = default_device(args.device)
    with cost() as c:
        eigen_layer(args.factors, args.out, dtype=getattr(torch, args.dtype), device=device)
    # an eigen file's cost includes its factors' (what an edit amortises), in its own file
    upstream = layer_cost(args.factors)
    write_cost(args.out, {"seconds": round(upstream["seconds"] + c["seconds"], 3),
                          "peak_rss_mb": max(upstream["peak_rss_mb"], c["peak_rss_mb"]),
                          "eigen_seconds": c["seconds"]})
    print(f"eigenbases -> {args.out}")


def run_edit(args) -> None:
    import torch

    from curvmem.edit import build_edit, parse_spec
    from curvmem.edit.build import upstream_cost
    from curvmem.model import load_model
    from curvmem.schema import write_edit

    if not args.out.endswith(".safetensors"):
        raise ValueError(f"--out must end in .safetensors, got '{args.out}'")
    value = args.rho if args.method == "kfac" else args.svd_drop
    if args.method == "kfac" and args.svd_drop is not None:
        raise ValueError("--svd-drop is for --method svd")
    if args.method == "svd" and args.keep != "top":
        raise ValueError("--keep is for --method kfac")
    layers = _layer_list(args.layers) if args.layers is not None else None
    modules = _module_list(args.modules)
    if args.spec is not None:
        _spec_agrees(args, layers, modules)
    spec = parse_spec(args.spec, args.layers, args.modules, value)
    with cost() as c:
        model = load_model(args.model, dtype="auto" if args.dtype == "auto"
                           else getattr(torch, args.dtype), trust_remote_code=args.trust_remote_code)
        tensors, meta = build_edit(model, spec, method=args.method, eigen_dir=args.eigen,
                                   keep=args.keep, seed=args.seed)
    if args.tag:
        meta["method"] = args.tag
    meta["model"] = args.model
    meta["load_dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    write_edit(args.out, tensors, meta)
    # the edit's cost, with the factors and eigenbases it amortises (`upstream_*`)
    upstream = upstream_cost(spec, args.eigen if args.method == "kfac" else None)
    write_cost(args.out, {
        "seconds": round(upstream["seconds"] + c["seconds"], 3),
        "peak_rss_mb": round(max(upstream["peak_rss_mb"], c["peak_rss_mb"]), 1),
        "edit_seconds": c["seconds"], "upstream_seconds": round(upstream["seconds"], 3),
        "upstream_peak_rss_mb": round(upstream["peak_rss_mb"], 1)})
    kept = [s.get("mass_kept", s.get("singular_values_kept")) for s in meta["modules"].values()]
    print(f"{meta['method']} edit of {len(tensors)} weights -> {args.out} (kept: {kept})")
