"""One cell of the ViT study (docs/vision.md, "The study"): a trained ViT, its base metrics and
the metrics of every K-FAC edit (per Fisher image set) and SVD edit of a sweep.

The workflow trains one model per study setting (`curvmem train-vit`) and runs this once per
model (`curvmem vit-study-cell`): factors, eigenbases and edits stay in memory or a scratch
directory, because a study has hundreds of edits and a process per edit would spend most of its
time starting. No edit is selected here; `curvmem.report.vit_study` applies the training-only
selection rule to the cells.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from curvmem import io
from curvmem.edit.build import build_edit
from curvmem.eigen import eigen_layer
from curvmem.evaluate.vit import check_compatible
from curvmem.factors import collect_layer_files
from curvmem.model import vit
from curvmem.schema import layer_path
from curvmem.world.images import IMAGE_SETS, load_dataset


def resolve_layers(layer_sets, depth: int) -> list[list[int]]:
    """Layer sets with negative blocks counted from the end (-1: the last block), sorted."""
    out = []
    for layers in layer_sets:
        resolved = sorted({int(x) + depth if int(x) < 0 else int(x) for x in layers})
        if not layers or resolved[0] < 0 or resolved[-1] >= depth:
            raise ValueError(f"layer set {list(layers)}: the model has blocks 0..{depth - 1}")
        out.append(resolved)
    return out


def model_settings(model_dir) -> dict:
    """What a study cell varies, read from the model directory's timm_config.json."""
    cfg = io.read_json(Path(model_dir) / vit.CONFIG_FILE)
    kw, recipe = cfg["kwargs"], cfg["train"]
    patch = int(kw["patch_size"])
    h, w = kw["img_size"]
    return {"embed_dim": kw["embed_dim"], "depth": kw["depth"], "num_heads": kw["num_heads"],
            "patch_size": patch, "tokens": (h // patch) * (w // patch),
            "weight_decay": recipe["weight_decay"], "decay": recipe.get("decay", "all"),
            "epochs": recipe["epochs"], "lr": recipe["lr"], "seed": cfg["seed"]}


def model_train_seconds(model_dir) -> float | None:
    """How long the model took to train: the cost file beside its directory, else the
    `train_seconds` an older train-vit wrote into its timm_config.json (a cost, so no part of
    a cell's result)."""
    measured = io.read_cost(model_dir)
    if measured is not None and measured.get("seconds") is not None:
        return measured["seconds"]
    return io.read_json(Path(model_dir) / vit.CONFIG_FILE).get("train_seconds")


def _edited_metrics(model, weights: dict, tensors: dict) -> dict:
    """Metrics with `weights` {param_name: tensor} in place of the model's, then put back."""
    params = dict(model.named_parameters())
    saved = {n: params[n].detach().clone() for n in weights}
    try:
        with torch.no_grad():
            for n, t in weights.items():
                params[n].copy_(t.to(params[n].dtype))
        return vit.metrics(model, tensors)
    finally:
        with torch.no_grad():
            for n, t in saved.items():
                params[n].copy_(t)


def _label(method: str, layers: list[int], value: float) -> str:
    return f"{method}-L{'+'.join(map(str, layers))}-{'rho' if method == 'kfac' else 'drop'}{value:g}"


def run_cell(model_dir, data_path, *, image_sets=("train",), kfac_layers=((0,), (-1,), (0, -1)),
             rhos=(0.6, 0.75, 0.9), svd_layers=((0, -1),), svd_drops=(0.1, 0.25, 0.5),
             modules=("mlp.fc1", "mlp.fc2"), fisher: str = "sampled", seed: int = 0,
             batch_size: int = 128) -> dict:
    """Base metrics, SVD edits (layers x drop) and, per Fisher image set (IMAGE_SETS), K-FAC
    edits (layers x rho) with factors from all images of that set, at the CLS position."""
    bad = [s for s in image_sets if s not in IMAGE_SETS]
    if bad or not image_sets:
        raise ValueError(f"Fisher image sets must be some of {IMAGE_SETS}, got {list(image_sets)}")
    tensors, data_cfg = load_dataset(data_path)
    if "heldout" in image_sets and "heldout_images" not in tensors:
        raise ValueError(f"{data_path}: no held-out images for the 'heldout' Fisher (make the "
                         "dataset with curvmem vision-data --heldout-fraction F)")
    model = vit.load_model(model_dir)
    check_compatible(model, tensors, data_cfg, str(data_path))
    depth = len(model.blocks)
    kfac_sets, svd_sets = resolve_layers(kfac_layers, depth), resolve_layers(svd_layers, depth)
    modules = list(modules)
    n_images = {"train": tensors["train_images"].shape[0],
                "clean": int((~tensors["train_noisy"]).sum()),
                "heldout": tensors["heldout_images"].shape[0] if "heldout_images" in tensors
                else 0}
    with vit._threads(1):
        result = {"model_dir": str(model_dir), "data": str(data_path),
                  "settings": model_settings(model_dir), "base": vit.metrics(model, tensors),
                  "svd": {}, "kfac": {}}
        for layers in svd_sets:
            for drop in svd_drops:
                spec = {layer: {m: float(drop) for m in modules} for layer in layers}
                weights, _ = build_edit(model, spec, "svd")
                result["svd"][_label("svd", layers, drop)] = dict(
                    _edited_metrics(model, weights, tensors), layers=layers, drop=drop)
        all_layers = sorted({x for s in kfac_sets for x in s})
        for image_set in image_sets:
            with tempfile.TemporaryDirectory(prefix="vit-study-") as scratch:
                factors, eigen = Path(scratch) / "factors", Path(scratch) / "eigen"
                n, _ = collect_layer_files(model_dir, data_path, all_layers, factors,
                                           tokens=n_images[image_set], modules=modules,
                                           batch_size=batch_size, fisher=fisher, seed=seed,
                                           device="cpu", image_set=image_set)
                eigen.mkdir()
                for layer in all_layers:
                    eigen_layer(layer_path(factors, layer), layer_path(eigen, layer))
                entries = {}
                for layers in kfac_sets:
                    for rho in rhos:
                        spec = {layer: {m: float(rho) for m in modules} for layer in layers}
                        weights, _ = build_edit(model, spec, "kfac", eigen_dir=eigen)
                        entries[_label("kfac", layers, rho)] = dict(
                            _edited_metrics(model, weights, tensors), layers=layers, rho=rho)
            result["kfac"][image_set] = {"n_images": n, "entries": entries}
    return result
