"""Activation ratio by curvature band (the paper's Fig. 2), memorized against never-trained
text of the same kind.

For a module W = U_G C U_Aᵀ (C = U_Gᵀ W U_A) and a band B of pairs with mask M_B, the band's
output for an input a is y_B = U_G (C ⊙ M_B) U_Aᵀ a; for an SVD band, y_B = U_B Σ_B V_Bᵀ a. A
band's ratio is  mean ‖y_B‖ over the memorized items' positions  ÷  the same over a reference's.

The primary reference is like with like: never-trained documents of the same kind (menus against
menus, tables against tables, ...) and never-trained quotes against the memorized quotes, at their
own suffix-predicting positions. Against held-out prose alone, any unfamiliar genre shifts the
band profile (the issue-29 measurement: the never-trained documents gave the memorized ones'
ratios), so held-out text is a secondary column, for the memorized and for the control items.
Beside the bands, the full output's ratio (‖W a‖): a band ratio that only follows it says the
inputs are larger, not that they lean on a band (`vs_full` = band ratio ÷ full ratio).
"""

from __future__ import annotations

import numpy as np
import torch

from curvmem.analysis.common import (
    BANDS,
    N_RESAMPLES,
    SETS,
    band_label,
    capture_inputs,
    check_bands,
    contrast_kinds,
    heldout_twins,
    interval,
    load_sets,
    mass_share_masks,
    module_label,
    nan_to_none,
    pair_share_masks,
    resample_within,
    save_figure,
    shape,
    svd_share_slices,
)

# Existing curvmem names used here:
from curvmem.model import mlp_modules

DEFINITION = (
    "y_B = U_G (C * M_B) U_A^T a with C = U_G^T W U_A (K-FAC bands), or U_B S_B V_B^T a (SVD "
    "bands); kfac_pairs: pairs sorted by lambda_i mu_j descending (ties by flat index), band "
    "[lo, hi) of their ranks; kfac_mass: the same order cut at cumulative mass (lo, hi]; svd: "
    "singular values descending, band [lo, hi) of their count; full: ||W a||. An item's value: the "
    "mean over its positions (those predicting a suffix token, P-1..P+S-2) of ||y_B(a)||. A group's "
    "mean: the mean over its positions within each kind, then the plain mean over its kinds (every "
    "kind weighs the same). same_kind[contrast] = group mean of the memorized items / group mean "
    "of the never-trained control items of the same kinds (kinds on one side only are left out); "
    "ci95: 2.5/97.5 percentiles over bootstrap resamples of items within each kind, memorized and "
    "control resampled independently. heldout[side][group] = the side's group mean / the group "
    "mean of held-out twins: every held-out block cut to each item's length and read at its "
    "positions, averaged over the blocks. vs_full = band ratio / full ratio.")

FAMILIES = ("kfac_pairs", "kfac_mass", "svd")


def band_operators(W: torch.Tensor, eig: dict, bands=BANDS) -> dict:
    """{family: [(d_out, d_in) float64 matrix of each band]}; each family sums to W."""
    W = W.detach().double().cpu()
    UG, UA = eig["UG"], eig["UA"]
    C = UG.T @ W @ UA
    ops = {}
    for family, masks in (("kfac_pairs", pair_share_masks(eig["lam"], eig["mu"], bands)),
                          ("kfac_mass", mass_share_masks(eig["lam"], eig["mu"], bands))):
        ops[family] = [UG @ (C * torch.as_tensor(M)) @ UA.T for M in masks]
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    ops["svd"] = [(U[:, s] * S[s]) @ Vh[s] for s in svd_share_slices(S.numel(), bands)]
    return ops


def mean_band_norms(ops: dict, a: torch.Tensor) -> dict:
    """{family: [mean over rows of a of ||Op a||, per band]}."""
    return {family: [float((a @ op.T).norm(dim=1).mean()) for op in mats]
            for family, mats in ops.items()}


