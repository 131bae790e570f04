"""The analyses where they apply to the vision model (a ViT memorizing noisy labels).

The ViT's K-FAC factors are collected at the CLS position only (`factors.ClassificationTask`),
so its eigenbases describe the CLS token's statistics; both analyses here read that position:

    activation ratio   mean ‖y_B(a)‖ over the CLS inputs a of the noisy-labelled (memorized)
                       training images ÷ the same over clean-labelled training images, and ÷ over
                       validation images; y_B as in `activation_ratio` (K-FAC and SVD bands).
    per-example        each image's own gradient of the module at the CLS position, g aᵀ (g: the
                       gradient of its cross-entropy with its training label at the module's CLS
                       output), projected on the eigenbasis, P = U_Gᵀ g aᵀ U_A: band shares of P²,
                       ‖g aᵀ‖² and κ, as in `per_example`.

Spectra and basis stability need nothing model-specific (`spectra`, `stability`); the stress test
and the task interaction are about text and do not apply.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from curvmem.analysis.activation_ratio import (
    FAMILIES,
    band_axis,
    band_operators,
    finish_band_figure,
    mean_band_norms,
)
from curvmem.analysis.common import (
    BANDS,
    band_label,
    check_bands,
    frozen_with_hooks,
    mlp_hooks,
)
from curvmem.analysis.per_example import (
    band_masks_and_curvature,
    band_record,
    group_summary,
    project,
)

# Existing curvmem names used here:
from curvmem.model import mlp_modules, model_device

# memorized first: the figures draw it in red
GROUPS = ("noisy_train", "clean_train", "val")
# (numerator, denominator) of the reported ratios
COMPARISONS = (("noisy_train", "clean_train"), ("noisy_train", "val"), ("val", "clean_train"))

RATIO_DEFINITION = (
    "ratio[num/den][family][band] = mean_{images of num} ||y_B(a)|| / mean_{images of den} "
    "||y_B(a)||, a = the module's input at the CLS position (where the factors were collected), "
    "y_B = U_G (C * M_B) U_A^T a with C = U_G^T W U_A (K-FAC bands) or U_B S_B V_B^T a (SVD bands); "
    "bands as in activation_ratio (kfac_pairs: share of pairs by lambda_i mu_j, kfac_mass: share "
    "of mass, svd: share of singular values). Groups: noisy_train = training images whose label "
    "was replaced (the memorized ones), clean_train = the other training images, val = validation "
    "images; each capped at max_images, in dataset order.")

PER_EXAMPLE_DEFINITION = (
    "loss(image) = cross-entropy of the logits with the image's training label (the noisy label "
    "for noisy_train; the true one for clean_train and val). grad_W = g a^T at the CLS position "
    "only (g: gradient of the loss at the module's CLS output, a: its CLS input), the part of the "
    "weight gradient the CLS-position K-FAC factors describe; P = U_G^T grad_W U_A. band_share, "
    "grad_sq and kappa as in per_example (bands by share of pairs sorted by lambda_i mu_j). "
    "fits_label: the model predicts the image's training label.")


def image_groups(tensors: dict, max_images: int | None = None) -> dict:
    """{group: (images, labels)}: noisy- and clean-labelled training images (their training
    labels) and validation images, each the first `max_images` in dataset order."""
    noisy = tensors["train_noisy"].bool()
    out = {"noisy_train": (tensors["train_images"][noisy], tensors["train_labels"][noisy]),
           "clean_train": (tensors["train_images"][~noisy], tensors["train_labels"][~noisy]),
           "val": (tensors["val_images"], tensors["val_labels"])}
    out = {g: (x[:max_images], y[:max_images]) for g, (x, y) in out.items()}
    empty = [g for g, (x, _) in out.items() if x.shape[0] == 0]
    if empty:
        raise ValueError(f"the vision dataset has no {', '.join(empty)} images (noise 0?)")
    return out


@torch.no_grad()
def capture_cls_inputs(model, modules, images: torch.Tensor, position: int = 0,
                       batch_size: int = 256) -> dict:
    """{(layer, name): [n_images, d_in] float64}: each module's input at `position`."""
    device = model_device(model)
    current: dict = {}
    chunks: dict = {(m.layer, m.name): [] for m in modules}
    handles = mlp_hooks(modules, current)
    try:
        for i in range(0, images.shape[0], batch_size):
            model(images[i:i + batch_size].to(device))
            for key, x in current.items():
                chunks[key].append(x[:, position].double().cpu())
    finally:
        for h in handles:
            h.remove()
    return {key: torch.cat(c) for key, c in chunks.items()}


