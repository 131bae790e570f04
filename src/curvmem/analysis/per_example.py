"""Per-example curvature: where each sequence's own gradient lies in the K-FAC eigenbasis.

For one sequence and module, grad W = Σ_t g_t a_tᵀ (g_t: gradient of the sequence's loss at the
module's output at position t, a_t: its input; summed over all positions). Its projection on the
eigenbasis, P = U_Gᵀ (grad W) U_A, has P_ij² = the example's squared gradient along pair (i, j),
and Σ P_ij² = ‖grad W‖²_F (U_G, U_A orthogonal). Per example we report the share of P's squared
mass in each curvature band (bands by share of pairs), ‖grad W‖², and the aggregate curvature
along the example's own direction, κ = Σ λᵢμⱼ P_ij² / Σ P_ij². The paper's claim: a memorized
example is sharp along its own directions (large ‖grad W‖²) that average out over the data to
low aggregate curvature (small κ, mass in the bottom bands).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from curvmem.analysis.common import (
    BANDS,
    band_label,
    by_length,
    check_bands,
    clean_items,
    frozen_with_hooks,
    memorized_items,
    module_label,
    pair_share_masks,
    save_figure,
)

# Existing curvmem names used here:
from curvmem.model import mlp_modules, model_device

DEFINITION = (
    "loss(sequence) = sum over its scored positions of cross-entropy with the gold next token "
    "(memorized: positions predicting the suffix; clean: the same positions of held-out blocks of "
    "the same length). grad_W = sum_t g_t a_t^T over all positions; P = U_G^T grad_W U_A. "
    "band_share[band] = sum_{(i,j) in band} P_ij^2 / ||grad_W||_F^2 with bands by share of pairs "
    "sorted by lambda_i mu_j; grad_sq = ||grad_W||_F^2; kappa = sum lambda_i mu_j P_ij^2 / "
    "sum P_ij^2 (aggregate K-FAC curvature along the example's gradient).")


def example_gradients(model, modules, items: list[dict], batch_size: int = 8):
    """Yield (item index, {(layer, name): grad W (d_out, d_in) float64}) per item.

    The weights stay frozen; gradients are taken at the modules' outputs and contracted with their
    inputs, so one backward pass per batch gives every example's own gradient (examples of a batch
    do not interact)."""
    device = model_device(model)
    with frozen_with_hooks(model, modules) as (inputs, outputs):
        for idx in by_length(items, batch_size):
            ids = torch.tensor([items[i]["ids"] for i in idx], device=device)
            emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
            logits = model(inputs_embeds=emb).logits.float()
            loss = 0.0
            for b, i in enumerate(idx):
                pos = torch.tensor(items[i]["positions"], device=device)
                loss = loss + F.cross_entropy(logits[b, pos], ids[b, pos + 1], reduction="sum")
            keys = list(outputs)
            grads = torch.autograd.grad(loss, [outputs[k] for k in keys])
            for b, i in enumerate(idx):
                yield i, {k: g[b].double().T @ inputs[k][b].detach().double()
                          for k, g in zip(keys, grads)}
            inputs.clear()
            outputs.clear()


def project(grad_w: torch.Tensor, eig: dict) -> torch.Tensor:
    """P = U_Gᵀ grad_W U_A."""
    return eig["UG"].T @ grad_w.cpu() @ eig["UA"]


def band_masks_and_curvature(eigen: dict, keys, bands) -> tuple[dict, dict]:
    """Per module: the band masks (by share of pairs) and the pair curvatures λᵢμⱼ."""
    masks = {k: [torch.as_tensor(M) for M in pair_share_masks(eigen[k]["lam"], eigen[k]["mu"],
                                                               bands)] for k in keys}
    curv = {k: torch.as_tensor(np.outer(eigen[k]["lam"], eigen[k]["mu"])) for k in keys}
    return masks, curv


def band_record(sq: torch.Tensor, masks, curv: torch.Tensor) -> dict:
    """One example's band shares of its squared projection P², ‖∇W‖² and κ."""
    total = float(sq.sum())
    return {"band_share": [float(sq[M].sum()) / total if total else None for M in masks],
            "grad_sq": total,
            "kappa": float((sq * curv).sum()) / total if total else None}


