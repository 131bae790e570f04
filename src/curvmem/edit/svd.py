"""The SVD baseline: drop the smallest singular values of a weight."""

from __future__ import annotations

import torch

from curvmem.model.adapters import default_device


def svd_truncate(W, drop: float) -> tuple[torch.Tensor, dict]:
    """Drop the smallest fraction `drop` of singular values of W (rounded to a whole count)."""
    drop = float(drop)
    if not 0.0 <= drop < 1.0:
        raise ValueError(f"the SVD drop fraction must be in [0, 1), got {drop}")
    W64 = torch.as_tensor(W).to(dtype=torch.float64, device=default_device())
    U, S, Vh = torch.linalg.svd(W64, full_matrices=False)
    r = S.numel()
    keep = r - round(drop * r)
    W_new = (U[:, :keep] * S[:keep]) @ Vh[:keep]
    return W_new.cpu(), {"singular_values_kept": keep, "singular_values_total": r,
                         "weight_norm_ratio": float(W_new.norm() / W64.norm())}
