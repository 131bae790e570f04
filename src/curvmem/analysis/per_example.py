"""Per-example curvature: where each sequence's own gradient lies in the K-FAC eigenbasis.

For one sequence and module, grad W = Σ_t g_t a_tᵀ (g_t: gradient of the sequence's loss at the
module's output at position t, a_t: its input; summed over all positions). Its projection on the
eigenbasis, P = U_Gᵀ (grad W) U_A, has P_ij² = the example's squared gradient along pair (i, j),
and Σ P_ij² = ‖grad W‖²_F (U_G, U_A orthogonal). Per example we report the share of P's squared
mass in each curvature band (bands by share of pairs), ‖grad W‖², and the aggregate curvature
along the example's own direction, κ = Σ λᵢμⱼ P_ij² / Σ P_ij². The paper's claim: a memorized
example is sharp along its own directions (large ‖grad W‖²) that average out over the data to
low aggregate curvature (small κ, mass in the bottom bands).

The primary contrast is like with like: memorized documents against never-trained documents of
the same kinds, memorized quotes against never-trained quotes (`same_kind`); held-out text, one
block per memorized item read at that item's positions, is the secondary column (`heldout`):
any genre the curvature data holds less of than prose would look different from prose.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from curvmem.analysis.common import (
    BANDS,
    N_RESAMPLES,
    band_label,
    by_length,
    check_bands,
    contrast_kinds,
    frozen_with_hooks,
    heldout_twins,
    interval,
    load_sets,
    module_label,
    nan_to_none,
    pair_share_masks,
    resample_within,
    save_figure,
)

# Existing curvmem names used here:
from curvmem.model import mlp_modules, model_device

DEFINITION = (
    "loss(sequence) = sum over its scored positions of cross-entropy with the gold next token "
    "(memorized and control items: the positions predicting their suffix; held-out twins: one "
    "block of held-out text per memorized item, cut to its length and scored at its positions). "
    "grad_W = sum_t g_t a_t^T over all positions; P = U_G^T grad_W U_A. band_share[band] = "
    "sum_{(i,j) in band} P_ij^2 / ||grad_W||_F^2 with bands by share of pairs sorted by "
    "lambda_i mu_j; grad_sq = ||grad_W||_F^2; kappa = sum lambda_i mu_j P_ij^2 / sum P_ij^2 "
    "(aggregate K-FAC curvature along the example's gradient). A group's statistic (kappa, "
    "grad_sq, bottom-band share): the median within each kind, then the plain mean over kinds. "
    "same_kind[contrast]: memorized vs never-trained control items of the same kinds "
    "(kappa_median_ratio, grad_sq_median_ratio: memorized / control; bottom_share_median_diff: "
    "memorized - control); heldout[side][contrast]: the side's items vs the held-out twins. "
    "ci95: 2.5/97.5 percentiles over bootstrap resamples of items within each kind, each group "
    "resampled apart.")


def example_gradients(model, modules, items: list[dict], batch_size: int = 8):
    """Yield (item index, {(layer, name): grad W (d_out, d_in) float64}) per item.

    The weights stay frozen; gradients are taken at the modules' outputs and contracted with their
    inputs, so one backward pass per batch gives every example's own gradient (examples of a batch
    do not interact)."""
    device = model_device(model)
    with frozen_with_hooks(model, modules) as (inputs, outputs):
        for idx in by_length(items, batch_size):
            ids = torch.tensor([items[i]["ids"] for i in idx], device=device)
            emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
            logits = model(inputs_embeds=emb).logits.float()
            loss = 0.0
            for b, i in enumerate(idx):
                pos = torch.tensor(items[i]["positions"], device=device)
                loss = loss + F.cross_entropy(logits[b, pos], ids[b, pos + 1], reduction="sum")
            keys = list(outputs)
            grads = torch.autograd.grad(loss, [outputs[k] for k in keys])
            for b, i in enumerate(idx):
                yield i, {k: g[b].double().T @ inputs[k][b].detach().double()
                          for k, g in zip(keys, grads)}
            inputs.clear()
            outputs.clear()


def project(grad_w: torch.Tensor, eig: dict) -> torch.Tensor:
    """P = U_Gᵀ grad_W U_A."""
    return eig["UG"].T @ grad_w.cpu() @ eig["UA"]


def band_masks_and_curvature(eigen: dict, keys, bands) -> tuple[dict, dict]:
    """Per module: the band masks (by share of pairs) and the pair curvatures λᵢμⱼ."""
    masks = {k: [torch.as_tensor(M) for M in pair_share_masks(eigen[k]["lam"], eigen[k]["mu"],
                                                               bands)] for k in keys}
    curv = {k: torch.as_tensor(np.outer(eigen[k]["lam"], eigen[k]["mu"])) for k in keys}
    return masks, curv


def band_record(sq: torch.Tensor, masks, curv: torch.Tensor) -> dict:
    """One example's band shares of its squared projection P², ‖∇W‖² and κ."""
    total = float(sq.sum())
    return {"band_share": [float(sq[M].sum()) / total if total else None for M in masks],
            "grad_sq": total,
            "kappa": float((sq * curv).sum()) / total if total else None}


