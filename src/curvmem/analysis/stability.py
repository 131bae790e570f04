"""Basis stability: how alike the eigenbases (and the edit's kept pairs) of independent factor
sets are, against the number of tokens they were collected on.

Factor sets come from disjoint token slices (`collect --shard k/n`) at several sizes and from
different label-sampling seeds; `collect_slices` computes many such slices in one process, equal
to separate `collect --tokens N --shard k/n --seed s` + `eigen` runs (to float rounding). For each
pair of sets and each module:
    kept_jaccard      |S1 ∩ S2| / |S1 ∪ S2| of the kept pair index sets at ρ. Caveat: pair (i, j)
                      of one set is matched to pair (i, j) of the other by eigenvalue rank, which
                      means little where eigenvalues are close (the eigenvectors may swap or mix).
    kept_projector    basis-free: the kept pairs span P_S = Σ_{(i,j)∈S} u_i u_iᵀ ⊗ v_j v_jᵀ;
                      ⟨P1, P2⟩_F / √(|S1| |S2|) = Σ_{S1×S2} (u_iᵀu'_k)² (v_jᵀv'_l)² / √(|S1||S2|),
                      the cosine between the two projectors (1: the same subspace).
    principal angles  of the top-k eigenvectors of A and of G: arccos of the singular values of
                      U1[:, :k]ᵀ U2[:, :k]; overlap = Σ cos² / k = ‖P1 P2‖²_F / k.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from curvmem.analysis.common import module_label, save_figure

# Existing curvmem names used here:
from curvmem.edit import check_rho, select_pairs
from curvmem.eigen import eigen_layer
from curvmem.factors import (
    Factors,
    batched,
    collect,
    collection_data,
    write_layer_files,
)
from curvmem.io import cost, write_cost
from curvmem.model import identity_record, mlp_modules, model_id
from curvmem.schema import layer_cost, layer_path, read_layer
from curvmem.world.corpus import parse_shard, shard_bounds

DEFINITION = (
    "For every unordered pair of factor sets and module: kept_jaccard = |S1 & S2| / |S1 | S2| of "
    "the pairs kept at rho (edit.select_pairs; pairs matched by eigenvalue rank index, which is "
    "arbitrary among near-equal eigenvalues); kept_projector = sum_{(i,j) in S1, (k,l) in S2} "
    "(U_G1^T U_G2)_ik^2 (U_A1^T U_A2)_jl^2 / sqrt(|S1||S2|), the cosine between the projectors onto "
    "the kept Kronecker subspaces (basis-free); top-k eigenvectors of A and G: principal angles "
    "arccos(svd(U1[:, :k]^T U2[:, :k])) in degrees, overlap = sum cos^2 / k. kind: 'data' (same "
    "seed, other tokens), 'seed' (same tokens, other label seed), 'both'.")


def parse_slice(text: str) -> tuple[int, str, int]:
    """'TOKENS,K/N,SEED' -> (tokens, 'k/n', seed): what `collect --tokens --shard --seed` takes."""
    parts = [x.strip() for x in str(text).split(",")]
    try:
        tokens, shard, seed = int(parts[0]), parts[1], int(parts[2])
        parse_shard(shard)
    except (ValueError, IndexError):
        raise ValueError(f"--slice '{text}' must look like TOKENS,K/N,SEED (e.g. 20000,0/2,0)"
                         ) from None
    if len(parts) != 3 or tokens < 1:
        raise ValueError(f"--slice '{text}' must look like TOKENS,K/N,SEED with TOKENS >= 1")
    return tokens, shard, seed


def _segments(spans) -> list[tuple[int, int]]:
    """The pieces between every start and stop of `spans` that some span covers: each span is
    a union of pieces, so each piece is collected once for all spans."""
    cuts = sorted({x for span in spans for x in span})
    return [(a, b) for a, b in zip(cuts, cuts[1:])
            if any(start <= a and b <= stop for start, stop in spans)]


def collect_slices(model, model_path, data, slices: dict, layers, modules, *, seq_len: int,
                   batch_size: int, fisher: str = "sampled", dtype: str = "float32",
                   trust_remote_code: bool = False) -> dict:
    """Eigen files DIR/layer_<L>.nc for each `slices` entry {DIR: (tokens, shard, seed)}, as
    `collect --tokens N --shard k/n --seed s` then `eigen` would write them, in one process.

    The items of a budget N are a prefix of a larger budget's (`factors.collection_data`), and
    the sampled labels are seeded per item index, so the slices of one seed are unions of
    pieces of one item list: each piece is collected once and the slices' factors are their
    pieces' token-weighted means (float64, as `merge`). Returns {DIR: positions collected}."""
    t0 = time.perf_counter()
    targets = mlp_modules(model, layers, modules)
    budgets = sorted({tokens for tokens, _, _ in slices.values()})
    sources = {n: collection_data(model_path, data, n, seq_len, trust_remote_code)
               for n in budgets}
    whole = sources[budgets[-1]]
    for n, src in sources.items():  # the prefix property the pieces rely on
        got, want = src.cut(0, src.n_items), whole.cut(0, src.n_items)
        pairs = zip(got, want) if isinstance(got, tuple) else [(got, want)]
        if src.n_items > whole.n_items or not all(torch.equal(a, b) for a, b in pairs):
            raise ValueError(f"{data}: the first {n} tokens are not a prefix of the first "
                             f"{budgets[-1]}; collect these slices separately")
    spans = {d: shard_bounds(sources[n].n_items, shard) for d, (n, shard, _) in slices.items()}
    pieces, seconds = {}, {}
    for seed in sorted({s for _, _, s in slices.values()}):
        for a, b in _segments([spans[d] for d, (_, _, s) in slices.items() if s == seed]):
            t = time.perf_counter()
            pieces[(seed, a, b)] = collect(model, batched(whole.cut(a, b), batch_size), targets,
                                           whole.task, fisher=fisher, seed=seed,
                                           dtype=getattr(torch, dtype), first_index=a)
            seconds[(seed, a, b)] = time.perf_counter() - t
    setup = time.perf_counter() - t0 - sum(seconds.values())
    identity, mid = identity_record(model), model_id(model_path)
    written = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k, (out, (n, shard, seed)) in enumerate(slices.items()):
            start, stop = spans[out]
            mine = [key for key in pieces if key[0] == seed and start <= key[1]
                    and key[2] <= stop]
            total = sum(pieces[key].n_tokens for key in mine)
            means = Factors(*({name: sum(getattr(pieces[key], side)[name].double()
                                         * pieces[key].n_tokens for key in mine) / total
                               for name in getattr(pieces[mine[0]], side)}
                              for side in ("A", "G")), total)
            means.A = {key: v.to(getattr(torch, dtype)) for key, v in means.A.items()}
            means.G = {key: v.to(getattr(torch, dtype)) for key, v in means.G.items()}
            factor_dir = Path(tmp) / str(k)
            layers_written = write_layer_files(factor_dir, means, targets, {
                "model_id": mid, **identity, "fisher": fisher, "n_tokens": total,
                "seq_len": whole.seq_len, "corpus_fingerprint": sources[n].fingerprint,
                "seed": seed, "shard": shard, "task": whole.task.name, "data": str(data),
                "dtype": dtype}, setup / len(slices) + sum(seconds[key] for key in mine))
            for layer in layers_written:
                with cost() as c:
                    eigen_layer(layer_path(factor_dir, layer), layer_path(out, layer))
                # beside each eigen file, as `eigen` writes it: its factors' cost and its own
                made = layer_cost(layer_path(factor_dir, layer))
                write_cost(layer_path(out, layer),
                           {"seconds": round(made["seconds"] + c["seconds"], 3),
                            "peak_rss_mb": max(made["peak_rss_mb"], c["peak_rss_mb"]),
                            "eigen_seconds": c["seconds"]})
            written[str(out)] = total
    return written


