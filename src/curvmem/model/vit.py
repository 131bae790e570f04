"""The vision model: a small timm ViT that memorizes noisy labels, its training and metrics.

The paper trains ViT-Base/16 from scratch on ImageNet with 10 % of the training labels randomised,
then removes the memorized (noisy) labels with a K-FAC edit of blocks 0 and 11. Here the same
experiment runs in a minute on a CPU:

    model    a timm VisionTransformer (depth 6, width 64, 4x4 patches -> 4 patches + CLS), trained
             from scratch until it fits the noisy labels (data: curvmem.world.images).
    metrics  memorized (noisy images predicted as their noisy label), train ground-truth accuracy
             on those images, clean training accuracy, validation accuracy; training reports them
             per epoch, `curvmem.evaluate.vit` for an edited model.

A model directory (`train-vit`) holds `model.safetensors` and `timm_config.json` (the
`timm.create_model` name and arguments).
"""

from __future__ import annotations

import math
import re
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from curvmem import io
from curvmem.presets import VISION_PRESETS
from curvmem.world.images import load_dataset

CONFIG_FILE = "timm_config.json"
WEIGHTS_FILE = "model.safetensors"

# timm's ViT family; every size argument is overridden, so nothing is downloaded.
DEFAULT_TIMM_NAME = "vit_tiny_patch16_224"


# --------------------------------------------------------------------------- model


def is_vision_model(path_or_id) -> bool:
    """True iff `path_or_id` is a directory written by `train-vit`. Never raises."""
    try:
        p = Path(str(path_or_id))
        return p.is_dir() and (p / CONFIG_FILE).is_file()
    except (OSError, ValueError):
        return False


def _create(model_name: str, kwargs: dict, pretrained_file=None):
    import timm

    if not timm.is_model(model_name):
        raise ValueError(f"'{model_name}' is not a timm model name (see timm.list_models('vit*'))")
    try:
        if pretrained_file is None:
            model = timm.create_model(model_name, pretrained=False, **kwargs)
        else:
            model = timm.create_model(model_name, pretrained=True,
                                      pretrained_cfg_overlay={"file": str(pretrained_file)},
                                      **kwargs)
    except (RuntimeError, TypeError, AssertionError) as e:  # not a ViT, bad sizes, bad weights
        raise ValueError(f"timm cannot build '{model_name}' with {kwargs}: {e}") from None
    # the architecture the fingerprint covers (curvmem.model.identity): heads, patch size and
    # depth need not show in the weights' shapes
    model.curvmem_config = {"model_name": model_name, "kwargs": kwargs}
    return model


