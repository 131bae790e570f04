"""Spectra of the K-FAC factors: eigenvalues of A (μ) and G (λ) per layer and module, the mass
curve of the pair curvatures λᵢμⱼ, effective ranks, and where the sweep's ρ values cut.

Effective rank (Roy & Vetterli 2007): exp of the Shannon entropy of the normalised spectrum. The
pair masses λᵢμⱼ / (Σλ)(Σμ) are a product distribution, so their effective rank is exactly
erank(λ) · erank(μ).
"""

from __future__ import annotations

import numpy as np

from curvmem.analysis.common import module_label, pair_order, save_figure

# Existing curvmem names used here:
from curvmem.edit import check_rho, select_pairs
from curvmem.schema import layer_path, read_layer

DEFINITION = (
    "A_eigenvalues mu and G_eigenvalues lambda, descending, as stored in the eigen files. "
    "mass_curve: pairs sorted by lambda_i mu_j descending; x = fraction of pairs taken, y = their "
    "fraction of the total mass (sum lambda)(sum mu), sampled at up to curve_points log-spaced "
    "ranks. effective_rank(s) = exp(-sum p log p), p = s / sum(s); for pairs = erank(lambda) * "
    "erank(mu). cutoffs[rho]: the pairs kept by the edit at rho (edit.select_pairs) as a fraction "
    "of all pairs, and the smallest kept lambda_i mu_j relative to the largest.")


def effective_rank(values) -> float:
    p = np.asarray(values, np.float64)
    p = p[p > 0] / p.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def mass_curve(lam, mu, points: int = 200) -> dict:
    """Cumulative mass fraction against the fraction of pairs, at log-spaced ranks."""
    lam, mu = np.asarray(lam, np.float64), np.asarray(mu, np.float64)
    order = pair_order(lam, mu)
    cum = np.cumsum(np.outer(lam, mu).ravel()[order])
    n = cum.size
    ranks = np.unique(np.geomspace(1, n, points).round().astype(np.int64))
    return {"pair_fraction": (ranks / n).tolist(), "mass_fraction": (cum[ranks - 1] / cum[-1]).tolist()}


def spectra(eigen_dir, layers, modules, rhos=(), curve_points: int = 200) -> dict:
    rhos = [check_rho(r) for r in rhos]
    results = []
    for layer in sorted({int(x) for x in layers}):
        f = read_layer(layer_path(eigen_dir, layer), "eigen", modules=list(modules))
        for name in modules:
            g = f.groups[name]
            lam = np.asarray(g["G_eigenvalues"], np.float64)
            mu = np.asarray(g["A_eigenvalues"], np.float64)
            top = lam[0] * mu[0]
            cutoffs = {}
            for rho in rhos:
                kept = select_pairs(lam, mu, rho)
                products = np.outer(lam, mu)[kept]
                cutoffs[str(rho)] = {"pair_fraction": float(kept.mean()),
                                     "pairs": int(kept.sum()),
                                     "smallest_kept_relative": float(products.min() / top)}
            results.append({
                "layer": layer, "module": name,
                "A_eigenvalues": mu.tolist(), "G_eigenvalues": lam.tolist(),
                "effective_rank": {"A": effective_rank(mu), "G": effective_rank(lam),
                                   "pairs": effective_rank(mu) * effective_rank(lam)},
                "dims": {"A": mu.size, "G": lam.size, "pairs": mu.size * lam.size},
                "mass_curve": mass_curve(lam, mu, curve_points), "cutoffs": cutoffs,
                "n_tokens": f.attrs.get("n_tokens")})
    return {"analysis": "spectra", "definition": DEFINITION,
            "params": {"eigen": str(eigen_dir), "layers": sorted({int(x) for x in layers}),
                       "modules": list(modules), "rhos": rhos, "curve_points": curve_points},
            "modules": results}


def spectra_figure(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mods = result["modules"]
    fig, (ax_a, ax_g, ax_m) = plt.subplots(1, 3, figsize=(14, 4.2))
    colours = plt.get_cmap("tab10")
    shown_a = set()
    for k, mod in enumerate(mods):
        c, label = colours(k % 10), module_label(mod["layer"], mod["module"])
        er = mod["effective_rank"]
        mu = np.asarray(mod["A_eigenvalues"])
        if (mod["layer"], tuple(mu[:4])) not in shown_a:  # gate and up share A: draw it once
            shown_a.add((mod["layer"], tuple(mu[:4])))
            ax_a.plot(np.arange(1, mu.size + 1), np.maximum(mu, 1e-30), color=c,
                      label=f"L{mod['layer']} (erank {er['A']:.0f}/{mu.size})")
        lam = np.asarray(mod["G_eigenvalues"])
        ax_g.plot(np.arange(1, lam.size + 1), np.maximum(lam, 1e-30), color=c,
                  label=f"{label} (erank {er['G']:.0f}/{lam.size})")
        curve = mod["mass_curve"]
        ax_m.plot(curve["pair_fraction"], curve["mass_fraction"], color=c, label=label)
        for rho, cut in mod["cutoffs"].items():
            ax_m.plot(cut["pair_fraction"], float(rho), "o", color=c, ms=4)
    for rho in result["params"]["rhos"]:
        ax_m.axhline(rho, color="grey", lw=0.6, ls=":")
        ax_m.annotate(f"ρ = {rho:g}", (1e-5, rho), fontsize=7,
                      xytext=(2, 2), textcoords="offset points", color="grey")
    for ax, title in ((ax_a, "A = E[a aᵀ] eigenvalues μ (module input)"),
                      (ax_g, "G = E[g gᵀ] eigenvalues λ (output gradient)")):
        ax.set_yscale("log")
        ax.set_xscale("log")
        ax.set_xlabel("index (descending)")
        ax.set_ylabel("eigenvalue")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    ax_m.set_xscale("log")
    ax_m.set_xlim(1e-5, 1)
    ax_m.set_xlabel("fraction of pairs (i, j), by λᵢμⱼ descending")
    ax_m.set_ylabel("fraction of curvature mass")
    ax_m.set_title("Mass curve; dots: pairs the edit keeps at each ρ", fontsize=10)
    ax_m.legend(fontsize=7, loc="lower right")
    fig.suptitle("K-FAC spectra", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)
