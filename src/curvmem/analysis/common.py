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

from collections import Counter, defaultdict
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


def memorized_items(rows, tokenizer, prefix_len=64, suffix_len=48, max_per_kind=None,
                    where="memorized data") -> list[dict]:
    """Prefix + suffix of each memorized row; positions = those that predict a suffix token
    (P-1 .. P+S-2), the positions where recitation happens.

    Args:
        rows: memorized rows (any format `memorization_examples` reads), with a `kind` each.
        tokenizer: the model's tokenizer.
        prefix_len: prefix tokens of a row given as text.
        suffix_len: suffix tokens of a row given as text.
        max_per_kind: at most this many items of each kind, in file order (None: every item):
            a cap per kind, since memorized files are ordered by kind.
        where: the file's name in errors.

    Returns:
        One dict per item: ids, positions, kind, id, prefix, suffix.
    """
    items, taken = [], Counter()
    for e in memorization_examples(rows, tokenizer, prefix_len, suffix_len, where):
        if max_per_kind is not None and taken[e["kind"]] >= max_per_kind:
            continue
        taken[e["kind"]] += 1
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


def shape(item: dict) -> tuple:
    """(length, positions): what a held-out twin of an item must share with it."""
    return len(item["ids"]), tuple(item["positions"])


def heldout_twins(items: list[dict], texts, tokenizer, n_blocks: int, per_item: bool = False,
                  where="held-out data") -> list[dict]:
    """Held-out text at the items' shapes: blocks of the longest item's length, each cut to an
    item's length and scored at its positions.

    Args:
        items: the items to mirror.
        texts: held-out texts.
        tokenizer: the model's tokenizer.
        n_blocks: blocks of held-out text to cut.
        per_item: one twin per item (block i for item i; n_blocks must be >= len(items)), instead
            of every block at each distinct shape of the items.
        where: the file's name in errors.

    Returns:
        Items (kind "clean", id = block index) with their `shape`.
    """
    longest = max(len(it["ids"]) for it in items)
    blocks = token_blocks(texts, tokenizer, longest, longest * n_blocks, where)
    if per_item:
        if len(blocks) < len(items):
            raise ValueError(f"{where}: {len(blocks)} blocks of {longest} tokens, fewer than the "
                             f"{len(items)} items to mirror; give more held-out text")
        pairs = [(j, shape(it)) for j, it in enumerate(items)]
    else:
        pairs = [(j, s) for s in sorted({shape(it) for it in items}) for j in range(len(blocks))]
    return [{"ids": blocks[j][:length].tolist(), "positions": list(pos), "kind": "clean",
             "id": j, "shape": (length, pos)} for j, (length, pos) in pairs]


def resample_within(kinds, n_resamples: int, rng) -> np.ndarray:
    """Bootstrap indices that keep each kind's count: row r resamples, with replacement, the
    items of each kind among themselves, in place (column i stays of item i's kind).

    Args:
        kinds: each item's kind.
        n_resamples: rows.
        rng: a numpy Generator.

    Returns:
        [n_resamples, len(kinds)] int64 indices into the items.
    """
    kinds = np.asarray(kinds, dtype=object)
    out = np.empty((n_resamples, kinds.size), np.int64)
    for kind in sorted(set(kinds.tolist())):
        idx = np.flatnonzero(kinds == kind)
        out[:, idx] = idx[rng.integers(0, idx.size, (n_resamples, idx.size))]
    return out


def interval(samples, lo: float = 2.5, hi: float = 97.5) -> list:
    """[lo, hi] percentiles of bootstrap samples along axis 0 (NaNs ignored), as lists."""
    qs = np.nanpercentile(np.asarray(samples, np.float64), [lo, hi], axis=0)
    return np.stack([qs[0], qs[1]], axis=-1).tolist()


# the pooled contrasts, each over its kinds: documents (--memorized vs --control) and quotes
# (--quotes vs --control-quotes)
SETS = ("documents", "quotes")
N_RESAMPLES = 2000  # bootstrap resamples of the same-kind intervals


def _check_kinds(items: list[dict], where: str) -> None:
    bad = sorted({it["kind"] for it in items} & set(SETS) | {it["kind"] for it in items} & {"all"})
    if bad:
        raise ValueError(f"{where}: kind {bad[0]!r} is the name of a pooled group; rename it")


def load_sets(tokenizer, memorized_rows, control_rows, quote_rows, control_quote_rows,
               prefix_len, suffix_len, max_per_kind) -> dict:
    """The memorized and control items of the documents and the quotes.

    Args:
        tokenizer: the model's tokenizer.
        memorized_rows: memorized documents (--memorized).
        control_rows: never-trained documents of the same kinds (--control), or None.
        quote_rows: memorized quotes (--quotes), or None.
        control_quote_rows: never-trained quotes (--control-quotes), or None.
        prefix_len: prefix tokens of rows given as text.
        suffix_len: suffix tokens of rows given as text.
        max_per_kind: items of each kind per file (None: every item).

    Returns:
        {side: {set: items}}, side memorized / control, set documents / quotes; a file not
        given has no entry.
    """
    files = {("memorized", "documents"): (memorized_rows, "--memorized"),
             ("control", "documents"): (control_rows, "--control"),
             ("memorized", "quotes"): (quote_rows, "--quotes"),
             ("control", "quotes"): (control_quote_rows, "--control-quotes")}
    sides = {"memorized": {}, "control": {}}
    for (side, name), (rows, flag) in files.items():
        if rows is None:
            continue
        items = memorized_items(rows, tokenizer, prefix_len, suffix_len, max_per_kind, flag)
        _check_kinds(items, flag)
        sides[side][name] = items
    return sides


def contrast_kinds(sides: dict) -> dict:
    """{set: [kinds of both the memorized and the control items]}, in the memorized file's order;
    a set without a control file has none."""
    out = {}
    for name, items in sides["memorized"].items():
        ctl = {it["kind"] for it in sides["control"].get(name, [])}
        out[name] = list(dict.fromkeys(it["kind"] for it in items if it["kind"] in ctl))
    return out


def nan_to_none(x):
    """NaN -> None, so the JSON says 'not defined' rather than a float NaN."""
    if isinstance(x, dict):
        return {k: nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [nan_to_none(v) for v in x]
    return None if isinstance(x, float) and np.isnan(x) else x


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