def cached_pretrained_file(model_name: str) -> Path:
    """The locally cached hub weights of a timm model (safetensors only); no download."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    if not timm.is_model(model_name):
        raise ValueError(f"'{model_name}' is not a timm model name (see timm.list_models())")
    cfg = timm.models.get_pretrained_cfg(model_name)
    hub_id = getattr(cfg, "hf_hub_id", None)
    found = try_to_load_from_cache(hub_id, "model.safetensors") if hub_id else None
    path = Path(found) if isinstance(found, str) else None  # None or a "not cached" sentinel
    if path is None:
        raise ValueError(f"no locally cached pretrained weights for '{model_name}' (hub id "
                         f"{hub_id}); pass --pretrained FILE.safetensors or --pretrained none")
    return path


# the preset model's sizes a run may override (train-vit --embed-dim ...); e.g. a ViT-Tiny-shaped
# width 192 with 3 heads, or 2x2 patches (16 tokens on 8x8 images)
MODEL_OVERRIDES = ("embed_dim", "depth", "num_heads", "patch_size", "mlp_ratio")
# the preset recipe's settings a run may override; `decay` picks the weight-decay groups, `shift`
# and `shift_prob` the augmentation (`random_shift`)
TRAIN_OVERRIDES = ("epochs", "lr", "weight_decay", "decay", "shift", "shift_prob")
DECAY_GROUPS = ("all", "matrices")


def split_overrides(overrides) -> tuple[dict, dict]:
    """(model sizes, recipe settings) of a {name: value} override dict; None values are unset."""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(given) - set(MODEL_OVERRIDES) - set(TRAIN_OVERRIDES))
    if unknown:
        raise ValueError(f"unknown ViT settings {unknown}; known: "
                         f"{list(MODEL_OVERRIDES) + list(TRAIN_OVERRIDES)}")
    if given.get("decay", "all") not in DECAY_GROUPS:
        raise ValueError(f"--decay must be one of {DECAY_GROUPS}, got '{given['decay']}'")
    for k in ("embed_dim", "depth", "num_heads", "patch_size", "epochs"):
        if k in given and (int(given[k]) != given[k] or given[k] < 1):
            raise ValueError(f"--{k.replace('_', '-')} must be a positive integer, got {given[k]}")
    if given.get("weight_decay", 0) < 0 or given.get("lr", 1) <= 0 or given.get("mlp_ratio", 1) <= 0:
        raise ValueError("--weight-decay must be >= 0, --lr and --mlp-ratio > 0")
    if "shift" in given and (int(given["shift"]) != given["shift"] or given["shift"] < 0):
        raise ValueError(f"--shift must be a whole number of pixels >= 0, got {given['shift']}")
    if not 0.0 <= given.get("shift_prob", 0.0) <= 1.0:  # also refuses NaN
        raise ValueError(f"--shift-prob must be in [0, 1], got {given['shift_prob']}")
    return ({k: given[k] for k in MODEL_OVERRIDES if k in given},
            {k: given[k] for k in TRAIN_OVERRIDES if k in given})


def build_model(num_classes: int, image_shape, preset: str = "default", model_name=None,
                pretrained=None, seed: int = 0, sizes=None):
    """A timm VisionTransformer for images of `image_shape` (C, H, W), and its config.

    Without `model_name`: the preset's small ViT, from scratch, with `sizes` (MODEL_OVERRIDES)
    replacing the preset's. With it: that timm model, from scratch (pretrained None/'none'), from
    local hub cache ('cache') or a weights file.
    """
    from curvmem.model.adapters import adapter_for

    if preset not in VISION_PRESETS:
        raise ValueError(f"unknown --preset '{preset}'; choose from {sorted(VISION_PRESETS)}")
    c, h, w = (int(x) for x in image_shape)
    kwargs = {"img_size": [h, w], "in_chans": c, "num_classes": int(num_classes)}
    if model_name is None:
        if pretrained not in (None, "none"):
            raise ValueError("--pretrained needs --model-name (the preset ViT trains from scratch)")
        model_name = DEFAULT_TIMM_NAME
        kwargs.update(VISION_PRESETS[preset]["model"])
        kwargs.update(sizes or {})
        if kwargs["embed_dim"] % kwargs["num_heads"]:
            raise ValueError(f"width {kwargs['embed_dim']} is not divisible into "
                             f"{kwargs['num_heads']} heads")
    elif sizes:
        raise ValueError(f"{sorted(sizes)} resize the preset ViT; with --model-name the timm "
                         "model's own sizes are used")
    pretrained_file = None
    if pretrained == "cache":
        pretrained_file = cached_pretrained_file(model_name)
    elif pretrained not in (None, "none"):
        pretrained_file = Path(pretrained)
        if not pretrained_file.is_file() or pretrained_file.suffix != ".safetensors":
            raise ValueError(f"--pretrained {pretrained}: no such .safetensors file (curvmem "
                             "reads weights from safetensors only)")
    torch.manual_seed(seed)
    model = _create(model_name, kwargs, pretrained_file)
    if pretrained_file is not None:  # timm loads leniently: refuse a file that misses weights
        from safetensors import safe_open

        with safe_open(str(pretrained_file), framework="pt") as f:
            stored = set(f.keys())
        missing = [k for k in model.state_dict() if k not in stored and not k.startswith("head")]
        if missing:
            raise ValueError(f"--pretrained {pretrained_file}: lacks {len(missing)} weights of "
                             f"'{model_name}' (e.g. {missing[:3]}); is it another model's file?")
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", (1, 1))
    if h % patch[0] or w % patch[1]:
        raise ValueError(f"images of {h}x{w} are not divisible into {patch[0]}x{patch[1]} "
                         f"patches of '{model_name}'")
    if adapter_for(model).family != "timm-vit" or not hasattr(model, "cls_token") \
            or model.cls_token is None:
        raise ValueError(f"'{model_name}' is not a ViT with a CLS token and blocks.N.mlp.fc1/fc2")
    config = {"model_name": model_name, "kwargs": kwargs,
              "pretrained": str(pretrained_file) if pretrained_file else None}
    return model, config


def load_model(path) -> torch.nn.Module:
    """The ViT saved by `train-vit` in `path` (eval mode)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not is_vision_model(path):
        raise ValueError(f"{path}: not a curvmem vision model directory (no {CONFIG_FILE})")
    cfg = io.read_json(path / CONFIG_FILE)
    if not (path / WEIGHTS_FILE).is_file():
        raise ValueError(f"{path}: no {WEIGHTS_FILE}")
    io.verify_checksum(path / WEIGHTS_FILE, "`curvmem train-vit` (workflow: `snakemake`, rule "
                       "train_vit)", required=False)
    model = _create(cfg["model_name"], cfg["kwargs"])
    try:
        model.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
    except Exception as e:  # noqa: BLE001 (safetensors and torch raise several types)
        raise io.StoreError(f"{path / WEIGHTS_FILE}: not this model's weights ({e})") from None
    io.note_model_ready()
    return model.eval()


