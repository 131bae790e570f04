"""One cell of the ViT study (docs/vision.md, "The study"): a trained ViT, its base metrics and
the metrics of every K-FAC edit (per Fisher image set and application position) and SVD edit
of a sweep; and the experiments that decide Table 2 (docs/vision.md, "Deciding Table 2"): the
oracle fine-tune of the edited weights, block knockouts and linear probes.

The workflow trains one model per study setting (`curvmem train-vit`) and runs this once per
model (`curvmem vit-study-cell`): factors, eigenbases and edits stay in memory or a scratch
directory, because a study has hundreds of edits and a process per edit would spend most of its
time starting. No edit is selected here; `curvmem.report.vit_study` applies the training-only
selection rule to the cells.
"""

from __future__ import annotations

import copy
import json
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from curvmem import io
from curvmem.edit.build import build_edit
from curvmem.eigen import eigen_layer
from curvmem.evaluate.vit import check_compatible
from curvmem.factors import collect_layer_files
from curvmem.model import vit
from curvmem.schema import layer_path, read_layer
from curvmem.world.images import IMAGE_SETS, load_dataset, unmarked_train_images

# where an edit applies: every token (`all`, the weights replaced) or the CLS token only (`cls`:
# the patch tokens keep W, as the CLS-position factors describe only the CLS token)
POSITIONS = ("all", "cls")
EXPERIMENTS = ("oracle", "knockout", "probe")


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
            "epochs": recipe["epochs"], "lr": recipe["lr"], "seed": cfg["seed"],
            "shift": recipe.get("shift", 0), "shift_prob": recipe.get("shift_prob", 0.0)}


def model_train_seconds(model_dir) -> float | None:
    """How long the model took to train: the cost file beside its directory, else the
    `train_seconds` an older train-vit wrote into its timm_config.json (a cost, so no part of
    a cell's result)."""
    measured = io.read_cost(model_dir)
    if measured is not None and measured.get("seconds") is not None:
        return measured["seconds"]
    return io.read_json(Path(model_dir) / vit.CONFIG_FILE).get("train_seconds")


def selection_mask(train_noisy: torch.Tensor, fraction, seed: int = 0) -> torch.Tensor | None:
    """The noisy training images of the selection half (a seeded draw of round(fraction x
    n_noisy) of them); the other noisy images are the reported half. None without a fraction."""
    if fraction is None:
        return None
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"--selection-fraction must be in (0, 1), got {fraction}")
    noisy = torch.nonzero(train_noisy.bool()).flatten()
    g = torch.Generator().manual_seed(int(seed))
    chosen = noisy[torch.randperm(noisy.numel(), generator=g)[:round(fraction * noisy.numel())]]
    mask = torch.zeros_like(train_noisy, dtype=torch.bool)
    mask[chosen] = True
    return mask


def split_metrics(model, tensors: dict, select=None, train_images=None) -> dict:
    """`vit.metrics`, and with a selection mask (`selection_mask`) the memorized and train
    ground-truth fractions of its selection half (`*_select`) and of the other noisy images
    (`*_report`). `train_images` replaces the stored ones (e.g. with the watermarks taken off)."""
    train_pred = vit.predict(model, tensors["train_images"] if train_images is None
                             else train_images)
    out = vit.metrics_from_predictions(
        train_pred, tensors["train_labels"], tensors["train_true_labels"],
        tensors["train_noisy"], vit.predict(model, tensors["val_images"]), tensors["val_labels"])
    if select is not None:
        report = tensors["train_noisy"].bool() & ~select
        for half, mask in (("select", select), ("report", report)):
            hits = train_pred[mask]
            out[f"memorized_{half}"] = vit._frac(hits == tensors["train_labels"][mask])
            out[f"train_gt_acc_{half}"] = vit._frac(hits == tensors["train_true_labels"][mask])
            out[f"n_{half}"] = int(mask.sum())
    return out


