"""What the analyses share: curvature bands, eigen files, MLP inputs captured by hooks, the
memorized and clean token positions, and figure/JSON output.

Bands are cut from the top: BANDS = top 10 %, 10-25 %, 25-50 %, bottom 50 % (the paper's Fig. 2).
    pairs  all pairs (i, j) sorted by λᵢμⱼ descending (ties by flat index i·n + j, as
           `edit.select_pairs`); band [lo, hi) = pairs whose rank r has lo·N <= r < hi·N
    mass   the same order cut at cumulative mass: `edit.band_mask(lam, mu, lo, hi)`
    svd    singular triplets sorted by σ descending, cut by the same shares of their number
Each family partitions its components, so its band outputs sum to W a.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

# Existing curvmem names used here (the lead rewrites these imports after the layout refactor):
from curvmem.edit import band_mask
from curvmem.evaluate.lm import memorization_examples, token_blocks
from curvmem.io import atomic_output
from curvmem.model import mlp_modules, model_device, read_layer
from curvmem.schema import layer_path

BANDS = ((0.0, 0.10), (0.10, 0.25), (0.25, 0.50), (0.50, 1.0))


def band_label(lo: float, hi: float) -> str:
    if lo == 0.0:
        return f"top {100 * hi:g} %"
    if hi == 1.0:
        return f"bottom {100 * (1 - lo):g} %"
    return f"{100 * lo:g}–{100 * hi:g} %"


def check_bands(bands) -> tuple:
    """Bands must tile [0, 1] from the top, so that they partition the components."""
    bands = tuple((float(lo), float(hi)) for lo, hi in bands)
    edges = [b[0] for b in bands] + [bands[-1][1]] if bands else []
    if not bands or edges[0] != 0.0 or edges[-1] != 1.0 or any(
            lo >= hi for lo, hi in bands) or any(a[1] != b[0] for a, b in zip(bands, bands[1:])):
        raise ValueError(f"bands must tile [0, 1] in order, e.g. 0-0.1, 0.1-0.25, ...; got {bands}")
    return bands


def parse_bands(text: str) -> tuple:
    """'0.1,0.25,0.5' (the inner cut points) -> ((0, .1), (.1, .25), (.25, .5), (.5, 1))."""
    try:
        cuts = [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--bands must be cut points like 0.1,0.25,0.5, got '{text}'") from None
    edges = [0.0, *cuts, 1.0]
    return check_bands(list(zip(edges, edges[1:])))


# --------------------------------------------------------------------------- band masks


def pair_order(lam, mu) -> np.ndarray:
    """Flat pair indices sorted by λᵢμⱼ descending, ties by flat index (select_pairs' order)."""
    prod = np.outer(np.asarray(lam, np.float64), np.asarray(mu, np.float64)).ravel()
    return np.lexsort((np.arange(prod.size), -prod))


def pair_share_masks(lam, mu, bands=BANDS) -> list[np.ndarray]:
    """Boolean (m, n) masks: band [lo, hi) of the pairs by rank (share of the number of pairs)."""
    order = pair_order(lam, mu)
    n_pairs = order.size
    rank = np.empty(n_pairs, dtype=np.int64)
    rank[order] = np.arange(n_pairs)
    shape = (len(lam), len(mu))
    return [((rank >= round(lo * n_pairs)) & (rank < round(hi * n_pairs))).reshape(shape)
            for lo, hi in bands]


def mass_share_masks(lam, mu, bands=BANDS) -> list[np.ndarray]:
    """Boolean (m, n) masks: the pairs whose cumulative mass falls in (lo, hi]."""
    return [band_mask(lam, mu, lo, hi) for lo, hi in bands]


def svd_share_slices(rank: int, bands=BANDS) -> list[slice]:
    """Index ranges of the singular values (descending) in each band, by share of their number."""
    return [slice(round(lo * rank), round(hi * rank)) for lo, hi in bands]


# --------------------------------------------------------------------------- eigen files


def load_eigen(eigen_dir, model, layers, modules) -> dict:
    """{(layer, module): {"UA", "mu", "UG", "lam"} float64 tensors} for the requested modules;
    read_layer refuses files computed on other weights."""
    out = {}
    targets = mlp_modules(model, layers, modules) if model is not None else None
    names = [m.name for m in targets] if targets else list(modules)
    for layer in sorted({int(x) for x in layers}):
        f = read_layer(layer_path(eigen_dir, layer), "eigen", model=model, modules=names)
        for name in names:
            g = f.groups[name]
            out[(layer, name)] = {
                "UA": torch.as_tensor(g["A_eigenvectors"], dtype=torch.float64),
                "mu": np.asarray(g["A_eigenvalues"], np.float64),
                "UG": torch.as_tensor(g["G_eigenvectors"], dtype=torch.float64),
                "lam": np.asarray(g["G_eigenvalues"], np.float64),
                "attrs": f.attrs}
    return out


# --------------------------------------------------------------------------- token positions


def memorized_items(rows, tokenizer, prefix_len=64, suffix_len=48, max_items=None,
                    where="memorized data") -> list[dict]:
    """Prefix + suffix of each memorized row; positions = those that predict a suffix token
    (P-1 .. P+S-2), the positions where recitation happens."""
    items = []
    for e in memorization_examples(rows, tokenizer, prefix_len, suffix_len, where)[:max_items]:
        p, s = len(e["prefix"]), len(e["suffix"])
        items.append({"ids": e["prefix"] + e["suffix"], "positions": list(range(p - 1, p + s - 1)),
                      "kind": e["kind"], "id": e["id"], "prefix": e["prefix"],
                      "suffix": e["suffix"]})
    if not items:
        raise ValueError(f"{where}: no memorized items")
    return items


def clean_items(texts, tokenizer, block_len: int, positions, max_blocks: int,
                where="clean data") -> list[dict]:
    """Held-out text cut into blocks of `block_len` tokens; the same `positions` in each, so
    memorized and clean inputs are compared at the same places in the context."""
    blocks = token_blocks(texts, tokenizer, block_len, block_len * max_blocks, where)
    return [{"ids": b.tolist(), "positions": list(positions), "kind": "clean", "id": i}
            for i, b in enumerate(blocks)]


def by_length(items: list[dict], batch_size: int):
    """Batches of indices into `items` of one length (no padding is ever needed)."""
    groups = defaultdict(list)
    for i, item in enumerate(items):
        groups[len(item["ids"])].append(i)
    for _, idx in sorted(groups.items()):
        for k in range(0, len(idx), batch_size):
            yield idx[k:k + batch_size]


def mlp_hooks(modules, inputs: dict, outputs: dict | None = None) -> list:
    """Hooks that put each module's input (and, when asked, its output) in the dicts by key."""
    def pre(key):
        def fn(module, args):
            inputs[key] = args[0]
        return fn

    def post(key):
        def fn(module, args, out):
            outputs[key] = out
        return fn

    handles = [m.module.register_forward_pre_hook(pre((m.layer, m.name))) for m in modules]
    if outputs is not None:
        handles += [m.module.register_forward_hook(post((m.layer, m.name))) for m in modules]
    return handles


@contextmanager
def frozen_with_hooks(model, modules):
    """For per-example gradients: the weights frozen (autograd reaches the hooked module outputs
    through inputs that require grad, and no weight gradient is formed), each module's input and
    output captured into the yielded dicts (cleared by the caller per batch). Hooks and
    requires_grad flags are restored on exit, also when the caller stops early."""
    inputs, outputs = {}, {}
    handles = mlp_hooks(modules, inputs, outputs)
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield inputs, outputs
    finally:
        for h in handles:
            h.remove()
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)