def principal_angles(U1, U2, k: int) -> np.ndarray:
    """Principal angles (radians, ascending) between the spans of the first k columns."""
    s = np.linalg.svd(np.asarray(U1, np.float64)[:, :k].T @ np.asarray(U2, np.float64)[:, :k],
                      compute_uv=False)
    return np.arccos(np.clip(s, -1.0, 1.0))


def kept_projector_cosine(S1, S2, UG1, UG2, UA1, UA2) -> float:
    """⟨P_S1, P_S2⟩_F / √(|S1||S2|) for P_S = Σ_{(i,j)∈S} u_i u_iᵀ ⊗ v_j v_jᵀ."""
    og = (np.asarray(UG1, np.float64).T @ np.asarray(UG2, np.float64)) ** 2
    oa = (np.asarray(UA1, np.float64).T @ np.asarray(UA2, np.float64)) ** 2
    inner = float((S1 * (og @ S2.astype(np.float64) @ oa.T)).sum())
    return inner / np.sqrt(float(S1.sum()) * float(S2.sum()))


def compare_modules(g1: dict, g2: dict, rho: float, top_k: int) -> dict:
    S1 = select_pairs(g1["G_eigenvalues"], g1["A_eigenvalues"], rho)
    S2 = select_pairs(g2["G_eigenvalues"], g2["A_eigenvalues"], rho)
    out = {"kept_jaccard": float((S1 & S2).sum() / (S1 | S2).sum()),
           "kept_projector": kept_projector_cosine(S1, S2, g1["G_eigenvectors"],
                                                   g2["G_eigenvectors"], g1["A_eigenvectors"],
                                                   g2["A_eigenvectors"]),
           "kept_pairs": [int(S1.sum()), int(S2.sum())]}
    for side in ("A", "G"):
        k = min(top_k, len(g1[f"{side}_eigenvalues"]))
        angles = principal_angles(g1[f"{side}_eigenvectors"], g2[f"{side}_eigenvectors"], k)
        out[f"{side}_top_k"] = k
        out[f"{side}_angles_deg"] = np.degrees(angles).tolist()
        out[f"{side}_overlap"] = float((np.cos(angles) ** 2).sum() / k)
    return out


