"""Activation ratio by curvature band (the paper's Fig. 2).

For a module W = U_G C U_Aᵀ (C = U_Gᵀ W U_A) and a band B of pairs with mask M_B, the band's
output for an input a is y_B = U_G (C ⊙ M_B) U_Aᵀ a; for an SVD band, y_B = U_B Σ_B V_Bᵀ a. The
ratio of a band is  mean ‖y_B‖ over memorized positions  ÷  mean ‖y_B‖ over clean positions.
Memorized positions: those of a memorized item that predict a suffix token; clean positions: the
same positions in blocks of held-out text of the same length. A ratio above 1: the band carries
more of the memorized inputs' output than of ordinary text's.
"""

from __future__ import annotations

import numpy as np
import torch

from curvmem.analysis.common import (
    BANDS,
    band_label,
    capture_inputs,
    check_bands,
    clean_items,
    mass_share_masks,
    memorized_items,
    module_label,
    pair_share_masks,
    save_figure,
    svd_share_slices,
)

# Existing curvmem names used here:
from curvmem.model import mlp_modules

DEFINITION = (
    "ratio[band] = mean_{memorized positions} ||y_B(a)|| / mean_{clean positions} ||y_B(a)||, "
    "y_B = U_G (C * M_B) U_A^T a with C = U_G^T W U_A (K-FAC bands), or U_B S_B V_B^T a (SVD bands). "
    "kfac_pairs: pairs sorted by lambda_i mu_j descending (ties by flat index), band [lo, hi) of "
    "their ranks; kfac_mass: the same order cut at cumulative mass (lo, hi]; svd: singular values "
    "descending, band [lo, hi) of their count. Memorized positions: those predicting a suffix token "
    "(P-1..P+S-2) of each memorized item; clean: the same positions in held-out blocks of P+S tokens.")

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
    """{(layer, name): {group: {family: [mean norm per band], "full": mean ||W a||, "n": count}}}
    for named groups of items (e.g. memorized kinds, task categories, clean text)."""
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


def activation_ratio(model, tokenizer, eigen: dict, layers, modules, memorized_rows,
                     clean_texts, bands=BANDS, prefix_len: int = 64, suffix_len: int = 48,
                     max_items: int = 40, max_clean_blocks: int = 40,
                     batch_size: int = 16) -> dict:
    bands = check_bands(bands)
    targets = mlp_modules(model, layers, modules)
    mem = memorized_items(memorized_rows, tokenizer, prefix_len, suffix_len, max_items)
    block_len = len(mem[0]["ids"])
    clean = clean_items(clean_texts, tokenizer, block_len, mem[0]["positions"], max_clean_blocks)
    groups = {"clean": clean, "all": mem}
    for kind in sorted({it["kind"] for it in mem}):
        groups[kind] = [it for it in mem if it["kind"] == kind]
    norms = group_band_norms(model, targets, eigen, groups, bands, batch_size)
    results = []
    for (layer, name), by_group in norms.items():
        clean_norms = by_group["clean"]
        ratios = {g: {f: [x / c if c else None for x, c in zip(v[f], clean_norms[f])]
                      for f in FAMILIES}
                  for g, v in by_group.items() if g != "clean"}
        results.append({"layer": layer, "module": name, "ratio": ratios,
                        "mean_norm": by_group,
                        "n_positions": {g: v["n"] for g, v in by_group.items()}})
    return {"analysis": "activation_ratio", "definition": DEFINITION,
            "params": {"layers": sorted({m.layer for m in targets}),
                       "modules": sorted({m.name for m in targets}),
                       "bands": [list(b) for b in bands], "prefix_len": prefix_len,
                       "suffix_len": suffix_len, "max_items": max_items,
                       "max_clean_blocks": max_clean_blocks, "block_len": block_len,
                       "n_items": len(mem), "n_clean_blocks": len(clean)},
            "band_labels": [band_label(*b) for b in bands],
            "groups": [g for g in groups if g != "clean"],
            "modules": results}


def activation_ratio_figure(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mods = result["modules"]
    labels = result["band_labels"]
    kinds = [g for g in result["groups"] if g != "all"]
    cols = min(len(mods), 4)
    rows = -(-len(mods) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False,
                             sharey=True)
    names = {"kfac_pairs": "K-FAC (share of pairs)", "kfac_mass": "K-FAC (share of mass)",
             "svd": "SVD (share of σ)"}
    colours = {"kfac_pairs": "tab:blue", "kfac_mass": "tab:cyan", "svd": "tab:orange"}
    markers = ["o", "s", "^", "D"]
    x = np.arange(len(labels))
    width = 0.8 / len(FAMILIES)
    for ax, mod in zip(axes.flat, mods):
        for k, family in enumerate(FAMILIES):
            pos = x + (k - 1) * width
            ax.bar(pos, mod["ratio"]["all"][family], width, color=colours[family],
                   label=names[family])
            for kind, marker in zip(kinds, markers):
                ax.scatter(pos, mod["ratio"][kind][family], marker=marker, s=14, color="k",
                           zorder=3, label=f"{kind} items" if k == 0 else None)
        band_axis(ax, x, labels, mod)
    finish_band_figure(fig, axes, len(mods), rows, path, "memorized ÷ clean\nmean ‖band output‖",
                       "Activation ratio by curvature band (bars: all memorized items; dots: by "
                       "kind)")


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
