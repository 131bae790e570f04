"""ViT evaluation: the Table 2 metrics of a model, with an edit applied."""

from __future__ import annotations

from curvmem.edit.build import apply
from curvmem.model.vit import _threads, load_model, metrics
from curvmem.world.images import load_dataset


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
    tensors, data_cfg = load_dataset(data_path)
    model = load_model(model_dir)
    check_compatible(model, tensors, data_cfg, str(data_path))
    meta = apply(model, edit) if edit else None
    with _threads(1):
        result = metrics(model, tensors)
    return dict(result, model=str(model_dir), data=str(data_path),
                edit=None if edit is None else dict(meta, path=str(edit)))