@torch.no_grad()
def capture_inputs(model, modules, items: list[dict], batch_size: int = 16) -> dict:
    """{(layer, name): [n_positions, d_in] float64}: each module's input at the items'
    positions, concatenated in item order."""
    device = model_device(model)
    current: dict = {}
    chunks: dict = defaultdict(dict)
    handles = mlp_hooks(modules, current)
    try:
        for idx in by_length(items, batch_size):
            model(input_ids=torch.tensor([items[i]["ids"] for i in idx], device=device))
            for key, x in current.items():
                for b, i in enumerate(idx):
                    chunks[key][i] = x[b, items[i]["positions"]].double().cpu()
    finally:
        for h in handles:
            h.remove()
    return {key: torch.cat([c[i] for i in range(len(items))]) for key, c in chunks.items()}


# --------------------------------------------------------------------------- output


def check_outputs(out, figure=None) -> None:
    if Path(out).suffix != ".json":
        raise ValueError(f"--out must be a .json file, got {out}")
    if figure is not None and Path(figure).suffix != ".png":
        raise ValueError(f"--figure must be a .png file, got {figure}")


def module_label(layer: int, name: str) -> str:
    return f"L{layer} {name.split('.')[-1]}"


def save_figure(fig, path) -> None:
    import matplotlib.pyplot as plt

    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)