def group_band_norms(model, modules, eigen: dict, groups: dict, bands=BANDS,
                     batch_size: int = 16) -> dict:
    """Mean norms of named groups of items (e.g. task categories, clean text).

    Args:
        model: the language model.
        modules: `mlp_modules` targets.
        eigen: `load_eigen`'s eigenbases of the targets.
        groups: {name: items}.
        bands: band edges.
        batch_size: sequences per forward pass.

    Returns:
        {(layer, name): {group: {family: [mean norm per band], "full": mean ||W a||,
        "n": positions}}}.
    """
    out = {}
    inputs = {g: capture_inputs(model, modules, items, batch_size) for g, items in groups.items()}
    for m in modules:
        key = (m.layer, m.name)
        ops = band_operators(m.weight(), eigen[key], bands)
        W = m.weight().detach().double().cpu()
        out[key] = {}
        for g in groups:
            a = inputs[g][key]
            out[key][g] = {**mean_band_norms(ops, a), "full": float((a @ W.T).norm(dim=1).mean()),
                           "n": int(a.shape[0])}
    return out


def item_band_norms(model, modules, eigen: dict, items: list[dict], bands=BANDS,
                    batch_size: int = 16) -> dict:
    """Each item's mean output norm over its positions, per family and band, and of W a.

    Args:
        model: the language model.
        modules: `mlp_modules` targets.
        eigen: `load_eigen`'s eigenbases of the targets.
        items: items with ids and positions.
        bands: band edges.
        batch_size: sequences per forward pass.

    Returns:
        {(layer, name): [n_items, K] float64}, columns family-major then band (FAMILIES order),
        the last one ‖W a‖: K = len(FAMILIES) * len(bands) + 1.
    """
    inputs = capture_inputs(model, modules, items, batch_size)
    counts = torch.tensor([len(it["positions"]) for it in items])
    owner = torch.repeat_interleave(torch.arange(len(items)), counts)
    out = {}
    for m in modules:
        key = (m.layer, m.name)
        ops = band_operators(m.weight(), eigen[key], bands)
        W = m.weight().detach().double().cpu()
        a = inputs[key]
        cols = [(a @ op.T).norm(dim=1) for f in FAMILIES for op in ops[f]] + [(a @ W.T).norm(dim=1)]
        sums = torch.zeros(len(items), len(cols), dtype=torch.float64).index_add_(
            0, owner, torch.stack(cols, 1))
        out[key] = (sums / counts[:, None]).numpy()
    return out


def kind_balanced_mean(values, n, kinds) -> np.ndarray:
    """The mean over positions within each kind, then over kinds.

    Args:
        values: [..., N, K] per-item means (leading axes: e.g. bootstrap resamples).
        n: [..., N] or [N] positions per item (the weights within a kind).
        kinds: [N] each item's kind (the same along the leading axes).

    Returns:
        [..., K].
    """
    values = np.asarray(values, np.float64)
    n = np.broadcast_to(np.asarray(n, np.float64), values.shape[:-1])
    kinds = np.asarray(kinds, dtype=object)
    means = []
    for kind in sorted(set(kinds.tolist())):
        sel = kinds == kind
        w = n[..., sel]
        means.append((values[..., sel, :] * w[..., None]).sum(-2) / w.sum(-1)[..., None])
    return np.mean(means, axis=0)


def unflatten(vec, n_bands: int) -> dict:
    """[K] (item_band_norms' columns) -> {family: [per band], "full": x}."""
    if len(vec) != len(FAMILIES) * n_bands + 1:
        raise ValueError(f"{len(vec)} columns, not {len(FAMILIES)} families x {n_bands} bands + 1")
    vec = [None if v is None else float(v) for v in vec]
    return {**{f: vec[k * n_bands:(k + 1) * n_bands] for k, f in enumerate(FAMILIES)},
            "full": vec[-1]}


def _ratio(num, den) -> np.ndarray:
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den != 0, num / den, np.nan)


