"""Which model an artifact belongs to: a fingerprint of every weight and of the model's config.

Factor, eigen and edit files record the identity of the model they were computed on, and every
reader checks it against the model at hand, so another checkpoint of the same shapes (another
seed, a fine-tune, a config with another RoPE base or norm epsilon) is refused, never edited.

Two digests, one pass over the weights:

    model_fingerprint  "v2:<16 hex>"   the canonical config, each tensor's name and shape, and
                                       every value rounded to bfloat16: the same for a checkpoint
                                       loaded in float32 on a CPU or in bfloat16 on a GPU
                                       (`collect` on a GPU, `edit` on a CPU).
    model_digest       "f32:<16 hex>"  the config, names, shapes and every value exactly (as
                                       float32); "bf16" for a model holding bfloat16 weights,
                                       which have no more to say than the fingerprint.

Two records match when the fingerprints are equal and, where both sides have a float32 digest,
the digests are too: weights that differ below bfloat16 precision are told apart unless one side
only ever saw them rounded (and then its factors were computed on the rounded weights).
A fingerprint without the "v2:" prefix was made by an older curvmem (which sampled about one
weight in twelve and ignored the config); it is refused with that reason, not as a mismatch.

Cost: one SHA-256 pass over the weights' bytes (1.5 passes for float32 weights: their bfloat16
image and their own bytes), tensors hashed in parallel threads (hashlib releases the GIL); the
result is cached per model until a weight changes in place (torch's version counters: they
count every in-place change but one made through `.data`, which curvmem never makes).
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from curvmem.io import StoreError

FINGERPRINT_VERSION = "v2"
NO_DIGEST = "bf16"  # model_digest of a model holding bfloat16 weights: compare fingerprints only

# config keys that say how a model was loaded or run, not what it is
RUNTIME_CONFIG_KEYS = frozenset({
    "dtype", "torch_dtype", "transformers_version", "architectures", "use_cache",
    "output_attentions", "output_hidden_states", "return_dict", "torchscript", "name_or_path"})

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def model_config(model: nn.Module) -> dict | None:
    """The architecture-relevant config of a model: an HF model's config as it differs from its
    class defaults, without load- and run-time keys (dtype, cache, versions, paths); a curvmem
    ViT's (timm name and sizes, `curvmem_config`); None for a bare module."""
    cfg = getattr(model, "config", None)
    if hasattr(cfg, "to_diff_dict"):
        raw = cfg.to_diff_dict()
    elif isinstance(getattr(model, "curvmem_config", None), dict):
        raw = model.curvmem_config
    else:
        return None
    return {k: v for k, v in raw.items()
            if not str(k).startswith("_") and k not in RUNTIME_CONFIG_KEYS}


