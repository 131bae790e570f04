"""The curvature-mass edit and its controls (--keep: KEEP_MODES; curvature bands).

In the K-FAC eigenbasis the weight is C = U_Gᵀ W U_A, and pair (i, j) carries curvature λᵢμⱼ
(λ: eigenvalues of G, rows; μ: eigenvalues of A, columns; both descending). The edit keeps the
smallest set of pairs of largest λᵢμⱼ whose mass reaches ρ·(Σλ)(Σμ) (ties broken by flat index
i·n + j, so the set is deterministic), W' = U_G (C ⊙ M) U_Aᵀ, with no rescaling.

Selection never sorts the m·n pairs. Because λ and μ are sorted, the pairs above a threshold t
form a prefix of every row, found by binary search, and their mass is Σᵢ λᵢ · (μ₁ + … + μ_cᵢ).
Bisecting t narrows the boundary to a thin band of pairs, which alone is sorted exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from curvmem.model.adapters import default_device
from curvmem.presets import KEEP_MODES

BAND_LIMIT = 4096  # pairs sorted explicitly at the selection boundary


def _check_spectrum(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D spectrum")
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        raise ValueError(f"{name} must be finite and non-negative")
    if np.any(np.diff(x) > 0):
        raise ValueError(f"{name} must be sorted in descending order")
    return x


def check_rho(rho) -> float:
    rho = float(rho)
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    return rho


def _row_counts(lam: np.ndarray, mu: np.ndarray, t: float) -> np.ndarray:
    """Per row i, the number of j with λᵢ·μⱼ >= t, computed on the exact float products."""
    neg_mu = -mu  # ascending, for searchsorted
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(lam > 0, t / lam, np.inf)
    c = np.searchsorted(neg_mu, -q, side="right")
    n = mu.size
    # t / λᵢ is rounded: move each count to where the exact product test switches.
    while True:
        up = (c < n) & (lam * mu[np.minimum(c, n - 1)] >= t)
        down = (c > 0) & (lam * mu[np.maximum(c - 1, 0)] < t)
        if not (up.any() or down.any()):
            return c
        c = c + up.astype(c.dtype) - down.astype(c.dtype)


def select_pairs(lam, mu, rho) -> np.ndarray:
    """Boolean mask (len(lam), len(mu)): the minimal top-curvature pair set holding ρ of the mass."""
    lam, mu = _check_spectrum(lam, "G eigenvalues"), _check_spectrum(mu, "A eigenvalues")
    rho = check_rho(rho)
    m, n = lam.size, mu.size
    if rho == 1.0:
        return np.ones((m, n), dtype=bool)  # by definition: keep everything, W' = W
    prefix_mu = np.concatenate([[0.0], np.cumsum(mu)])
    target = rho * lam.sum() * mu.sum()

    def mass(c):
        return float(np.dot(lam, prefix_mu[c]))

    hi = lam[0] * mu[0] * 2.0
    if hi == 0.0:
        raise ValueError("all curvature is zero: the factors hold no information")
    positive = (lam[lam > 0].min() * mu[mu > 0].min()) / 2.0
    lo = positive if mass(_row_counts(lam, mu, positive)) >= target else 0.0
    c_lo, c_hi = _row_counts(lam, mu, lo), _row_counts(lam, mu, hi)
    for _ in range(400):
        if int((c_lo - c_hi).sum()) <= BAND_LIMIT:
            break
        mid = np.sqrt(lo * hi) if lo > 0 and hi / lo > 4.0 else (lo + hi) / 2.0
        if not lo < mid < hi:
            break  # ties: the band is a run of equal products
        c_mid = _row_counts(lam, mu, mid)
        if mass(c_mid) >= target:
            lo, c_lo = mid, c_mid
        else:
            hi, c_hi = mid, c_mid
    # Pairs with product >= hi are in; the band [lo, hi) is resolved by an exact sort.
    width = c_lo - c_hi
    rows = np.repeat(np.arange(m), width)
    starts = np.repeat(c_hi - np.concatenate([[0], np.cumsum(width)[:-1]]), width)
    cols = starts + np.arange(rows.size)
    values = lam[rows] * mu[cols]
    if values.size and values.min() == values.max():
        order = np.arange(values.size)  # a run of ties: generated row-major, i.e. by flat index
    else:
        order = np.lexsort((rows * n + cols, -values))
    cum = mass(c_hi) + np.cumsum(values[order])
    k = min(int(np.searchsorted(cum, target, side="left")) + 1, order.size)
    mask = np.arange(n)[None, :] < c_hi[:, None]
    mask[rows[order[:k]], cols[order[:k]]] = True
    return mask


def band_mask(lam, mu, lo: float, hi: float) -> np.ndarray:
    """Pairs whose cumulative curvature mass (in descending order) lies in the band (lo, hi]."""
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"a curvature band needs 0 <= lo < hi <= 1, got ({lo}, {hi})")
    upper = select_pairs(lam, mu, hi)
    return upper if lo == 0.0 else upper & ~select_pairs(lam, mu, lo)


def pair_mask(lam, mu, rho, keep: str = "top", seed: int = 0) -> np.ndarray:
    """The kept-pair mask of `keep` (KEEP_MODES); the random ones are seeded."""
    if keep not in KEEP_MODES:
        raise ValueError(f"--keep must be one of {', '.join(KEEP_MODES)}, got '{keep}'")
    if keep.startswith("ablate-mass-"):  # remove a band holding 1 - ρ of the mass, keep ρ
        return ~band_mask(lam, mu, *ablation_band(keep, check_rho(rho)))
    top = select_pairs(lam, mu, rho)
    if keep in ("top", "random-basis"):
        return top
    if keep == "bottom":
        return ~top
    rng = np.random.default_rng(seed)
    flat = np.zeros(top.size, dtype=bool)
    if keep == "random":
        flat[rng.choice(top.size, size=int(top.sum()), replace=False)] = True
    elif keep == "random-mass":  # a random order, cut where it reaches the top set's share ρ
        mass = (np.asarray(lam, np.float64)[:, None] * np.asarray(mu, np.float64)[None, :]).ravel()
        order = rng.permutation(top.size)
        cum = np.cumsum(mass[order])
        k = min(int(np.searchsorted(cum, check_rho(rho) * mass.sum(), side="left")) + 1, top.size)
        flat[order[:k]] = True
    return flat.reshape(top.shape)


def ablation_band(keep: str, rho: float) -> tuple[float, float]:
    """The cumulative-mass band (lo, hi] an equal-mass ablation removes: the top 1 - ρ of the
    curvature mass, or as much centred on the middle of the mass; the bottom 1 - ρ would be
    (ρ, 1], whose removal keeps the top-ρ set: the edit itself, so it is no mode of its own."""
    width = 1.0 - rho
    if width <= 0.0:
        raise ValueError(f"--keep {keep} at rho {rho} removes no mass; give rho < 1")
    if keep == "ablate-mass-top":
        return 0.0, width
    return 0.5 - width / 2, 0.5 + width / 2


def random_orthonormal(n: int, seed: int) -> np.ndarray:
    """A Haar-random n x n orthogonal matrix (QR of a Gaussian, signs fixed), seeded."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def kfac_edit_weight(W, UG, lam, UA, mu, mask) -> tuple[torch.Tensor, dict]:
    """W' = U_G (C ⊙ M) U_Aᵀ with C = U_Gᵀ W U_A, in float64; W is (d_out, d_in)."""
    dev = default_device()
    f64 = {"dtype": torch.float64, "device": dev}
    W64 = torch.as_tensor(W).to(**f64)
    UG, UA = torch.as_tensor(UG).to(**f64), torch.as_tensor(UA).to(**f64)
    M = torch.as_tensor(mask, device=dev)
    if W64.shape != (UG.shape[0], UA.shape[0]) or M.shape != W64.shape:
        raise ValueError(f"weight {tuple(W64.shape)} does not match eigenbases "
                         f"G {tuple(UG.shape)} / A {tuple(UA.shape)}")
    if bool(M.all()):
        W_new = W64  # everything kept: W' = W exactly, not W up to eigenvector rounding
    else:
        C = UG.T @ W64 @ UA
        W_new = UG @ (C * M) @ UA.T
    lam64, mu64 = np.asarray(lam, np.float64), np.asarray(mu, np.float64)
    mass = lam64[:, None] * mu64[None, :]
    kept_mass = float((mass * mask).sum() / mass.sum())
    stats = {
        "pairs_kept": int(mask.sum()),
        "pairs_total": int(mask.size),
        "mass_kept": kept_mass,
        "g_eigenvectors_touched": int((~mask).any(axis=1).sum()),
        "a_eigenvectors_touched": int((~mask).any(axis=0).sum()),
        "weight_norm_ratio": float(W_new.norm() / W64.norm()),
    }
    return W_new.cpu(), stats