def same_kind_contrast(mem_values, mem_n, mem_kinds, ctl_values, ctl_n, ctl_kinds, n_bands: int,
                       rng, n_resamples: int = N_RESAMPLES) -> dict:
    """Memorized ÷ control group means (kind-balanced), with a bootstrap interval.

    Args:
        mem_values: [N, K] the memorized items' means (item_band_norms' columns).
        mem_n: [N] their positions.
        mem_kinds: [N] their kinds.
        ctl_values: [M, K] the control items' means.
        ctl_n: [M] their positions.
        ctl_kinds: [M] their kinds (the same set as mem_kinds).
        n_bands: bands per family.
        rng: a numpy Generator (the resamples).
        n_resamples: bootstrap resamples.

    Returns:
        {family: [ratio per band], "full": ratio, "vs_full": {family: [band / full]},
        "ci95": {family: [[lo, hi] per band], "full": [lo, hi]}, "n_items", "n_positions"}.
    """
    mem_values, ctl_values = np.asarray(mem_values), np.asarray(ctl_values)
    mem_n, ctl_n = np.asarray(mem_n), np.asarray(ctl_n)
    point = _ratio(kind_balanced_mean(mem_values, mem_n, mem_kinds),
                   kind_balanced_mean(ctl_values, ctl_n, ctl_kinds))
    i = resample_within(mem_kinds, n_resamples, rng)
    j = resample_within(ctl_kinds, n_resamples, rng)
    boot = _ratio(kind_balanced_mean(mem_values[i], mem_n[i], mem_kinds),
                  kind_balanced_mean(ctl_values[j], ctl_n[j], ctl_kinds))
    ci = interval(boot)
    ratios = unflatten(point, n_bands)
    return {**ratios,
            "vs_full": {f: [None if r is None or not ratios["full"] else r / ratios["full"]
                            for r in ratios[f]] for f in FAMILIES},
            "ci95": {**{f: ci[k * n_bands:(k + 1) * n_bands] for k, f in enumerate(FAMILIES)},
                     "full": ci[-1]},
            "n_items": {"memorized": int(len(mem_n)), "control": int(len(ctl_n))},
            "n_positions": {"memorized": int(mem_n.sum()), "control": int(ctl_n.sum())}}


