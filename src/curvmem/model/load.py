"""Loading: a model (HF causal LM or a curvmem/timm ViT directory), its tokenizer, and the
factor and eigen files that belong to it (checked against its weights)."""

from __future__ import annotations

from pathlib import Path

import torch

from curvmem import io, schema
from curvmem.io import StoreError
from curvmem.model import vit
from curvmem.model.adapters import mlp_modules
from curvmem.model.identity import check_identity


def load_model(path_or_id, dtype: torch.dtype | str | None = None,
               trust_remote_code: bool = False, device: str | torch.device = "cpu"):
    """Load a model for curvmem: a curvmem/timm vision model directory or an HF causal LM.

    `dtype`: None = float32; "auto" = the dtype the checkpoint stores (a bf16 checkpoint stays
    bf16: half the memory, and exactly the stored weights). `trust_remote_code` stays off unless
    the user asks for it.
    """
    if vit.is_vision_model(path_or_id):
        model = vit.load_model(path_or_id)
    else:
        from transformers import AutoModelForCausalLM

        local = check_model_path(path_or_id)
        if dtype == "auto":
            dtype = stored_dtype(path_or_id, trust_remote_code)
        try:
            # safetensors only: a pytorch_model.bin is a pickle, and curvmem never unpickles
            model = AutoModelForCausalLM.from_pretrained(
                str(path_or_id), dtype=dtype or torch.float32,
                trust_remote_code=trust_remote_code, use_safetensors=True)
        except Exception as e:  # noqa: BLE001 (transformers, the hub and safetensors raise many)
            where = "the directory" if local else "the hub id (offline, or no such model?)"
            raise StoreError(f"--model {path_or_id}: cannot load a causal LM from {where}: "
                             f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") \
                from None
    model = model.to(device).eval()
    io.note_model_ready()  # the end of this process's start-up (cli: timing line)
    return model


def stored_dtype(path_or_id, trust_remote_code: bool = False) -> torch.dtype:
    """The dtype a causal LM checkpoint says it is stored in (float32 when it does not say)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(path_or_id), trust_remote_code=trust_remote_code)
    stored = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None)
    if isinstance(stored, str):
        stored = getattr(torch, stored, None)
    return stored if isinstance(stored, torch.dtype) else torch.float32


def check_model_path(path_or_id) -> bool:
    """True for a local model directory (its weights' checksums verified, where train-lm wrote
    them); a path-like name that does not exist is a mistyped path, not a hub id."""
    text = str(path_or_id)
    path = Path(text)
    if path.exists():
        if not path.is_dir():
            raise StoreError(f"--model {text}: is a file; give the model's directory")
        for weights in sorted(path.glob("*.safetensors")):
            io.verify_checksum(weights, schema.PRODUCERS["model"], required=False)
        return True
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or text.endswith("/"):
        raise StoreError(f"--model {text}: no such directory")
    return False


def load_tokenizer(path_or_id, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path_or_id), trust_remote_code=trust_remote_code)


def read_layer(path, kind: str, model=None, modules=None) -> schema.LayerFile:
    """`curvmem.schema.read_layer`, and with `model`: refuse a file computed on different weights
    (fingerprint) or whose shapes do not match the model's modules."""
    lf = schema.read_layer(path, kind, modules=modules)
    if model is not None:
        check_layer(lf, model, path)
    return lf


def check_layer(lf: schema.LayerFile, model, path) -> None:
    """Refuse a layer file computed on other weights or another config than `model`'s (its
    fingerprint and digest, `curvmem.model.identity`), or with other shapes."""
    check_identity(lf.attrs, model, path, schema.PRODUCERS.get(lf.kind, "the command that "
                                                                  "wrote it"))
    for m in mlp_modules(model, [lf.layer], [g for g in lf.groups]):
        a_var, g_var = ("A", "G") if lf.kind == "factors" else ("A_eigenvalues", "G_eigenvalues")
        got = (lf.groups[m.name][a_var].shape[0], lf.groups[m.name][g_var].shape[0])
        if got != (m.d_in, m.d_out):
            raise StoreError(f"{path}: '{m.name}' has (d_in, d_out) = {got}, but the model's "
                             f"module has {(m.d_in, m.d_out)}")