@contextmanager
def edited(model, weights: dict, position: str = "all"):
    """The model with `weights` {param_name: tensor} in place of its own: at every token
    (`all`: the weights are swapped, then put back) or at the CLS token only (`cls`: a forward
    hook recomputes position 0 of each edited linear module with the edited weight)."""
    if position not in POSITIONS:
        raise ValueError(f"edit position must be one of {POSITIONS}, got '{position}'")
    if position == "all":
        params = dict(model.named_parameters())
        saved = {n: params[n].detach().clone() for n in weights}
        try:
            with torch.no_grad():
                for n, t in weights.items():
                    params[n].copy_(t.to(params[n].dtype))
            yield model
        finally:
            with torch.no_grad():
                for n, t in saved.items():
                    params[n].copy_(t)
        return
    handles = []
    try:
        for name, weight in weights.items():
            module_name, _, leaf = name.rpartition(".")
            module = model.get_submodule(module_name)
            if leaf != "weight" or not isinstance(module, torch.nn.Linear):
                raise ValueError(f"a CLS-only edit needs linear weights, got '{name}'")

            def at_cls(mod, args, out, weight=weight):
                out = out.clone()
                out[:, 0] = F.linear(args[0][:, 0], weight.to(out.dtype), mod.bias)
                return out

            handles.append(module.register_forward_hook(at_cls))
        yield model
    finally:
        for h in handles:
            h.remove()


def _label(method: str, layers: list[int], value: float, position: str = "all") -> str:
    return (f"{method}-L{'+'.join(map(str, layers))}-"
            f"{'rho' if method == 'kfac' else 'drop'}{value:g}"
            + ("" if position == "all" else f"-{position}"))


def data_role(data_cfg: dict) -> dict:
    """What a cell's dataset is: its noise, watermark and source (the report's roles: a
    noise-free model is the validation ceiling, a marked one the positive control)."""
    return {"source": data_cfg.get("source", "digits"), "noise": data_cfg.get("noise"),
            "watermark": data_cfg.get("watermark", 0.0), "n_noisy": data_cfg.get("n_noisy")}