def activation_ratio(model, tokenizer, eigen: dict, layers, modules, memorized_rows,
                     clean_texts, control_rows=None, quote_rows=None, control_quote_rows=None,
                     bands=BANDS, prefix_len: int = 64, suffix_len: int = 48,
                     max_per_kind: int | None = None, max_clean_blocks: int = 40,
                     batch_size: int = 16, n_resamples: int = N_RESAMPLES) -> dict:
    """Band ratios of memorized items against never-trained items of the same kind (primary)
    and against held-out text (secondary), per module.

    Args:
        model: the language model.
        tokenizer: its tokenizer.
        eigen: `load_eigen`'s eigenbases of the modules.
        layers: blocks analysed.
        modules: MLP module names inside a block.
        memorized_rows: memorized documents (e.g. canaries_forget.jsonl), a `kind` each.
        clean_texts: held-out texts (the secondary column).
        control_rows: never-trained documents of the same kinds (canaries_control.jsonl).
        quote_rows: memorized quotes (quotes.jsonl), or None.
        control_quote_rows: never-trained quotes (quotes_control.jsonl), or None.
        bands: band edges (check_bands).
        prefix_len: prefix tokens of rows given as text.
        suffix_len: suffix tokens of rows given as text.
        max_per_kind: items of each kind per file (None: every item).
        max_clean_blocks: held-out blocks at each item shape.
        batch_size: sequences per forward pass.
        n_resamples: bootstrap resamples of the intervals.

    Returns:
        The JSON-able result (module docstring; its `definition` says what was computed).
    """
    bands = check_bands(bands)
    if quote_rows is None and control_quote_rows is not None:
        raise ValueError("--control-quotes needs --quotes (the memorized quotes it controls)")
    targets = mlp_modules(model, layers, modules)
    sides = load_sets(tokenizer, memorized_rows, control_rows, quote_rows, control_quote_rows,
                       prefix_len, suffix_len, max_per_kind)
    kinds = contrast_kinds(sides)
    order = [(side, name) for side in sides for name in sides[side]]
    items = [it for side, name in order for it in sides[side][name]]
    owners = [(side, name) for side, name in order for _ in sides[side][name]]
    twins = heldout_twins(items, clean_texts, tokenizer, max_clean_blocks, where="--clean")
    norms = item_band_norms(model, targets, eigen, items + twins, bands, batch_size)
    n_pos = np.array([len(it["positions"]) for it in items], np.float64)
    rng = np.random.default_rng(0)
    nb = len(bands)

    def members(side, name, kind=None):
        return [i for i, (it, own) in enumerate(zip(items, owners)) if own == (side, name)
                and (kind is None or it["kind"] == kind)]

    def groups_of(side):  # (group name, item indices): each set pooled, then its kinds
        for name in sides[side]:
            yield name, members(side, name)
            for kind in dict.fromkeys(items[i]["kind"] for i in members(side, name)):
                yield kind, members(side, name, kind)

    item_kinds = [it["kind"] for it in items]
    shapes = [shape(it) for it in items]
    twin_positions = {}
    for tw in twins:
        twin_positions[tw["shape"]] = twin_positions.get(tw["shape"], 0) + len(tw["positions"])

    def group_mean(idx, source):
        return kind_balanced_mean(source[idx], n_pos[idx], [item_kinds[i] for i in idx])

    results = []
    for m in targets:
        key = (m.layer, m.name)
        vals = norms[key][:len(items)]
        by_shape: dict = {}
        for t, tw in zip(norms[key][len(items):], twins):
            by_shape.setdefault(tw["shape"], []).append(t)
        # an item's held-out twin: the mean over every held-out block read at its shape
        twin_vals = np.array([np.mean(by_shape[s], axis=0) for s in shapes])
        same = {}
        for name, ks in kinds.items():
            for contrast, sub in ([(name, ks)] if ks else []) + [(k, [k]) for k in ks]:
                mi = [i for i in members("memorized", name) if item_kinds[i] in sub]
                ci = [i for i in members("control", name) if item_kinds[i] in sub]
                same[contrast] = same_kind_contrast(
                    vals[mi], n_pos[mi], [item_kinds[i] for i in mi], vals[ci], n_pos[ci],
                    [item_kinds[i] for i in ci], nb, rng, n_resamples)
        heldout, mean_norm = {}, {"heldout": {}}
        for side in sides:
            heldout[side], mean_norm[side] = {}, {}
            for group, idx in groups_of(side):
                own, ref = group_mean(idx, vals), group_mean(idx, twin_vals)
                heldout[side][group] = unflatten(_ratio(own, ref), nb)
                mean_norm[side][group] = {**unflatten(own, nb), "n": int(n_pos[idx].sum())}
                if side == "memorized":  # the held-out twins at this group's shapes
                    mean_norm["heldout"][group] = {
                        **unflatten(ref, nb),
                        "n": sum(twin_positions[s] for s in {shapes[i] for i in idx})}
        ratio = dict(heldout["memorized"])
        if "documents" in ratio:
            ratio["all"] = ratio["documents"]
        n_positions = {g: v["n"] for g, v in mean_norm["memorized"].items()}
        if "documents" in n_positions:
            n_positions["all"] = n_positions["documents"]
        n_positions["clean"] = sum(len(t["positions"]) for t in twins)
        results.append({"layer": m.layer, "module": m.name, "same_kind": same,
                        "heldout": heldout, "ratio": ratio, "mean_norm": mean_norm,
                        "n_positions": n_positions,
                        "items": {side: [{"id": items[i]["id"], "kind": items[i]["kind"],
                                          "set": owners[i][1], "n": int(n_pos[i]),
                                          "mean_norm": unflatten(vals[i], nb),
                                          "heldout_twin": unflatten(twin_vals[i], nb)}
                                         for i in range(len(items)) if owners[i][0] == side]
                                  for side in sides}})
    contrasts = [c for name, ks in kinds.items() if ks for c in [name, *ks]]
    doc_kinds = list(dict.fromkeys(it["kind"] for it in sides["memorized"].get("documents", [])))
    return nan_to_none({
        "analysis": "activation_ratio", "definition": DEFINITION,
        "params": {"layers": sorted({m.layer for m in targets}),
                   "modules": sorted({m.name for m in targets}),
                   "bands": [list(b) for b in bands], "prefix_len": prefix_len,
                   "suffix_len": suffix_len, "max_per_kind": max_per_kind,
                   "max_clean_blocks": max_clean_blocks, "n_resamples": n_resamples,
                   "n_items": {side: {name: len(v) for name, v in sets.items()}
                               for side, sets in sides.items()},
                   "n_clean_blocks": len({t["id"] for t in twins}),
                   "control_given": {name: bool(ks) for name, ks in kinds.items()}},
        "band_labels": [band_label(*b) for b in bands],
        "kinds": {name: list(dict.fromkeys(it["kind"] for it in v))
                  for name, v in sides["memorized"].items()},
        "contrasts": contrasts,
        "groups": ["all", *doc_kinds] if doc_kinds else [],
        "mean_over_modules": mean_over_modules(results, contrasts),
        "modules": results})