def vit_activation_ratio(model, tensors: dict, eigen: dict, layers, modules, bands=BANDS,
                         max_images: int | None = None, batch_size: int = 256) -> dict:
    bands = check_bands(bands)
    targets = mlp_modules(model, layers, modules)
    groups = image_groups(tensors, max_images)
    inputs = {g: capture_cls_inputs(model, targets, x, batch_size=batch_size)
              for g, (x, _) in groups.items()}
    results = []
    for m in targets:
        key = (m.layer, m.name)
        ops = band_operators(m.weight(), eigen[key], bands)
        W = m.weight().detach().double().cpu()
        norms = {g: {**mean_band_norms(ops, inputs[g][key]),
                     "full": float((inputs[g][key] @ W.T).norm(dim=1).mean()),
                     "n": int(inputs[g][key].shape[0])} for g in groups}
        ratio = {f"{num}/{den}": {f: [x / y if y else None
                                      for x, y in zip(norms[num][f], norms[den][f])]
                                  for f in FAMILIES}
                 for num, den in COMPARISONS}
        results.append({"layer": m.layer, "module": m.name, "ratio": ratio, "mean_norm": norms,
                        "n_images": {g: v["n"] for g, v in norms.items()}})
    return {"analysis": "vit_activation_ratio", "definition": RATIO_DEFINITION,
            "params": {"layers": sorted({m.layer for m in targets}),
                       "modules": sorted({m.name for m in targets}),
                       "bands": [list(b) for b in bands], "position": 0,
                       "max_images": max_images},
            "band_labels": [band_label(*b) for b in bands],
            "comparisons": [f"{num}/{den}" for num, den in COMPARISONS],
            "modules": results}


def cls_gradients(model, modules, images: torch.Tensor, labels: torch.Tensor,
                  position: int = 0, batch_size: int = 64):
    """Yield (image index, {(layer, name): g aᵀ (d_out, d_in) float64}, predicted label) per
    image: the module's weight gradient at `position` of the image's own cross-entropy.

    The weights stay frozen; the images require grad so that autograd reaches every hooked
    output. Images of a batch do not interact (no batch statistics), so one backward pass per
    batch gives each image's own gradient."""
    device = model_device(model)
    with frozen_with_hooks(model, modules) as (inputs, outputs):
        for start in range(0, images.shape[0], batch_size):
            x = images[start:start + batch_size].to(device).requires_grad_(True)
            y = labels[start:start + batch_size].to(device)
            logits = model(x).float()
            keys = list(outputs)
            grads = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"),
                                        [outputs[k] for k in keys])
            pred = logits.argmax(-1).tolist()
            for b in range(x.shape[0]):
                yield start + b, {k: torch.outer(g[b, position].double(),
                                                 inputs[k][b, position].detach().double()).cpu()
                                  for k, g in zip(keys, grads)}, pred[b]
            inputs.clear()
            outputs.clear()


def vit_per_example(model, tensors: dict, eigen: dict, layers, modules, bands=BANDS,
                    max_images: int | None = 200, batch_size: int = 64) -> dict:
    bands = check_bands(bands)
    targets = mlp_modules(model, layers, modules)
    keys = [(m.layer, m.name) for m in targets]
    masks, curv = band_masks_and_curvature(eigen, keys, bands)
    results = {k: {} for k in keys}
    for group, (images, labels) in image_groups(tensors, max_images).items():
        rows = {k: [] for k in keys}
        for i, grads, pred in cls_gradients(model, targets, images, labels,
                                            batch_size=batch_size):
            for k in keys:
                rows[k].append({"index": i, "fits_label": pred == int(labels[i]),
                                **band_record(project(grads[k], eigen[k]) ** 2, masks[k],
                                              curv[k])})
        for k in keys:
            results[k][group] = {**group_summary(rows[k]),
                                 "fits_label": float(np.mean([r["fits_label"] for r in rows[k]])),
                                 "examples": rows[k]}
    return {"analysis": "vit_per_example", "definition": PER_EXAMPLE_DEFINITION,
            "params": {"layers": sorted({m.layer for m in targets}),
                       "modules": sorted({m.name for m in targets}),
                       "bands": [list(b) for b in bands], "position": 0,
                       "max_images": max_images},
            "band_labels": [band_label(*b) for b in bands],
            "groups": list(GROUPS),
            "title": "Per-example curvature (ViT, CLS position): noisy-labelled vs clean images",
            "modules": [{"layer": layer, "module": name, **results[(layer, name)]}
                        for layer, name in keys]}


def vit_activation_ratio_figure(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mods, labels = result["modules"], result["band_labels"]
    names = {"kfac_pairs": "K-FAC (share of pairs)", "kfac_mass": "K-FAC (share of mass)",
             "svd": "SVD (share of σ)"}
    colours = {"kfac_pairs": "tab:blue", "kfac_mass": "tab:cyan", "svd": "tab:orange"}
    markers = {"noisy_train/val": ("o", "k"), "val/clean_train": ("x", "grey")}
    cols = min(len(mods), 4)
    rows = -(-len(mods) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False,
                             sharey=True)
    x = np.arange(len(labels))
    width = 0.8 / len(FAMILIES)
    for ax, mod in zip(axes.flat, mods):
        for k, family in enumerate(FAMILIES):
            pos = x + (k - 1) * width
            ax.bar(pos, [np.nan if v is None else v
                         for v in mod["ratio"]["noisy_train/clean_train"][family]], width,
                   color=colours[family], label=names[family])
            for comp, (marker, colour) in markers.items():
                ax.scatter(pos, [np.nan if v is None else v for v in mod["ratio"][comp][family]],
                           marker=marker, s=14, color=colour, zorder=3,
                           label=comp.replace("/", " ÷ ") if k == 0 else None)
        band_axis(ax, x, labels, mod)
    finish_band_figure(fig, axes, len(mods), rows, path,
                       "noisy ÷ clean training images\nmean ‖band output‖ (CLS)",
                       "ViT activation ratio by curvature band (bars: noisy ÷ clean training "
                       "images)")