def group_summary(recs: list[dict]) -> dict:
    """Count, median and mean band shares, median ‖∇W‖² and κ of a group's records."""
    shares = np.array([r["band_share"] for r in recs], dtype=np.float64)
    return {"n": len(recs),
            "band_share_median": np.nanmedian(shares, axis=0).tolist(),
            "band_share_mean": np.nanmean(shares, axis=0).tolist(),
            "grad_sq_median": float(np.median([r["grad_sq"] for r in recs])),
            "kappa_median": float(np.nanmedian([np.nan if r["kappa"] is None else r["kappa"]
                                                for r in recs]))}


def per_example_curvature(model, tokenizer, eigen: dict, layers, modules, memorized_rows,
                          clean_texts, bands=BANDS, prefix_len: int = 64, suffix_len: int = 48,
                          max_items: int = 40, batch_size: int = 8) -> dict:
    bands = check_bands(bands)
    targets = mlp_modules(model, layers, modules)
    mem = memorized_items(memorized_rows, tokenizer, prefix_len, suffix_len, max_items)
    clean = clean_items(clean_texts, tokenizer, len(mem[0]["ids"]), mem[0]["positions"],
                        len(mem))  # as many clean sequences as memorized ones
    items = mem + clean
    keys = [(m.layer, m.name) for m in targets]
    masks, curv = band_masks_and_curvature(eigen, keys, bands)
    rows = {k: [None] * len(items) for k in keys}
    for i, grads in example_gradients(model, targets, items, batch_size):
        for k in keys:
            rows[k][i] = band_record(project(grads[k], eigen[k]) ** 2, masks[k], curv[k])
    results = []
    for layer, name in keys:
        per_group = {}
        for group, members in (("memorized", range(len(mem))),
                               ("clean", range(len(mem), len(items)))):
            recs = [rows[(layer, name)][i] for i in members]
            per_group[group] = {
                **group_summary(recs),
                "examples": [{"id": items[i]["id"], "kind": items[i]["kind"], **rows[(layer, name)][i]}
                             for i in members]}
        results.append({"layer": layer, "module": name, **per_group})
    return {"analysis": "per_example", "definition": DEFINITION,
            "params": {"layers": sorted({m.layer for m in targets}),
                       "modules": sorted({m.name for m in targets}),
                       "bands": [list(b) for b in bands], "prefix_len": prefix_len,
                       "suffix_len": suffix_len, "max_items": max_items,
                       "n_memorized": len(mem), "n_clean": len(clean)},
            "band_labels": [band_label(*b) for b in bands],
            "modules": results}


def per_example_figure(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mods, labels = result["modules"], result["band_labels"]
    groups = result.get("groups", ["memorized", "clean"])  # the first one is memorized
    fig, axes = plt.subplots(len(mods), 2, figsize=(11, 3.2 * len(mods)), squeeze=False)
    colours = dict(zip(groups, ("tab:red", "tab:blue", "tab:green")))
    width = 0.7 / len(groups)
    for (ax_b, ax_s), mod in zip(axes, mods):
        x = np.arange(len(labels))
        for k, group in enumerate(groups):
            shares = [[e["band_share"][b] for e in mod[group]["examples"]
                       if e["band_share"][b] is not None] for b in range(len(labels))]
            parts = ax_b.boxplot(shares, positions=x + (k - (len(groups) - 1) / 2) * width,
                                 widths=width * 0.85, patch_artist=True, showfliers=False)
            for box in parts["boxes"]:
                box.set(facecolor=colours[group], alpha=0.6)
            ex = mod[group]["examples"]
            ax_s.scatter([e["grad_sq"] for e in ex], [e["kappa"] for e in ex], s=12,
                         color=colours[group], alpha=0.7, label=f"{group} (n = {len(ex)})")
        ax_b.set_xticks(x, labels, fontsize=8)
        ax_b.set_ylabel("share of ‖∇W‖² in band")
        ax_b.set_title(f"{module_label(mod['layer'], mod['module'])}: per-example gradient by "
                       "K-FAC band (" + ", ".join(f"{colours[g][4:]} {g.split('_')[0]}"
                                                  for g in groups) + ")", fontsize=9)
        ax_s.set_xscale("log")
        ax_s.set_yscale("log")
        ax_s.set_xlabel("per-example ‖∇W‖²_F (own sharpness)")
        ax_s.set_ylabel("κ: aggregate λμ along own gradient")
        ax_s.set_title("sharp alone, flat on average?", fontsize=9)
        ax_s.legend(fontsize=7)
    fig.suptitle(result.get("title", "Per-example curvature: memorized vs clean sequences"),
                 y=1.0, fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)