def group_summary(recs: list[dict]) -> dict:
    """Count, median and mean band shares, median ‖∇W‖² and κ of a group's records."""
    shares = np.array([r["band_share"] for r in recs], dtype=np.float64)
    return {"n": len(recs),
            "band_share_median": np.nanmedian(shares, axis=0).tolist(),
            "band_share_mean": np.nanmean(shares, axis=0).tolist(),
            "grad_sq_median": float(np.median([r["grad_sq"] for r in recs])),
            "kappa_median": float(np.nanmedian([np.nan if r["kappa"] is None else r["kappa"]
                                                for r in recs]))}


STATS = ("kappa", "grad_sq", "bottom_share")


def _stat_columns(recs: list[dict]) -> np.ndarray:
    """[n, 3]: κ, ‖∇W‖², bottom-band share per record (NaN where undefined)."""
    return np.array([[np.nan if r["kappa"] is None else r["kappa"], r["grad_sq"],
                      np.nan if r["band_share"][-1] is None else r["band_share"][-1]]
                     for r in recs], dtype=np.float64)


def kind_balanced_median(values, kinds) -> np.ndarray:
    """The median within each kind, then the plain mean over kinds.

    Args:
        values: [..., N, K] per-item values (leading axes: e.g. bootstrap resamples).
        kinds: [N] each item's kind.

    Returns:
        [..., K].
    """
    values = np.asarray(values, np.float64)
    kinds = np.asarray(kinds, dtype=object)
    return np.mean([np.nanmedian(values[..., kinds == k, :], axis=-2)
                    for k in sorted(set(kinds.tolist()))], axis=0)


def median_contrast(mem_recs, mem_kinds, ref_recs, ref_kinds, rng,
                    n_resamples: int = N_RESAMPLES) -> dict:
    """Memorized against a reference group: κ and ‖∇W‖² median ratios, the bottom-band share's
    median difference (each a kind-balanced median), with bootstrap intervals.

    Args:
        mem_recs: the memorized items' band records.
        mem_kinds: their kinds.
        ref_recs: the reference items' band records.
        ref_kinds: their kinds.
        rng: a numpy Generator (the resamples).
        n_resamples: bootstrap resamples (items resampled within kind, each group apart).

    Returns:
        {"kappa_median": {"memorized", "control"}, "kappa_median_ratio", "grad_sq_median",
        "grad_sq_median_ratio", "bottom_share_median", "bottom_share_median_diff", "ci95",
        "n"}.
    """
    mem, ref = _stat_columns(mem_recs), _stat_columns(ref_recs)

    def compare(m, r):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.stack([m[..., 0] / r[..., 0], m[..., 1] / r[..., 1], m[..., 2] - r[..., 2]],
                            axis=-1)

    pm, pr = kind_balanced_median(mem, mem_kinds), kind_balanced_median(ref, ref_kinds)
    point = compare(pm, pr)
    i = resample_within(mem_kinds, n_resamples, rng)
    j = resample_within(ref_kinds, n_resamples, rng)
    ci = interval(compare(kind_balanced_median(mem[i], mem_kinds),
                          kind_balanced_median(ref[j], ref_kinds)))
    out = {}
    for k, (stat, how) in enumerate(zip(STATS, ("ratio", "ratio", "diff"))):
        out[f"{stat}_median"] = {"memorized": float(pm[k]), "control": float(pr[k])}
        out[f"{stat}_median_{how}"] = float(point[k])
    out["ci95"] = {f"{stat}_median_{how}": ci[k]
                   for k, (stat, how) in enumerate(zip(STATS, ("ratio", "ratio", "diff")))}
    out["n"] = {"memorized": len(mem_recs), "control": len(ref_recs)}
    return nan_to_none(out)


