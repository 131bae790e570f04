"""Vision: real digits with noisy labels, a small timm ViT that memorizes them, and Table 2.

The paper trains ViT-Base/16 from scratch on ImageNet with 10 % of the training labels randomised,
then removes the memorized (noisy) labels with a K-FAC edit of blocks 0 and 11. Here the same
experiment runs in a minute on a CPU:

    data     sklearn's 1,797 real 8x8 digit images (10 classes); a seeded train/validation split;
             a seeded fraction of training labels replaced by a different random class.
    model    a timm VisionTransformer (depth 6, width 64, 4x4 patches -> 4 patches + CLS), trained
             from scratch until it fits the noisy labels.
    metrics  memorized (noisy images predicted as their noisy label), train ground-truth accuracy
             on those images, clean training accuracy, validation accuracy.
    report   the paper's Table 2 (Baseline / SVD / K-FAC) with the paper's numbers beside ours.

A dataset file (`vision-data`) is a safetensors file holding standardized images, so a model
reads `load_images(...)` as is; a model directory (`train-vit`) holds `model.safetensors` and
`timm_config.json` (the `timm.create_model` name and arguments).
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from curvmem import store
from curvmem.presets import VISION_PRESETS

CONFIG_FILE = "timm_config.json"
WEIGHTS_FILE = "model.safetensors"
DATA_KEYS = ("train_images", "train_labels", "train_true_labels", "train_noisy", "train_index",
             "val_images", "val_labels", "val_index")

# The paper's Table 2 (ViT-Base/16, ImageNet, 10 % noisy labels), in percent.
PAPER_TABLE2 = {
    "Baseline": {"memorized": 81.6, "train_gt_acc": 10.5, "val_acc": 67.0},
    "SVD": {"memorized": 3.5, "train_gt_acc": 58.9, "val_acc": 67.8},
    "K-FAC": {"memorized": 3.5, "train_gt_acc": 66.5, "val_acc": 71.7},
}

# timm's ViT family; every size argument is overridden, so nothing is downloaded.
DEFAULT_TIMM_NAME = "vit_tiny_patch16_224"


# --------------------------------------------------------------------------- data sources


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [N,1,8,8] in [0,1]
    return images, torch.tensor(d.target, dtype=torch.long), [str(n) for n in d.target_names]


def _imagefolder(root: Path, image_size=None):
    """PATH/<class>/<image>: class names are the sorted subfolder names (torchvision's rule).
    With `image_size`, every image is resized to image_size x image_size (bicubic)."""
    from PIL import Image

    if not root.is_dir():
        raise ValueError(f"imagefolder:{root}: no such directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    suffixes = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
    images, labels = [], []
    for label, name in enumerate(classes):
        for f in sorted((root / name).iterdir()):
            if f.suffix.lower() in suffixes:
                with Image.open(f) as im:
                    im = im.convert("RGB")
                    if image_size:
                        im = im.resize((image_size, image_size), Image.BICUBIC)
                    arr = np.asarray(im, dtype=np.float32) / 255.0
                images.append(torch.from_numpy(arr).permute(2, 0, 1))
                labels.append(label)
    if len(classes) < 2 or not images:
        raise ValueError(f"imagefolder:{root}: need at least 2 class subfolders holding images "
                         f"(found {len(classes)} folders, {len(images)} images)")
    sizes = {tuple(t.shape) for t in images}
    if len(sizes) > 1:
        raise ValueError(f"imagefolder:{root}: images have different sizes {sorted(sizes)}; "
                         "pass --image-size N to resize them")
    return torch.stack(images), torch.tensor(labels, dtype=torch.long), classes


CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]


def _cifar10(root: Path):
    """The CIFAR-10 *binary* version (cifar-10-batches-bin/*.bin: 1 label byte + 3072 pixel
    bytes per record). The python version is pickled, and curvmem never unpickles."""
    folder = root / "cifar-10-batches-bin" if (root / "cifar-10-batches-bin").is_dir() else root
    files = sorted(folder.glob("data_batch_*.bin")) + sorted(folder.glob("test_batch.bin"))
    if not files:
        hint = (" (this is the pickled python version; download the binary version instead)"
                if (root / "cifar-10-batches-py").exists() else "")
        raise ValueError(f"cifar10:{root}: no data_batch_*.bin / test_batch.bin files{hint}")
    raw = np.concatenate([np.fromfile(f, dtype=np.uint8) for f in files])
    if raw.size % 3073:
        raise ValueError(f"cifar10:{root}: file sizes are not a multiple of 3073-byte records")
    raw = raw.reshape(-1, 3073)
    labels = torch.from_numpy(raw[:, 0].astype(np.int64))
    if int(labels.max()) > 9:
        raise ValueError(f"cifar10:{root}: label byte > 9; not CIFAR-10 binary records")
    images = torch.from_numpy(raw[:, 1:].astype(np.float32) / 255.0).reshape(-1, 3, 32, 32)
    return images, labels, CIFAR_CLASSES


def load_source(source: str = "digits", image_size=None):
    """'digits' | 'imagefolder:PATH' | 'cifar10:PATH' -> (images [N,C,H,W] in [0,1], labels,
    class names). Nothing is downloaded. `image_size` resizes image-folder images."""
    kind, _, path = str(source).partition(":")
    if image_size is not None and (kind != "imagefolder" or image_size < 1):
        raise ValueError("--image-size must be a positive size and is for imagefolder:PATH only")
    if kind == "digits" and not path:
        return _digits()
    if kind == "imagefolder" and path:
        return _imagefolder(Path(path), image_size)
    if kind == "cifar10" and path:
        return _cifar10(Path(path))
    raise ValueError(f"unknown --source '{source}': use 'digits' (embedded), "
                     "'imagefolder:PATH' or 'cifar10:PATH' (binary version)")


# --------------------------------------------------------------------------- split and noise


def split_and_corrupt(labels: torch.Tensor, num_classes: int, seed: int = 0, noise: float = 0.1,
                      val_fraction: float = 0.2) -> dict:
    """Seeded train/validation split and label noise.

    Returns train_index, val_index (indices into `labels`), train_true_labels, train_labels (the
    noisy ones) and train_noisy (mask). round(noise * n_train) training images get a label drawn
    uniformly from the OTHER classes, so every noisy label differs from the true one.
    """
    if not 0.0 <= noise < 1.0:
        raise ValueError(f"--noise must be in [0, 1), got {noise}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    if num_classes < 2:
        raise ValueError(f"label noise needs at least 2 classes, got {num_classes}")
    n = labels.shape[0]
    n_val = round(val_fraction * n)
    if n_val < 1 or n - n_val < 1:
        raise ValueError(f"{n} images cannot be split with --val-fraction {val_fraction}: "
                         "both splits would need at least one image")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    val_index, train_index = perm[:n_val], perm[n_val:]
    true = labels[train_index]
    n_noisy = round(noise * true.shape[0])
    noisy_pos = torch.randperm(true.shape[0], generator=g)[:n_noisy]
    shift = torch.randint(1, num_classes, (n_noisy,), generator=g)  # never 0: a different class
    noisy_labels = true.clone()
    noisy_labels[noisy_pos] = (true[noisy_pos] + shift) % num_classes
    mask = torch.zeros(true.shape[0], dtype=torch.bool)
    mask[noisy_pos] = True
    return {"train_index": train_index, "val_index": val_index, "train_true_labels": true,
            "train_labels": noisy_labels, "train_noisy": mask}


def make_dataset(source: str = "digits", seed: int = 0, noise: float = 0.1,
                 val_fraction: float = 0.2, image_size=None) -> tuple[dict, dict]:
    """(tensors, config) of a vision dataset. Images are standardized per channel with the
    training split's mean and std, so models read them as stored."""
    images, labels, classes = load_source(source, image_size)
    num_classes = len(classes)
    parts = split_and_corrupt(labels, num_classes, seed, noise, val_fraction)
    train, val = images[parts["train_index"]], images[parts["val_index"]]
    mean = train.mean(dim=(0, 2, 3))
    std = train.std(dim=(0, 2, 3)).clamp_min(1e-6)
    mean_, std_ = mean[:, None, None], std[:, None, None]
    tensors = dict(parts, train_images=((train - mean_) / std_).contiguous(),
                   val_images=((val - mean_) / std_).contiguous(),
                   val_labels=labels[parts["val_index"]])
    config = {"source": source, "seed": seed, "noise": noise, "val_fraction": val_fraction,
              "num_classes": num_classes, "class_names": classes,
              "image_shape": list(images.shape[1:]), "n_train": int(train.shape[0]),
              "n_val": int(val.shape[0]), "n_noisy": int(parts["train_noisy"].sum()),
              "channel_mean": mean.tolist(), "channel_std": std.tolist()}
    return tensors, config


def data_sidecar(path) -> Path:
    return Path(path).with_suffix(".json")


def save_dataset(path, tensors: dict, config: dict) -> None:
    """Safetensors (tensors + config in its metadata) and a JSON sidecar, both atomic."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: a vision dataset file must end in .safetensors")
    side = dict(config, noisy_train_positions=torch.nonzero(tensors["train_noisy"]).flatten()
                .tolist())
    store.write_json(data_sidecar(path), side)
    stored = {k: (v.to(torch.uint8) if v.dtype == torch.bool else v).contiguous()
              for k, v in tensors.items()}
    with store.atomic_output(path) as tmp:
        save_file(stored, str(tmp), metadata={"curvmem": "vision-data",
                                               "config": json.dumps(config)})


def load_dataset(path) -> tuple[dict, dict]:
    """(tensors, config) of a file written by `curvmem vision-data`, validated."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such vision dataset file (make one with curvmem vision-data)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safe_open handle, not a dict)
    except Exception as e:  # noqa: BLE001 (safetensors raises several types for bad files)
        raise ValueError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") \
            from None
    if meta.get("curvmem") != "vision-data":
        raise ValueError(f"{path}: not a curvmem vision dataset (make one with curvmem "
                         "vision-data)")
    missing = [k for k in DATA_KEYS if k not in tensors]
    if missing:
        raise ValueError(f"{path}: missing tensors {missing}")
    tensors["train_noisy"] = tensors["train_noisy"].bool()
    n, nv = tensors["train_images"].shape[0], tensors["val_images"].shape[0]
    if any(tensors[k].shape[0] != n for k in DATA_KEYS if k.startswith("train")) or \
            any(tensors[k].shape[0] != nv for k in DATA_KEYS if k.startswith("val")):
        raise ValueError(f"{path}: tensors of one split have different lengths")
    return tensors, json.loads(meta["config"])


def load_images(path, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """(images [N,C,H,W] float32, labels [N]). Train labels are the NOISY ones the model was
    trained on; validation labels are true."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got '{split}'")
    tensors, _ = load_dataset(path)
    return tensors[f"{split}_images"], tensors[f"{split}_labels"]


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
            return timm.create_model(model_name, pretrained=False, **kwargs)
        return timm.create_model(model_name, pretrained=True,
                                 pretrained_cfg_overlay={"file": str(pretrained_file)}, **kwargs)
    except (RuntimeError, TypeError, AssertionError) as e:  # not a ViT, bad sizes, bad weights
        raise ValueError(f"timm cannot build '{model_name}' with {kwargs}: {e}") from None


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


def build_model(num_classes: int, image_shape, preset: str = "default", model_name=None,
                pretrained=None, seed: int = 0):
    """A timm VisionTransformer for images of `image_shape` (C, H, W), and its config.

    Without `model_name`: the preset's small ViT, from scratch. With it: that timm model, from
    scratch (pretrained None/'none'), from local hub cache ('cache') or a weights file.
    """
    from curvmem.models import adapter_for

    if preset not in VISION_PRESETS:
        raise ValueError(f"unknown --preset '{preset}'; choose from {sorted(VISION_PRESETS)}")
    c, h, w = (int(x) for x in image_shape)
    kwargs = {"img_size": [h, w], "in_chans": c, "num_classes": int(num_classes)}
    if model_name is None:
        if pretrained not in (None, "none"):
            raise ValueError("--pretrained needs --model-name (the preset ViT trains from scratch)")
        model_name = DEFAULT_TIMM_NAME
        kwargs.update(VISION_PRESETS[preset]["model"])
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
    cfg = store.read_json(path / CONFIG_FILE)
    if not (path / WEIGHTS_FILE).is_file():
        raise ValueError(f"{path}: no {WEIGHTS_FILE}")
    model = _create(cfg["model_name"], cfg["kwargs"])
    model.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
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


def train(model, tensors: dict, epochs: int, batch_size: int, lr: float, weight_decay: float,
          warmup_fraction: float = 0.1, shift: int = 0, shift_prob: float = 1.0, seed: int = 0,
          threads: int = 1,
          progress: bool = True) -> list[dict]:
    """AdamW with linear warm-up and cosine decay on the NOISY training labels, optional random
    shifts, no dropout. Returns per-epoch history."""
    if epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {epochs}")
    x, y = tensors["train_images"], tensors["train_labels"]
    n = x.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    warmup = max(1, int(warmup_fraction * total))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
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
              model_name=None, pretrained=None, progress: bool = True) -> dict:
    """`curvmem train-vit`: build, train, save (model.safetensors + timm_config.json)."""
    from safetensors.torch import save_file

    tensors, data_cfg = load_dataset(data_path)
    model, cfg = build_model(data_cfg["num_classes"], tensors["train_images"].shape[1:], preset,
                             model_name, pretrained, seed)
    recipe = dict(VISION_PRESETS[preset]["train"])
    if epochs is not None:
        recipe["epochs"] = int(epochs)
    if recipe["epochs"] < 1:
        raise ValueError(f"--epochs must be >= 1, got {recipe['epochs']}")
    t0 = time.perf_counter()
    history = train(model, tensors, seed=seed, progress=progress, **recipe)
    final = metrics(model, tensors)
    cfg.update({"preset": preset, "seed": seed, "train": recipe, "data": str(data_path),
                "data_config": data_cfg, "train_seconds": round(time.perf_counter() - t0, 2),
                "final_metrics": final, "history": history})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with store.atomic_output(out / WEIGHTS_FILE) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    store.write_json(out / CONFIG_FILE, cfg)  # last: its presence marks a complete model dir
    return cfg


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


def check_compatible(model, tensors: dict, data_cfg: dict, where: str) -> None:
    shape = tuple(tensors["train_images"].shape[1:])
    want_c = model.patch_embed.proj.in_channels
    want_hw = tuple(model.patch_embed.img_size)
    if (shape[0],) + shape[1:] != (want_c,) + want_hw:
        raise ValueError(f"{where}: images are {shape}, the model expects "
                         f"{(want_c,) + want_hw}")
    if model.num_classes != data_cfg["num_classes"]:
        raise ValueError(f"{where}: {data_cfg['num_classes']} classes, the model has "
                         f"{model.num_classes}")


def evaluate_vit(model_dir, data_path, edit=None) -> dict:
    """`curvmem evaluate vit`: metrics of the model (with an edit applied) on the dataset."""
    from curvmem import edit as edit_mod

    tensors, data_cfg = load_dataset(data_path)
    model = load_model(model_dir)
    check_compatible(model, tensors, data_cfg, str(data_path))
    meta = edit_mod.apply(model, edit) if edit else None
    with _threads(1):
        result = metrics(model, tensors)
    return dict(result, model=str(model_dir), data=str(data_path),
                edit=None if edit is None else dict(meta, path=str(edit)))


# --------------------------------------------------------------------------- report


def _row(res: dict) -> dict:
    row = {k: res.get(k) for k in ("memorized", "train_gt_acc", "clean_train_acc", "val_acc")}
    edit = res.get("edit")
    if edit:
        row["method"] = edit.get("method")
        row["spec"] = edit.get("spec")
    return row


def selection_score(row: dict) -> float:
    """The selection rule, on TRAINING images only: clean training accuracy minus memorized
    fraction (keep what fits the clean labels, drop what fits the noisy ones). Validation
    accuracy never enters."""
    return (row["clean_train_acc"] or 0.0) - (row["memorized"] or 0.0)


def select(models: dict, method: str):
    """Name of the best edit of `method` by `selection_score`; ties go to the first given."""
    cands = [n for n, r in models.items() if r.get("method") == method]
    return max(cands, key=lambda n: selection_score(models[n])) if cands else None


def summarize(entries: list[tuple[str, dict]]) -> dict:
    """{"models": {name: row}, "selected": {"kfac": name, "svd": name}, ...}."""
    names = [n for n, _ in entries]
    if "base" not in names:
        raise ValueError("report-vit needs an entry named 'base' (the unedited model)")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate entry names in {names}")
    models = {}
    for name, res in entries:
        missing = [k for k in ("memorized", "val_acc", "clean_train_acc", "train_gt_acc")
                   if k not in res]
        if missing:
            raise ValueError(f"entry '{name}' is not an `evaluate vit` result (lacks {missing})")
        if name == "base" and res.get("edit"):
            raise ValueError("the 'base' entry has an edit applied; give the unedited model")
        if name != "base" and not res.get("edit"):
            raise ValueError(f"entry '{name}' has no edit; only 'base' may be unedited")
        models[name] = _row(res)
    return {"models": models,
            "selected": {"kfac": select(models, "kfac"), "svd": select(models, "svd")},
            "selection_rule": "max(clean_train_acc - memorized) over training images; "
                              "validation is never used to choose",
            "paper_table2_percent": PAPER_TABLE2}


def _pct(x):
    return "–" if x is None else f"{100 * x:.1f}"


def table_markdown(summary: dict) -> str:
    """The paper's Table 2 (Baseline / SVD / K-FAC) with ours beside, then the whole sweep."""
    models, sel = summary["models"], summary["selected"]
    lines = [("| method | ours: memorized % | paper | ours: train gt acc % | paper | "
              "ours: val acc % | paper | ours: clean train acc % | edit |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for label, name in (("Baseline", "base"), ("SVD", sel["svd"]), ("K-FAC", sel["kfac"])):
        paper = PAPER_TABLE2[label]
        r = models.get(name) if name else None
        if r is None:
            lines.append(f"| {label} | (not run) | {paper['memorized']} | | "
                         f"{paper['train_gt_acc']} | | {paper['val_acc']} | | |")
            continue
        lines.append(f"| {label} | {_pct(r['memorized'])} | {paper['memorized']} | "
                     f"{_pct(r['train_gt_acc'])} | {paper['train_gt_acc']} | {_pct(r['val_acc'])} | "
                     f"{paper['val_acc']} | {_pct(r['clean_train_acc'])} | "
                     f"{'' if name == 'base' else name} |")
    lines += ["", ("All entries (the SVD and K-FAC rows above are chosen by "
                   "max(clean train acc − memorized) on training images; validation is not "
                   "used):"), "",
              "| entry | method | memorized % | train gt acc % | clean train acc % | val acc % |",
              "|---|---|---|---|---|---|"]
    for name, r in models.items():
        lines.append(f"| {name} | {r.get('method', 'base')} | {_pct(r['memorized'])} | "
                     f"{_pct(r['train_gt_acc'])} | {_pct(r['clean_train_acc'])} | "
                     f"{_pct(r['val_acc'])} |")
    return "\n".join(lines) + "\n"


def _edit_knob(record: dict) -> float | None:
    """The largest per-module value of an edit spec: its rho (K-FAC) or drop fraction (SVD).

    Unlike `baselines.knob`, a top-level "rho" is not read (`curvmem edit` writes only
    {layer: {module: value}}): a spec holding only that gets no label on the figure."""
    values = [v for mods in (record.get("spec") or {}).values() if isinstance(mods, dict)
              for v in mods.values()]
    return max(values) if values else None


def plot_sweep(summary: dict, path) -> None:
    """Left: memorized vs validation accuracy for every entry (the trade-off). Right: the four
    metrics of base and the selected SVD and K-FAC edits beside the paper's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from curvmem.edit import layer_set_label
    from curvmem.plots import RECIPE_MARKERS, recipe_order, shade

    models, sel = summary["models"], summary["selected"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5.2))
    # one line per method and layer set through its knob values (rho, drop), labelled at points
    colours = {"kfac": "tab:blue", "svd": "tab:orange"}
    names = {"kfac": "K-FAC", "svd": "SVD"}
    curves = {}
    for name, r in models.items():
        if name != "base" and r["memorized"] is not None and r["val_acc"] is not None:
            key = (str(r.get("method") or "?"), layer_set_label(r.get("spec") or {}))
            curves.setdefault(key, []).append((_edit_knob(r), name, r))
    order = sorted(curves, key=lambda k: (k[0] != "kfac", k[0], recipe_order(k[1])))
    for method in dict.fromkeys(m for m, _ in order):
        keys = [k for k in order if k[0] == method]
        for i, key in enumerate(keys):
            pts = sorted(curves[key], key=lambda p: (p[0] is None, p[0] or 0))
            colour = shade(colours.get(method, "tab:gray"),  # a lone curve: the plain hue
                           i / (len(keys) - 1) if len(keys) > 1 else 0.5)
            xs = [100 * r["memorized"] for _, _, r in pts]
            ys = [100 * r["val_acc"] for _, _, r in pts]
            ax.plot(xs, ys, color=colour, marker=RECIPE_MARKERS[i % len(RECIPE_MARKERS)],
                    markersize=7, label=f"{names.get(method, method)} {key[1]}".strip(), zorder=3)
            for (value, name, _), x, y in zip(pts, xs, ys):
                if value is not None:
                    ax.annotate(f"{value:g}", (x, y), fontsize=7, color=colour,
                                xytext=(-14 if method == "svd" else 4, 3),
                                textcoords="offset points")
                if name in sel.values():
                    ax.scatter([x], [y], s=220, facecolors="none", edgecolors="red",
                               linewidths=1.5, zorder=5)
    base = models["base"]
    if base["memorized"] is not None and base["val_acc"] is not None:  # None: no noisy labels
        ax.scatter(100 * base["memorized"], 100 * base["val_acc"], marker="*", s=220,
                   facecolors="none", edgecolors="black", label="base", zorder=4)
    ax.scatter([], [], s=120, facecolors="none", edgecolors="red", label="selected")
    ax.set_xlim(-3, 103)  # the whole 0-100 range, so a small reduction looks small
    ax.set_xlabel("memorized noisy training labels (%)  ← better")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Edit sweep: memorization vs generalization\n(numbers: rho or SVD drop; red "
                 "ring: selected on training images)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)  # points crowd at high memorization (right)

    keys = [("memorized", "memorized"), ("train_gt_acc", "train gt acc"),
            ("val_acc", "val acc")]
    rows = [("Baseline", "base"), ("SVD", sel["svd"]), ("K-FAC", sel["kfac"])]
    width = 0.13
    for j, (label, name) in enumerate(rows):
        ours = [100 * (models[name][k] or 0) if name else 0 for k, _ in keys]
        paper = [PAPER_TABLE2[label][k] for k, _ in keys]
        xs = np.arange(len(keys)) + (2 * j - 2.5) * width
        c = ["black", "tab:orange", "tab:blue"][j]
        bx.bar(xs, ours, width, color=c, label=f"{label} (ours)")
        bx.bar(xs + width, paper, width, color=c, alpha=0.35, hatch="//",
               label=f"{label} (paper)")
    bx.set_xticks(np.arange(len(keys)), [t for _, t in keys])
    bx.set_ylabel("%")
    bx.set_ylim(0, 105)
    bx.set_title("Table 2: ours (digits, tiny ViT) vs paper (ImageNet, ViT-B/16)")
    bx.legend(fontsize=7, ncol=3, loc="upper center")
    bx.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with store.atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