def comparison_kind(a1: dict, a2: dict) -> str:
    same_seed = a1.get("seed") == a2.get("seed")
    same_data = (a1.get("shard") or "") == (a2.get("shard") or "") and \
        a1.get("n_tokens") == a2.get("n_tokens") and \
        a1.get("corpus_fingerprint") == a2.get("corpus_fingerprint")
    if same_seed and same_data:
        return "same"
    return "seed" if same_data else ("data" if same_seed else "both")


def stability(sets: dict, layers, modules, rho: float = 0.6, top_k: int = 16) -> dict:
    """`sets`: {name: eigen directory}; compares every unordered pair of sets."""
    rho = check_rho(rho)
    if len(sets) < 2:
        raise ValueError("stability needs at least two factor sets (--set NAME=DIR)")
    if top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {top_k}")
    layers = sorted({int(x) for x in layers})
    files = {(name, layer): read_layer(layer_path(d, layer), "eigen", modules=list(modules))
             for name, d in sets.items() for layer in layers}
    for name in sets:  # all sets must describe the same weights
        fp = files[(name, layers[0])].attrs["model_fingerprint"]
        first = files[(next(iter(sets)), layers[0])].attrs["model_fingerprint"]
        if fp != first:
            raise ValueError(f"--set {name}: model fingerprint {fp} differs from {first}")
    info = {name: {k: files[(name, layers[0])].attrs.get(k)
                   for k in ("n_tokens", "seed", "shard", "fisher", "corpus_fingerprint")}
            for name in sets}
    comparisons = []
    for n1, n2 in itertools.combinations(sets, 2):
        per_module = []
        for layer in layers:
            for name in modules:
                per_module.append({"layer": layer, "module": name,
                                   **compare_modules(files[(n1, layer)].groups[name],
                                                     files[(n2, layer)].groups[name], rho, top_k)})
        mean = {m: float(np.mean([r[m] for r in per_module]))
                for m in ("kept_jaccard", "kept_projector", "A_overlap", "G_overlap")}
        comparisons.append({"sets": [n1, n2], "kind": comparison_kind(info[n1], info[n2]),
                            "n_tokens": [info[n1]["n_tokens"], info[n2]["n_tokens"]],
                            "mean": mean, "modules": per_module})
    return {"analysis": "stability", "definition": DEFINITION,
            "params": {"sets": {k: str(v) for k, v in sets.items()}, "layers": layers,
                       "modules": list(modules), "rho": rho, "top_k": top_k},
            "sets": info, "comparisons": comparisons}


def stability_figure(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = (("kept_jaccard", "kept pairs: Jaccard (index-matched)"),
               ("kept_projector", "kept pairs: projector cosine (basis-free)"),
               ("A_overlap", f"top-{result['params']['top_k']} eigvecs of A: Σcos²/k"),
               ("G_overlap", f"top-{result['params']['top_k']} eigvecs of G: Σcos²/k"))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.6), sharey=True)
    styles = {"data": ("tab:blue", "o"), "seed": ("tab:orange", "s"), "both": ("tab:green", "^"),
              "same": ("grey", "x")}
    for ax, (metric, title) in zip(axes, metrics):
        for kind, (colour, marker) in styles.items():
            comps = [c for c in result["comparisons"] if c["kind"] == kind]
            if not comps:
                continue
            x = [min(c["n_tokens"]) for c in comps]
            ax.scatter(x, [c["mean"][metric] for c in comps], color=colour, marker=marker,
                       s=36, label={"data": "disjoint tokens", "seed": "other label seed",
                                    "both": "both differ", "same": "same"}[kind], zorder=3)
            for c, xi in zip(comps, x):  # faint: each module
                ax.scatter([xi] * len(c["modules"]), [r[metric] for r in c["modules"]],
                           color=colour, marker=marker, s=8, alpha=0.3)
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("tokens per factor set (smaller of the two)")
        ax.set_title(title, fontsize=9)
    axes[0].set_ylabel(f"similarity (ρ = {result['params']['rho']:g})")
    axes[0].legend(fontsize=7)
    mods = sorted({module_label(r["layer"], r["module"]) for c in result["comparisons"]
                   for r in c["modules"]})
    fig.suptitle("Eigenbasis stability vs tokens (big markers: mean over " + ", ".join(mods)
                 + ")", y=1.03, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