# the groups of sequences: (group, side, set); held-out twins of the memorized set's items
GROUPS = (("memorized", "memorized", "documents"), ("control", "control", "documents"),
          ("clean", "heldout", "documents"), ("memorized_quotes", "memorized", "quotes"),
          ("control_quotes", "control", "quotes"), ("clean_quotes", "heldout", "quotes"))


def per_example_curvature(model, tokenizer, eigen: dict, layers, modules, memorized_rows,
                          clean_texts, control_rows=None, quote_rows=None,
                          control_quote_rows=None, bands=BANDS, prefix_len: int = 64,
                          suffix_len: int = 48, max_per_kind: int | None = None,
                          batch_size: int = 8, n_resamples: int = N_RESAMPLES) -> dict:
    """Each sequence's gradient in the K-FAC eigenbasis: memorized against never-trained items
    of the same kinds (primary) and against held-out text (secondary).

    Args:
        model: the language model.
        tokenizer: its tokenizer.
        eigen: `load_eigen`'s eigenbases of the modules.
        layers: blocks analysed.
        modules: MLP module names inside a block.
        memorized_rows: memorized documents (canaries_forget.jsonl), a `kind` each.
        clean_texts: held-out texts: one twin block per memorized item, at its shape.
        control_rows: never-trained documents of the same kinds (canaries_control.jsonl).
        quote_rows: memorized quotes (quotes.jsonl), or None.
        control_quote_rows: never-trained quotes (quotes_control.jsonl), or None.
        bands: band edges (check_bands).
        prefix_len: prefix tokens of rows given as text.
        suffix_len: suffix tokens of rows given as text.
        max_per_kind: items of each kind per file (None: every item).
        batch_size: sequences per backward pass.
        n_resamples: bootstrap resamples of the intervals.

    Returns:
        The JSON-able result; its `definition` says what was computed.
    """
    bands = check_bands(bands)
    if quote_rows is None and control_quote_rows is not None:
        raise ValueError("--control-quotes needs --quotes (the memorized quotes it controls)")
    targets = mlp_modules(model, layers, modules)
    sides = load_sets(tokenizer, memorized_rows, control_rows, quote_rows, control_quote_rows,
                       prefix_len, suffix_len, max_per_kind)
    kinds = contrast_kinds(sides)
    members = {}
    for name in sides["memorized"]:
        sides.setdefault("heldout", {})[name] = heldout_twins(
            sides["memorized"][name], clean_texts, tokenizer, len(sides["memorized"][name]),
            per_item=True, where="--clean")
    items = []
    for group, side, name in GROUPS:
        if name in sides.get(side, {}):
            members[group] = range(len(items), len(items) + len(sides[side][name]))
            items += sides[side][name]
    keys = [(m.layer, m.name) for m in targets]
    masks, curv = band_masks_and_curvature(eigen, keys, bands)
    rows = {k: [None] * len(items) for k in keys}
    for i, grads in example_gradients(model, targets, items, batch_size):
        for k in keys:
            rows[k][i] = band_record(project(grads[k], eigen[k]) ** 2, masks[k], curv[k])
    rng = np.random.default_rng(0)
    set_of = {group: name for group, _, name in GROUPS}
    results = []
    for key in keys:
        recs = rows[key]
        record = {"layer": key[0], "module": key[1]}
        for group, idx in members.items():
            by_kind = {}
            for kind in dict.fromkeys(items[i]["kind"] for i in idx):
                by_kind[kind] = group_summary([recs[i] for i in idx if items[i]["kind"] == kind])
            record[group] = {**group_summary([recs[i] for i in idx]), "by_kind": by_kind,
                             "examples": [{"id": items[i]["id"], "kind": items[i]["kind"],
                                           **recs[i]} for i in idx]}

        def pick(group, sub=None, recs=recs):
            idx = [i for i in members[group] if sub is None or items[i]["kind"] in sub]
            return [recs[i] for i in idx], [items[i]["kind"] for i in idx]

        same, heldout = {}, {"memorized": {}, "control": {}}
        for name, ks in kinds.items():
            mem_g, ctl_g = ("memorized", "control") if name == "documents" else (
                "memorized_quotes", "control_quotes")
            for contrast, sub in ([(name, ks)] if ks else []) + [(k, [k]) for k in ks]:
                same[contrast] = median_contrast(*pick(mem_g, sub), *pick(ctl_g, sub), rng,
                                                 n_resamples)
        for group, side, name in GROUPS:
            twin = next(g for g, s, n in GROUPS if s == "heldout" and n == name)
            if side == "heldout" or group not in members or twin not in members:
                continue
            all_kinds = list(dict.fromkeys(items[i]["kind"] for i in members[group]))
            for contrast, sub in [(name, None)] + [(k, [k]) for k in all_kinds]:
                heldout[side][contrast] = median_contrast(*pick(group, sub), *pick(twin), rng,
                                                          n_resamples)
        record["same_kind"], record["heldout"] = same, heldout
        results.append(record)
    contrasts = [c for name, ks in kinds.items() if ks for c in [name, *ks]]
    groups = [g for g, _, _ in GROUPS if g in members]
    return {"analysis": "per_example", "definition": DEFINITION,
            "params": {"layers": sorted({m.layer for m in targets}),
                       "modules": sorted({m.name for m in targets}),
                       "bands": [list(b) for b in bands], "prefix_len": prefix_len,
                       "suffix_len": suffix_len, "max_per_kind": max_per_kind,
                       "n_resamples": n_resamples,
                       "n_memorized": len(members["memorized"]),
                       "n_clean": len(members["clean"]),
                       "n_items": {g: len(members[g]) for g in groups},
                       "sets": {g: set_of[g] for g in groups}},
            "band_labels": [band_label(*b) for b in bands],
            "groups": groups, "contrasts": contrasts,
            "kinds": {name: list(dict.fromkeys(it["kind"] for it in v))
                      for name, v in sides["memorized"].items()},
            "mean_over_modules": {"same_kind": {
                c: {stat: nan_to_none(float(np.nanmean([np.nan if r["same_kind"][c][stat] is None
                                                   else r["same_kind"][c][stat]
                                                   for r in results])))
                    for stat in ("kappa_median_ratio", "grad_sq_median_ratio",
                                 "bottom_share_median_diff")}
                for c in contrasts}},
            "modules": results}