def mean_over_modules(results: list[dict], contrasts: list[str]) -> dict:
    """The plain mean over modules of each same-kind and held-out ratio (None where a module's
    is undefined)."""
    def mean(records):
        out = {}
        for f in (*FAMILIES, "full"):
            cols = np.array([np.atleast_1d(np.array(r[f], dtype=np.float64)) for r in records])
            avg = cols.mean(axis=0).tolist()
            out[f] = avg[0] if f == "full" else avg
        return out

    heldout = {side: {g: mean([r["heldout"][side][g] for r in results])
                      for g in results[0]["heldout"][side]} for side in results[0]["heldout"]}
    return {"same_kind": {c: mean([r["same_kind"][c] for r in results]) for c in contrasts},
            "heldout": heldout}


FAMILY_NAMES = {"kfac_pairs": "K-FAC (share of pairs)", "kfac_mass": "K-FAC (share of mass)",
                "svd": "SVD (share of σ)"}
FAMILY_COLOURS = {"kfac_pairs": "tab:blue", "kfac_mass": "tab:cyan", "svd": "tab:orange"}
KIND_MARKERS = ("o", "s", "^", "D", "v", "P")


def _ratio_panel(ax, labels, pooled: dict, by_kind: dict, markers: dict,
                 second: dict | None = None) -> None:
    """Bars: the pooled ratio per family and band, then the full output's; error bars: its ci95
    when given; hollow markers: each kind's (`markers`: kind -> marker); red crosses: `second`
    (another reference)."""
    x = np.arange(len(labels) + 1)
    width = 0.8 / len(FAMILIES)
    for k, family in enumerate(FAMILIES):
        pos = x[:-1] + (k - 1) * width
        vals = [np.nan if v is None else v for v in pooled[family]]
        err = None
        if "ci95" in pooled:
            ci = np.array([[np.nan, np.nan] if c is None else c for c in pooled["ci95"][family]],
                          dtype=np.float64)
            err = np.abs(np.stack([vals - ci[:, 0], ci[:, 1] - vals]))
        ax.bar(pos, vals, width, color=FAMILY_COLOURS[family], label=FAMILY_NAMES[family],
               yerr=err, capsize=2, error_kw={"lw": 0.8, "ecolor": "0.3"})
        for kind, rec in by_kind.items():
            ax.scatter(pos, [np.nan if v is None else v for v in rec[family]],
                       marker=markers[kind], s=14, facecolor="white", edgecolor="k", lw=0.8,
                       zorder=3, label=f"{kind} (per kind)" if k == 0 else None)
        if second is not None:
            ax.scatter(pos, [np.nan if v is None else v for v in second[family]], marker="x",
                       s=22, color="tab:red", zorder=4,
                       label="control ÷ held-out" if k == 0 else None)
    full_err = None
    if "ci95" in pooled and pooled["ci95"]["full"] is not None:
        lo, hi = pooled["ci95"]["full"]
        full_err = [[pooled["full"] - lo], [hi - pooled["full"]]]
    ax.bar(x[-1], pooled["full"], 0.5, color="0.6", yerr=full_err, capsize=2,
           error_kw={"lw": 0.8, "ecolor": "0.3"}, label="full output ‖W a‖")
    for kind, rec in by_kind.items():
        ax.scatter([x[-1]], [rec["full"]], marker=markers[kind], s=14, facecolor="white",
                   edgecolor="k", lw=0.8, zorder=3)
    if second is not None:
        ax.scatter([x[-1]], [second["full"]], marker="x", s=22, color="tab:red", zorder=4)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x, [lab.replace("top ", "top\n").replace("bottom ", "bottom\n")
                      for lab in labels] + ["full\n‖W a‖"], fontsize=7)


