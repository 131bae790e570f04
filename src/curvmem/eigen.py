"""Eigenbases of K-FAC factors: A = U_A diag(μ) U_Aᵀ, G = U_G diag(λ) U_Gᵀ, descending.

`torch.linalg.eigh` in float64 by default (on the GPU when there is one). Factors are PSD by
construction, so negative eigenvalues are rounding: tiny ones are clipped to 0, and a clearly
negative one (a broken factor) is an error.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from curvmem.schema import read_layer, write_layer

NEGATIVE_TOLERANCE = 1e-4  # relative to the largest eigenvalue


def eigh_descending(matrix, dtype=torch.float64, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(eigenvalues descending, eigenvectors as columns) of a symmetric PSD matrix."""
    m = torch.as_tensor(np.asarray(matrix) if not torch.is_tensor(matrix) else matrix)
    m = m.to(device=device or "cpu", dtype=dtype)
    m = (m + m.T) / 2  # symmetric up to float32 rounding; make it exact for eigh
    vals, vecs = torch.linalg.eigh(m)
    vals, vecs = vals.flip(0), vecs.flip(1)
    top = vals[0].abs().item() if vals.numel() else 0.0
    if vals.numel() and vals[-1].item() < -NEGATIVE_TOLERANCE * max(top, 1e-30):
        raise ValueError(f"factor is not positive semi-definite: eigenvalue {vals[-1].item():.3g} "
                         f"vs largest {top:.3g}")
    return vals.clamp_min(0), vecs


def eigen_layer(factors_path, out_path, dtype=torch.float64, store_dtype=np.float32,
                device=None) -> None:
    """Eigendecompose every module of one factors file into an eigen file (same layer). Its cost
    is no part of it: `curvmem eigen` writes it to `<out_path>.cost.json`."""
    layer = read_layer(factors_path, "factors")
    cache: dict = {}  # gate_proj and up_proj share A: decompose it once
    groups = {}
    for name, f in layer.groups.items():
        groups[name] = {}
        for side in ("A", "G"):
            key = (side, f[side].shape, hashlib.blake2b(np.ascontiguousarray(f[side])).hexdigest())
            if key not in cache:
                vals, vecs = eigh_descending(f[side], dtype=dtype, device=device)
                cache[key] = (vals.cpu().numpy().astype(store_dtype),
                              vecs.cpu().numpy().astype(store_dtype))
            groups[name][f"{side}_eigenvalues"], groups[name][f"{side}_eigenvectors"] = cache[key]
    # (cost_seconds, cost_peak_rss_mb: costs an older curvmem kept in its factor files)
    attrs = {k: v for k, v in layer.attrs.items()
             if k not in ("kind", "schema_version", "layer", "curvmem_version", "cost_seconds",
                          "cost_peak_rss_mb")}
    attrs["eigh_dtype"] = str(dtype).replace("torch.", "")
    write_layer(out_path, "eigen", layer.layer, groups, attrs)