def run_cell(model_dir, data_path, *, image_sets=("train",), kfac_layers=((0,), (-1,), (0, -1)),
             rhos=(0.6, 0.75, 0.9), svd_layers=((0, -1),), svd_drops=(0.1, 0.25, 0.5),
             modules=("mlp.fc1", "mlp.fc2"), fisher: str = "sampled", seed: int = 0,
             batch_size: int = 128, positions=("all",), selection_fraction=None,
             selection_seed: int = 0, plant=None, augment_seed: int = 0) -> dict:
    """Base metrics, SVD edits (layers x drop) and, per Fisher image set (IMAGE_SETS, or one with
    augmented copies: `train+aug4`, `vit.fisher_image_set`, seeded by `augment_seed`), K-FAC
    edits (layers x rho x position) with factors from all images of that set, at the CLS
    position; each set's `fisher_ess` holds its effective sample size per block and module
    (`curvmem.factors.mass_summary`). With `selection_fraction` every entry also has the selection and reported halves'
    metrics (`split_metrics`). A dataset without noisy images (a noise-free model: the
    validation ceiling) gets its base metrics only; a watermarked one also the base metrics
    with the marks taken off (`base_unmarked`: how much of the memorization the marks carry).

    With `plant` {layers, modules, epochs, lr[, seed]} the model (e.g. a noise-free one) first
    gets the dataset's training labels (noisy, and marked on a watermarked dataset) fitted
    into those weights alone (`tune_weights`), and the cell measures the tuned model: a
    memorization planted in exactly the weights the edits change (`planted` in the result)."""
    if plant is not None:
        return _planted_cell(model_dir, data_path, plant, dict(
            image_sets=image_sets, kfac_layers=kfac_layers, rhos=rhos, svd_layers=svd_layers,
            svd_drops=svd_drops, modules=modules, fisher=fisher, seed=seed,
            batch_size=batch_size, positions=positions, selection_fraction=selection_fraction,
            selection_seed=selection_seed, augment_seed=augment_seed))
    if not image_sets:
        raise ValueError(f"no Fisher image sets (some of {IMAGE_SETS}, optionally +augK)")
    base_sets = {spec: vit.fisher_image_set(spec, IMAGE_SETS)[0] for spec in image_sets}
    bad = [p for p in positions if p not in POSITIONS]
    if bad or not positions:
        raise ValueError(f"edit positions must be some of {POSITIONS}, got {list(positions)}")
    if selection_fraction is not None and not 0.0 < selection_fraction < 1.0:
        raise ValueError(f"--selection-fraction must be in (0, 1), got {selection_fraction}")
    tensors, data_cfg = load_dataset(data_path)
    if "heldout" in base_sets.values() and "heldout_images" not in tensors:
        raise ValueError(f"{data_path}: no held-out images for the 'heldout' Fisher (make the "
                         "dataset with curvmem vision-data --heldout-fraction F)")
    model = vit.load_model(model_dir)
    check_compatible(model, tensors, data_cfg, str(data_path))
    depth = len(model.blocks)
    kfac_sets, svd_sets = resolve_layers(kfac_layers, depth), resolve_layers(svd_layers, depth)
    modules = list(modules)
    has_noisy = bool(tensors["train_noisy"].any())
    select = selection_mask(tensors["train_noisy"], selection_fraction, selection_seed) \
        if has_noisy else None
    n_images = {"train": tensors["train_images"].shape[0],
                "clean": int((~tensors["train_noisy"]).sum()),
                "heldout": tensors["heldout_images"].shape[0] if "heldout_images" in tensors
                else 0}

    def measure(weights, position="all"):
        with edited(model, weights, position):
            return split_metrics(model, tensors, select)

    with vit._threads(1):
        result = {"model_dir": str(model_dir), "data": str(data_path),
                  "data_config": data_role(data_cfg), "settings": model_settings(model_dir),
                  "base": split_metrics(model, tensors, select), "svd": {}, "kfac": {}}
        if selection_fraction is not None:
            result["selection"] = {"fraction": selection_fraction, "seed": selection_seed}
        if data_cfg.get("watermark"):
            result["base_unmarked"] = split_metrics(model, tensors, select,
                                                    unmarked_train_images(tensors, data_cfg))
        if not has_noisy:
            return result
        for layers in svd_sets:
            for drop in svd_drops:
                spec = {layer: {m: float(drop) for m in modules} for layer in layers}
                weights, _ = build_edit(model, spec, "svd")
                result["svd"][_label("svd", layers, drop)] = dict(
                    measure(weights), layers=layers, drop=drop)
        all_layers = sorted({x for s in kfac_sets for x in s})
        for image_set in image_sets:
            with tempfile.TemporaryDirectory(prefix="vit-study-") as scratch:
                factors, eigen = Path(scratch) / "factors", Path(scratch) / "eigen"
                n, _ = collect_layer_files(model_dir, data_path, all_layers, factors,
                                           tokens=n_images[base_sets[image_set]],
                                           modules=modules, batch_size=batch_size,
                                           fisher=fisher, seed=seed, device="cpu",
                                           image_set=image_set, augment_seed=augment_seed)
                ess = {str(layer): fisher_ess(layer_path(factors, layer)) for layer in all_layers}
                eigen.mkdir()
                for layer in all_layers:
                    eigen_layer(layer_path(factors, layer), layer_path(eigen, layer))
                entries = {}
                for layers in kfac_sets:
                    for rho in rhos:
                        spec = {layer: {m: float(rho) for m in modules} for layer in layers}
                        weights, _ = build_edit(model, spec, "kfac", eigen_dir=eigen)
                        for position in positions:
                            entry = dict(measure(weights, position), layers=layers, rho=rho)
                            if position != "all":
                                entry["position"] = position
                            entries[_label("kfac", layers, rho, position)] = entry
            result["kfac"][image_set] = {"n_images": n, "fisher_ess": ess, "entries": entries}
    return result


def fisher_ess(factors_file) -> dict:
    """{module: {A, G, W}}: the effective sample sizes a ViT factor file records (how many of
    its images carry trace(A), trace(G) and the weight-gradient trace)."""
    attrs = read_layer(factors_file, "factors").attrs
    if "effective_sample_size" not in attrs:
        raise ValueError(f"{factors_file}: records no effective sample size (collected by an "
                         "older curvmem, or not a ViT's factors)")
    return {name: {side: round(v["ess"], 2) for side, v in sides.items()}
            for name, sides in json.loads(attrs["effective_sample_size"]).items()}