# --------------------------------------------------------------------------- training


@contextmanager
def _threads(n: int):
    """Tiny models train fastest on one thread (and leave the other core to the rest)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@torch.no_grad()
def predict(model, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    model.eval()
    return torch.cat([model(images[i:i + batch_size]).argmax(-1)
                      for i in range(0, images.shape[0], batch_size)]) if images.shape[0] else \
        torch.zeros(0, dtype=torch.long)


def random_shift(x: torch.Tensor, shift: int, prob: float, g: torch.Generator) -> torch.Tensor:
    """Translate each image, with probability `prob`, by up to `shift` pixels, filling with the
    background (the batch's smallest value): the random-crop augmentation of a ViT recipe,
    scaled to 8x8 images."""
    if shift == 0 or prob == 0:
        return x
    h, w = x.shape[-2:]
    padded = F.pad(x, (shift,) * 4, value=float(x.min()))
    offsets = torch.randint(0, 2 * shift + 1, (2, x.shape[0]), generator=g)
    keep = torch.rand(x.shape[0], generator=g) >= prob
    offsets[:, keep] = shift  # the unshifted crop
    dy, dx = offsets.tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
                        for i in range(x.shape[0])])


# Fisher image sets with augmented copies: "SET+augK" adds K shifted copies of every image of SET
# (shifts of up to 1 pixel), "SET+augKsS" of up to S pixels (curvmem collect --images)
FISHER_AUGMENT = re.compile(r"(?P<set>[a-z]+)(?:\+aug(?P<copies>[0-9]+)(?:s(?P<shift>[0-9]+))?)?")


def fisher_image_set(spec: str, base_sets) -> tuple[str, int, int]:
    """(base set, copies, shift) of a Fisher image set name: one of `base_sets` (e.g. `train`),
    or one with augmented copies: `train+aug4` (4 copies shifted by up to 1 pixel),
    `heldout+aug4s2` (up to 2 pixels). Raises ValueError naming the accepted forms."""
    found = FISHER_AUGMENT.fullmatch(str(spec))
    if found is None or found["set"] not in base_sets or found["copies"] == "0" \
            or (found["copies"] and int(found["shift"] or 1) < 1):
        raise ValueError(f"Fisher image set '{spec}': expected one of {list(base_sets)}, "
                         "optionally with augmented copies: SET+augK (K >= 1 copies of each "
                         "image shifted by up to 1 pixel) or SET+augKsS (up to S >= 1 pixels)")
    copies = int(found["copies"] or 0)
    return found["set"], copies, int(found["shift"] or 1) if copies else 0


def augmented_copies(images: torch.Tensor, labels: torch.Tensor, copies: int, shift: int,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The images followed by `copies` seeded copies of all of them, each image translated by
    up to `shift` pixels (`random_shift`; flips would change a digit), labels repeated: the
    Fisher on augmented data. One generator for the whole set, so a shard of a collection
    sees the copies the whole run sees. `copies` 0 returns the inputs."""
    if copies < 0 or shift < 0:
        raise ValueError(f"augmented copies need copies >= 0 and shift >= 0, got {copies}, "
                         f"{shift}")
    if copies == 0:
        return images, labels
    g = torch.Generator().manual_seed(int(seed))
    shifted = [random_shift(images, shift, 1.0, g) for _ in range(copies)]
    return torch.cat([images, *shifted]), labels.repeat(copies + 1)


def decays(name: str, param: torch.nn.Parameter, model) -> bool:
    """Whether weight decay applies to a parameter in the `matrices` groups: weight matrices
    (linear and patch-projection weights) only; norms, biases, position embeddings and the CLS
    token are not decayed (the usual ViT recipe; timm's `no_weight_decay()` names the last two)."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    return param.ndim >= 2 and name not in skip


def adamw(model, lr: float, weight_decay: float, decay: str = "all") -> torch.optim.AdamW:
    """AdamW with weight decay on every parameter (`all`, the presets' recipe) or on the weight
    matrices only (`matrices`: two parameter groups, see `decays`)."""
    if decay == "all":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    if decay != "matrices":
        raise ValueError(f"--decay must be one of {DECAY_GROUPS}, got '{decay}'")
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return torch.optim.AdamW(
        [{"params": [p for n, p in params if decays(n, p, model)], "weight_decay": weight_decay},
         {"params": [p for n, p in params if not decays(n, p, model)], "weight_decay": 0.0}],
        lr=lr)


def train(model, tensors: dict, epochs: int, batch_size: int, lr: float, weight_decay: float,
          warmup_fraction: float = 0.1, shift: int = 0, shift_prob: float = 1.0, seed: int = 0,
          threads: int = 1, decay: str = "all",
          progress: bool = True) -> list[dict]:
    """AdamW (`adamw`: decay on all parameters or on weight matrices only) with linear warm-up
    and cosine decay on the NOISY training labels, optional random shifts, no dropout. Returns
    per-epoch history."""
    if epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {epochs}")
    x, y = tensors["train_images"], tensors["train_labels"]
    n = x.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    warmup = max(1, int(warmup_fraction * total))
    opt = adamw(model, lr, weight_decay, decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warmup, 0.5 * (
        1 + math.cos(math.pi * min(1.0, (s - warmup) / max(1, total - warmup))))))
    g = torch.Generator().manual_seed(seed)
    history = []
    with _threads(threads):
        bar = tqdm(range(epochs), desc="train-vit", unit="epoch", disable=not progress,
                   dynamic_ncols=True)
        for epoch in bar:
            model.train()
            perm = torch.randperm(n, generator=g)
            total_loss = 0.0
            for i in range(0, n, batch_size):
                idx = perm[i:i + batch_size]
                loss = F.cross_entropy(model(random_shift(x[idx], shift, shift_prob, g)), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total_loss += loss.item() * idx.shape[0]
            row = {"epoch": epoch + 1, "loss": total_loss / n}
            if epoch % 10 == 9 or epoch == epochs - 1:  # metrics cost a pass; not every epoch
                row.update(metrics(model, tensors))
                bar.set_postfix(loss=f"{row['loss']:.3f}", memorized=row["memorized"],
                                val=row["val_acc"])
            history.append(row)
    model.eval()
    return history


def train_vit(data_path, out, preset: str = "default", seed: int = 0, epochs=None,
              model_name=None, pretrained=None, progress: bool = True, overrides=None) -> dict:
    """`curvmem train-vit`: build, train, save (model.safetensors + timm_config.json).

    `overrides` {name: value} replaces preset settings: model sizes (MODEL_OVERRIDES) and recipe
    settings (TRAIN_OVERRIDES, e.g. weight_decay, decay='matrices'); only given ones are
    recorded beyond the preset's."""
    from safetensors.torch import save_file

    sizes, recipe_overrides = split_overrides(overrides)
    if preset not in VISION_PRESETS:
        raise ValueError(f"unknown --preset '{preset}'; choose from {sorted(VISION_PRESETS)}")
    recipe = dict(VISION_PRESETS[preset]["train"], **recipe_overrides)
    if epochs is not None:
        recipe["epochs"] = int(epochs)
    if recipe["epochs"] < 1:
        raise ValueError(f"--epochs must be >= 1, got {recipe['epochs']}")
    if (recipe["shift"] > 0) != (recipe["shift_prob"] > 0) and \
            {"shift", "shift_prob"} & set(recipe_overrides):
        raise ValueError(f"--shift {recipe['shift']} with --shift-prob {recipe['shift_prob']} "
                         "augments nothing: give both (e.g. --shift 1 --shift-prob 0.5)")
    tensors, data_cfg = load_dataset(data_path)
    model, cfg = build_model(data_cfg["num_classes"], tensors["train_images"].shape[1:], preset,
                             model_name, pretrained, seed, sizes)
    io.note_model_ready()
    t0 = time.perf_counter()
    history = train(model, tensors, seed=seed, progress=progress, **recipe)
    final = metrics(model, tensors)
    seconds = round(time.perf_counter() - t0, 2)  # a cost: beside the model, not in it
    cfg.update({"preset": preset, "seed": seed, "train": recipe, "data": str(data_path),
                "data_config": data_cfg, "final_metrics": final, "history": history})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with io.atomic_artifact(out / WEIGHTS_FILE) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    io.write_json(out / CONFIG_FILE, cfg)  # last: its presence marks a complete model dir
    io.write_cost(out, {"seconds": seconds})
    return {**cfg, "train_seconds": seconds}


# --------------------------------------------------------------------------- metrics


def _frac(hits: torch.Tensor):
    return float(hits.float().mean()) if hits.numel() else None


def metrics_from_predictions(train_pred, train_labels, train_true_labels, train_noisy, val_pred,
                             val_labels) -> dict:
    """The four Table 2 fractions (None where a group is empty) and the group sizes.

    memorized      noisy-labelled training images predicted as their noisy label
    train_gt_acc   the same images predicted as their true label
    clean_train    clean training images predicted as their (true) label
    val_acc        validation images predicted as their label
    """
    noisy = train_noisy.bool()
    return {
        "memorized": _frac(train_pred[noisy] == train_labels[noisy]),
        "train_gt_acc": _frac(train_pred[noisy] == train_true_labels[noisy]),
        "clean_train_acc": _frac(train_pred[~noisy] == train_labels[~noisy]),
        "val_acc": _frac(val_pred == val_labels),
        "n_noisy": int(noisy.sum()), "n_clean_train": int((~noisy).sum()),
        "n_val": int(val_labels.shape[0]),
    }


def metrics(model, tensors: dict) -> dict:
    return metrics_from_predictions(
        predict(model, tensors["train_images"]), tensors["train_labels"],
        tensors["train_true_labels"], tensors["train_noisy"],
        predict(model, tensors["val_images"]), tensors["val_labels"])