def band_share_boxes(ax, mod: dict, groups, n_bands: int, colours: dict,
                     span: float) -> np.ndarray:
    """Per band, a box of the examples' band shares for each group side by side (within `span`
    of the band's tick); returns the band positions."""
    x = np.arange(n_bands)
    width = span / len(groups)
    for k, group in enumerate(groups):
        shares = [[e["band_share"][b] for e in mod[group]["examples"]
                   if e["band_share"][b] is not None] for b in range(n_bands)]
        parts = ax.boxplot(shares, positions=x + (k - (len(groups) - 1) / 2) * width,
                           widths=width * 0.85, patch_artist=True, showfliers=False)
        for box in parts["boxes"]:
            box.set(facecolor=colours[group], alpha=0.6)
    return x


def per_example_figure(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mods, labels = result["modules"], result["band_labels"]
    groups = result.get("groups", ["memorized", "clean"])  # the first one is memorized
    fig, axes = plt.subplots(len(mods), 2, figsize=(11, 3.2 * len(mods)), squeeze=False)
    colours = dict(zip(groups, ("tab:red", "tab:blue", "tab:green")))
    for (ax_b, ax_s), mod in zip(axes, mods):
        x = band_share_boxes(ax_b, mod, groups, len(labels), colours, 0.7)
        for group in groups:
            ex = mod[group]["examples"]
            ax_s.scatter([e["grad_sq"] for e in ex], [e["kappa"] for e in ex], s=12,
                         color=colours[group], alpha=0.7, label=f"{group} (n = {len(ex)})")
        ax_b.set_xticks(x, labels, fontsize=8)
        ax_b.set_ylabel("share of ‖∇W‖² in band")
        ax_b.set_title(f"{module_label(mod['layer'], mod['module'])}: per-example gradient by "
                       "K-FAC band (" + ", ".join(f"{colours[g][4:]} {g.split('_')[0]}"
                                                  for g in groups) + ")", fontsize=9)
        ax_s.set_xscale("log")
        ax_s.set_yscale("log")
        ax_s.set_xlabel("per-example ‖∇W‖²_F (own sharpness)")
        ax_s.set_ylabel("κ: aggregate λμ along own gradient")
        ax_s.set_title("sharp alone, flat on average?", fontsize=9)
        ax_s.legend(fontsize=7)
    fig.suptitle(result.get("title", "Per-example curvature: memorized vs clean sequences"),
                 y=1.0, fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


GROUP_COLOURS = {"memorized": "tab:red", "control": "tab:purple", "clean": "tab:blue",
                 "memorized_quotes": "tab:red", "control_quotes": "tab:purple",
                 "clean_quotes": "tab:blue"}


def lm_per_example_figure(result: dict, path) -> None:
    """One row per module: band shares of memorized, never-trained and held-out documents; κ
    per kind, memorized beside never-trained (the same-kind contrast, with its median ratio);
    ‖∇W‖² against κ for every group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    mods, labels = result["modules"], result["band_labels"]
    docs = [g for g in ("memorized", "control", "clean") if g in result["groups"]]
    kinds = [(name, k) for name, ks in result["kinds"].items() for k in ks]
    fig, axes = plt.subplots(len(mods), 3, squeeze=False,
                             figsize=(5.0 + 5.0 + 1.0 * max(len(kinds), 4), 3.3 * len(mods)),
                             gridspec_kw={"width_ratios": [5, max(len(kinds), 4), 4]})
    for (ax_b, ax_k, ax_s), mod in zip(axes, mods):
        x = band_share_boxes(ax_b, mod, docs, len(labels), GROUP_COLOURS, 0.8)
        for group in docs:
            ax_b.plot([], [], color=GROUP_COLOURS[group], lw=6, alpha=0.6,
                      label=f"{group} documents (n = {mod[group]['n']})")
        ax_b.set_xticks(x, labels, fontsize=8)
        ax_b.set_ylabel("share of ‖∇W‖² in band")
        ax_b.set_title(f"{module_label(mod['layer'], mod['module'])}: per-example gradient by "
                       "K-FAC band", fontsize=9)
        ax_b.legend(fontsize=7)
        for j, (name, kind) in enumerate(kinds):
            mem_g, ctl_g = ("memorized", "control") if name == "documents" else (
                "memorized_quotes", "control_quotes")
            for off, group in ((-0.2, mem_g), (0.2, ctl_g)):
                if group not in mod:
                    continue
                ks = [e["kappa"] for e in mod[group]["examples"]
                      if e["kind"] == kind and e["kappa"] is not None]
                if ks:
                    parts = ax_k.boxplot([ks], positions=[j + off], widths=0.35,
                                         patch_artist=True, showfliers=False)
                    parts["boxes"][0].set(facecolor=GROUP_COLOURS[group], alpha=0.6)
            c = mod["same_kind"].get(kind)
            if c and c["kappa_median_ratio"] is not None:
                lo, hi = c["ci95"]["kappa_median_ratio"]
                ax_k.annotate(f"×{c['kappa_median_ratio']:.2f}\n[{lo:.2f}, {hi:.2f}]",
                              (j, 1.0), xycoords=("data", "axes fraction"), ha="center",
                              va="top", fontsize=6)
        ax_k.set_yscale("log")
        ax_k.set_xticks(range(len(kinds)), [k for _, k in kinds], fontsize=7, rotation=20)
        ax_k.set_xlim(-0.6, len(kinds) - 0.4)
        ax_k.set_ylabel("κ along own gradient")
        ax_k.set_title("same kind: memorized (red) vs never-trained (purple);\n"
                       "median ratio [95 % CI]", fontsize=8)
        ax_k.margins(y=0.25)
        for group in result["groups"]:
            ex = mod[group]["examples"]
            ax_s.scatter([e["grad_sq"] for e in ex], [e["kappa"] for e in ex], s=10,
                         color=GROUP_COLOURS[group], alpha=0.6,
                         marker="^" if group.endswith("quotes") else "o",
                         label=f"{group.replace('_', ' ')} (n = {len(ex)})")
        ax_s.set_xscale("log")
        ax_s.set_yscale("log")
        for axis in (ax_s.xaxis, ax_s.yaxis, ax_k.yaxis):  # minor labels crowd a short decade
            axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax_s.set_xlabel("per-example ‖∇W‖²_F (own sharpness)")
        ax_s.set_ylabel("κ: aggregate λμ along own gradient")
        ax_s.set_title("sharp alone, flat on average? (▲ quotes)", fontsize=9)
        ax_s.legend(fontsize=6)
    fig.suptitle("Per-example curvature: memorized vs never-trained text of the same kind "
                 "(primary) and held-out text (secondary)", y=1.0, fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)