def activation_ratio_figure(result: dict, path) -> None:
    """One row per module: memorized ÷ never-trained documents of the same kinds, the same for
    quotes, and the secondary held-out column (memorized and control ÷ held-out text)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mods, labels = result["modules"], result["band_labels"]
    kinds = result["kinds"]
    markers = dict(zip([k for ks in kinds.values() for k in ks], KIND_MARKERS * 4))
    columns = [(name, f"{name}: memorized ÷ never-trained,\nsame kinds (bars: pooled, 95 % CI)")
               for name in SETS if name in result["contrasts"]]
    columns.append(("heldout", "secondary: memorized documents (bars) and\nnever-trained ones (×) ÷ held-out text"))
    fig, axes = plt.subplots(len(mods), len(columns), squeeze=False,
                             figsize=(4.6 * len(columns), 3.1 * len(mods)))
    for row, mod in zip(axes, mods):
        for ax, (name, title) in zip(row, columns):
            if name == "heldout":
                held = mod["heldout"]["memorized"]
                group = "documents" if "documents" in held else next(iter(held))
                _ratio_panel(ax, labels, held[group],
                             {k: held[k] for k in kinds.get(group, []) if k in held}, markers,
                             mod["heldout"].get("control", {}).get(group))
            else:
                same = mod["same_kind"]
                _ratio_panel(ax, labels, same[name],
                             {k: same[k] for k in kinds.get(name, []) if k in same}, markers)
            ax.set_title(f"{module_label(mod['layer'], mod['module'])} — {title}", fontsize=8)
        row[0].set_ylabel("ratio of mean ‖band output‖")
    seen = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen), loc="upper center", ncol=min(len(seen), 6),
               fontsize=8, bbox_to_anchor=(0.5, 1.0 + 0.05 / len(mods)))
    fig.suptitle("Activation ratio by curvature band: memorized ÷ same-kind control (primary) "
                 "and ÷ held-out text (secondary)",
                 y=1.0 + 0.11 / len(mods), fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def band_axis(ax, x, labels, mod) -> None:
    """One module's panel of a band-ratio figure: the ratio-1 line, band ticks, the title."""
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x, [lab.replace("top ", "top\n").replace("bottom ", "bottom\n")
                      for lab in labels], fontsize=8)
    ax.set_title(module_label(mod["layer"], mod["module"]), fontsize=10)


def finish_band_figure(fig, axes, n_panels: int, rows: int, path, ylabel: str,
                       title: str) -> None:
    """The y labels, the unused panels off, one legend above, the title; then save."""
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    for ax in axes.flat[n_panels:]:
        ax.axis("off")
    handles, labs = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labs, loc="upper center", ncol=len(handles), fontsize=8,
               bbox_to_anchor=(0.5, 1.0 + 0.02 / rows))
    fig.suptitle(title, y=1.06 + 0.02 / rows, fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)