def _planted_cell(model_dir, data_path, plant: dict, cell_options: dict) -> dict:
    """`run_cell` on a copy of the model whose `plant` weights were tuned to the data's labels."""
    from safetensors.torch import save_file

    unknown = sorted(set(plant) - {"layers", "modules", "epochs", "lr", "seed"})
    if unknown:
        raise ValueError(f"unknown plant settings {unknown}")
    tensors, data_cfg = load_dataset(data_path)
    if not tensors["train_noisy"].any():
        raise ValueError(f"{data_path}: no noisy training labels to plant")
    model = vit.load_model(model_dir)
    check_compatible(model, tensors, data_cfg, str(data_path))
    layers = resolve_layers([plant.get("layers", (0, -1))], len(model.blocks))[0]
    modules = list(plant.get("modules", ("mlp.fc1", "mlp.fc2")))
    with vit._threads(1):
        torch.manual_seed(plant.get("seed", 0))
        tuned, history = tune_weights(model, tensors, layers, modules,
                                      epochs=int(plant.get("epochs", 20)),
                                      lr=float(plant.get("lr", 1e-3)), labels="train_labels",
                                      seed=int(plant.get("seed", 0)))
    with tempfile.TemporaryDirectory(prefix="vit-planted-") as scratch:
        with torch.no_grad():
            save_file({k: v.contiguous() for k, v in tuned.state_dict().items()},
                      str(Path(scratch) / vit.WEIGHTS_FILE))
        io.write_json(Path(scratch) / vit.CONFIG_FILE,
                      io.read_json(Path(model_dir) / vit.CONFIG_FILE))
        result = run_cell(scratch, data_path, **cell_options)
    result["model_dir"] = str(model_dir)
    result["planted"] = {"layers": layers, "modules": modules, "from_model": str(model_dir),
                         "last": history[-1], "first": history[0]}
    return result


# --------------------------------------------------------------------------- deciding Table 2


def _setup(model_dir, data_path, selection_fraction, selection_seed):
    tensors, data_cfg = load_dataset(data_path)
    if not tensors["train_noisy"].any():
        raise ValueError(f"{data_path}: no noisy training images; these experiments need some")
    model = vit.load_model(model_dir)
    check_compatible(model, tensors, data_cfg, str(data_path))
    select = selection_mask(tensors["train_noisy"], selection_fraction, selection_seed)
    head = {"model_dir": str(model_dir), "data": str(data_path), "data_config": data_role(data_cfg),
            "settings": model_settings(model_dir),
            "base": split_metrics(model, tensors, select)}
    if selection_fraction is not None:
        head["selection"] = {"fraction": selection_fraction, "seed": selection_seed}
    return model, tensors, select, head