def _bytes(t: torch.Tensor):
    """A tensor's bytes as a buffer (no copy for a contiguous CPU tensor)."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def _tensor_digests(t: torch.Tensor) -> tuple[bytes, bytes | None]:
    """(digest at bfloat16 precision, digest of the float32 image or None for bf16 weights)."""
    t = t.detach()
    if not t.is_floating_point():  # integer buffers: their bytes are both
        d = hashlib.sha256(_bytes(t)).digest()
        return d, d
    coarse = hashlib.sha256(_bytes(t if t.dtype == torch.bfloat16 else t.to(torch.bfloat16)))
    if t.dtype == torch.bfloat16:
        return coarse.digest(), None
    return coarse.digest(), hashlib.sha256(_bytes(t.to(torch.float32))).digest()


def _cache_key(model: nn.Module, state: dict, config_json: str):
    try:
        return config_json, tuple((n, t.data_ptr(), t._version, t.dtype, str(t.device),
                                   tuple(t.shape)) for n, t in state.items())
    except RuntimeError:  # inference-mode tensors have no version counter: never cached
        return None


def model_identity(model: nn.Module) -> tuple[str, str]:
    """(model_fingerprint, model_digest) of a model; see the module docstring."""
    state = {k: v for k, v in sorted(model.state_dict(keep_vars=True).items())
             if isinstance(v, torch.Tensor)}  # (a module's extra state may be any object)
    config_json = json.dumps([type(model).__name__, model_config(model)], sort_keys=True,
                             default=str)
    key = _cache_key(model, state, config_json)
    cached = _CACHE.get(model)
    if key is not None and cached is not None and cached[0] == key:
        return cached[1]
    unique = {}  # tied weights (embedding and head) are hashed once
    for t in state.values():
        unique.setdefault((t.data_ptr(), t.dtype, str(t.device), tuple(t.shape), t.stride()), t)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        digests = dict(zip(unique, pool.map(_tensor_digests, unique.values())))
    coarse = hashlib.sha256(f"curvmem-model-{FINGERPRINT_VERSION}".encode())
    fine = coarse.copy()
    for h in (coarse, fine):
        h.update(config_json.encode())
    exact = True
    for name, t in state.items():
        c, f = digests[(t.data_ptr(), t.dtype, str(t.device), tuple(t.shape), t.stride())]
        kind = "float" if t.is_floating_point() else str(t.dtype)
        head = json.dumps([name, list(t.shape), kind]).encode()
        coarse.update(head + c)
        if f is None:
            exact = False
        else:
            fine.update(head + f)
    identity = (f"{FINGERPRINT_VERSION}:{coarse.hexdigest()[:16]}",
                f"f32:{fine.hexdigest()[:16]}" if exact else NO_DIGEST)
    if key is not None:
        _CACHE[model] = (key, identity)
    return identity


def model_fingerprint(model: nn.Module) -> str:
    """The model's fingerprint: config, names, shapes and every value at bfloat16 precision,
    the same for any load dtype ("v2:<16 hex>")."""
    return model_identity(model)[0]


def model_digest(model: nn.Module) -> str:
    """The model's exact digest ("f32:<16 hex>"), or "bf16" for a model with bfloat16 weights."""
    return model_identity(model)[1]


def identity_record(model: nn.Module) -> dict:
    """{"model_fingerprint", "model_digest"}: what an artifact records of its model."""
    fp, digest = model_identity(model)
    return {"model_fingerprint": fp, "model_digest": digest}


def check_identity(recorded: dict, model: nn.Module, path, remake: str,
                   what: str = "computed on", redo: str = "recollect") -> None:
    """Refuse an artifact whose recorded model (`recorded`: its attributes or sidecar, with
    model_fingerprint and perhaps model_digest) is not `model`. `remake` names the command that
    makes the artifact again, `redo` says what to do (recollect factors, remake an edit)."""
    fp = str(recorded.get("model_fingerprint", ""))
    if not fp.startswith(f"{FINGERPRINT_VERSION}:"):
        raise StoreError(
            f"{path}: made by an older curvmem (its model fingerprint '{fp}' is not "
            f"{FINGERPRINT_VERSION}: it sampled a few weights and ignored the config, so it "
            f"cannot tell this model from another of its shapes); {redo}: delete it and rerun "
            f"{remake}")
    own_fp, own_digest = model_identity(model)
    source = recorded.get("model_id") or recorded.get("model") or "another model"
    if fp != own_fp:
        raise StoreError(
            f"{path}: {what} model {source} (fingerprint {fp}), but the model given has "
            f"fingerprint {own_fp}: another checkpoint or config. Factors, eigenbases and edits "
            "belong to the exact weights they were computed on.")
    digest = str(recorded.get("model_digest") or NO_DIGEST)
    if NO_DIGEST not in (digest, own_digest) and digest != own_digest:
        raise StoreError(
            f"{path}: {what} model {source} whose weights equal the given model's at bfloat16 "
            f"precision (fingerprint {fp}) but not exactly (digest {digest}, the model's "
            f"{own_digest}). Factors, eigenbases and edits belong to the exact weights they "
            "were computed on.")