def tune_weights(model, tensors: dict, layers, modules, *, epochs: int, lr: float,
                 labels: str = "train_true_labels", batch_size: int = 64, seed: int = 0,
                 select=None) -> tuple[torch.nn.Module, list[dict]]:
    """Fine-tune only the weights of `modules` in `layers` of a copy of `model` on every
    training image with its `labels` (`train_true_labels`: the oracle, the noisy images' true
    labels and the clean images' ordinary loss; `train_labels`: the labels as trained, which
    plants the noisy labels in these weights alone): AdamW at a constant `lr`, no weight decay.
    Returns the tuned copy and the metrics before (epoch 0) and after every epoch."""
    if epochs < 1 or lr <= 0:
        raise ValueError(f"tuning needs epochs >= 1 and lr > 0, got {epochs}, {lr}")
    tuned = copy.deepcopy(model)
    for p in tuned.parameters():
        p.requires_grad_(False)
    params = []
    for layer in layers:
        for m in modules:
            p = tuned.get_parameter(f"blocks.{layer}.{m}.weight")
            p.requires_grad_(True)
            params.append(p)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    x, y = tensors["train_images"], tensors[labels]
    g = torch.Generator().manual_seed(seed)
    history = [dict(split_metrics(tuned, tensors, select), epoch=0)]
    for epoch in range(1, epochs + 1):
        tuned.train()
        perm = torch.randperm(x.shape[0], generator=g)
        total = 0.0
        for i in range(0, x.shape[0], batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(tuned(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * idx.shape[0]
        tuned.eval()
        history.append(dict(split_metrics(tuned, tensors, select), epoch=epoch,
                            loss=total / x.shape[0]))
    return tuned, history


@contextmanager
def knocked_out(model, block: int, part: str):
    """The model with block `block`'s attention (`attn`) or MLP (`mlp`) output zeroed, so that
    branch adds nothing to the residual stream."""
    if part not in ("attn", "mlp"):
        raise ValueError(f"knockout part must be attn or mlp, got '{part}'")
    handle = getattr(model.blocks[block], part).register_forward_hook(
        lambda mod, args, out: torch.zeros_like(out))
    try:
        yield model
    finally:
        handle.remove()


@torch.no_grad()
def cls_features(model, images: torch.Tensor, batch_size: int = 512) -> dict:
    """{site: [N, width] float64}: the residual stream at the CLS token after each block
    (`block_i`) and the head's input (`head_input`: the final norm's output, pre-logits)."""
    depth = len(model.blocks)
    out = {f"block_{i}": [] for i in range(depth)}
    out["head_input"] = []
    grabbed = {}
    handles = [b.register_forward_hook(lambda mod, args, o, i=i: grabbed.__setitem__(i, o[:, 0]))
               for i, b in enumerate(model.blocks)]
    try:
        model.eval()
        for i in range(0, images.shape[0], batch_size):
            feats = model.forward_features(images[i:i + batch_size])
            out["head_input"].append(model.forward_head(feats, pre_logits=True))
            for b in range(depth):
                out[f"block_{b}"].append(grabbed[b])
    finally:
        for h in handles:
            h.remove()
    return {k: torch.cat(v).double().numpy() for k, v in out.items()}


def linear_probes(model, tensors: dict, select=None, c: float = 1.0) -> dict:
    """Per CLS feature site (`cls_features`): a multinomial logistic regression fitted on the
    CLEAN training images (standardized with their statistics) and its accuracy on the noisy
    images' true labels (`noisy_true_acc`; `_report` on the reported half), how often it gives
    their noisy label (`noisy_label_rate`), and on validation and clean training images. Does
    the model still carry the true class of the images it memorized?"""
    from sklearn.linear_model import LogisticRegression

    noisy = tensors["train_noisy"].bool().numpy()
    true, given = tensors["train_true_labels"].numpy(), tensors["train_labels"].numpy()
    train = cls_features(model, tensors["train_images"])
    val = cls_features(model, tensors["val_images"])
    report = None if select is None else (noisy & ~select.numpy())
    out = {}
    for site in train:
        mean = train[site][~noisy].mean(0)
        std = train[site][~noisy].std(0) + 1e-8
        probe = LogisticRegression(C=c, max_iter=2000)
        probe.fit((train[site][~noisy] - mean) / std, true[~noisy])
        pred = probe.predict((train[site] - mean) / std)
        row = {"noisy_true_acc": float(np.mean(pred[noisy] == true[noisy])),
               "noisy_label_rate": float(np.mean(pred[noisy] == given[noisy])),
               "clean_train_acc": float(np.mean(pred[~noisy] == true[~noisy])),
               "val_acc": float(np.mean(probe.predict((val[site] - mean) / std)
                                        == tensors["val_labels"].numpy()))}
        if report is not None:
            row["noisy_true_acc_report"] = float(np.mean(pred[report] == true[report]))
        out[site] = row
    return out


def run_experiment(name: str, model_dir, data_path, *, layers=(0, -1),
                   modules=("mlp.fc1", "mlp.fc2"), epochs: int = 20, lr: float = 1e-3,
                   batch_size: int = 64, seed: int = 0, selection_fraction=None,
                   selection_seed: int = 0) -> dict:
    """One experiment of "Deciding Table 2" on a trained model: `oracle` (`tune_weights` of
    `modules` in `layers`), `knockout` (each block's attention and MLP zeroed in turn) or
    `probe` (`linear_probes`). The result holds the base metrics beside the experiment's."""
    if name not in EXPERIMENTS:
        raise ValueError(f"experiment must be one of {EXPERIMENTS}, got '{name}'")
    model, tensors, select, result = _setup(model_dir, data_path, selection_fraction,
                                            selection_seed)
    result["experiment"] = name
    with vit._threads(1):
        if name == "oracle":
            resolved = resolve_layers([layers], len(model.blocks))[0]
            torch.manual_seed(seed)
            _, history = tune_weights(model, tensors, resolved, list(modules), epochs=epochs,
                                      lr=lr, batch_size=batch_size, seed=seed, select=select)
            result.update(layers=resolved, modules=list(modules), epochs=epochs, lr=lr,
                          history=history)
        elif name == "knockout":
            rows = []
            for block in range(len(model.blocks)):
                for part in ("attn", "mlp"):
                    with knocked_out(model, block, part):
                        rows.append(dict(split_metrics(model, tensors, select), block=block,
                                         part=part))
            result["knockouts"] = rows
        else:
            result["probes"] = linear_probes(model, tensors, select)
    return result
