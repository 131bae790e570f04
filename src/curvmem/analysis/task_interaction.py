"""Per-task interaction (the paper's Fig. 4): each task category's activation ratio per curvature
band against clean text, beside the category's retention under the selected edit.

Inputs of a category: every position of its items' prompt + " " + answer (teacher-forced); clean:
every position of held-out blocks. Retention (edited ÷ base accuracy) comes from the summary that
`curvmem report-lm` writes. Spearman's rank correlation across categories, per band, pairs the
ratio (averaged over the analysed modules) with the retention: the paper's reading is that
categories leaning on low-curvature directions lose the most.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from curvmem.analysis.activation_ratio import FAMILIES, group_band_norms
from curvmem.analysis.common import (
    BANDS,
    band_label,
    check_bands,
    clean_items,
    memorized_items,
    save_figure,
)

# Existing curvmem names used here:
from curvmem.model import mlp_modules

DEFINITION = (
    "ratio[category][band] = mean_{category positions} ||y_B(a)|| / mean_{clean positions} "
    "||y_B(a)||, y_B as in activation_ratio; category positions: all positions of "
    "prompt + ' ' + answer of its task items; clean: all positions of held-out blocks; "
    "'memorization': the suffix-predicting positions of memorized items. retention = edited / "
    "base (tasks: accuracy; memorization: untargeted strict) of the summary's selected edit. "
    "spearman[family][band]: rank correlation across categories of the ratio (mean over modules) "
    "and the retention.")


def spearman(x, y) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None below 3 points or no spread."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.size < 3:
        return None

    def ranks(v):
        order = np.argsort(v, kind="stable")
        r = np.empty(v.size)
        r[order] = np.arange(v.size, dtype=np.float64)
        for value in np.unique(v):  # ties share their mean rank
            r[v == value] = r[v == value].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def task_items(rows, tokenizer, max_per_category: int) -> dict:
    out = defaultdict(list)
    for row in rows:
        cat = str(row["category"])
        if len(out[cat]) >= max_per_category:
            continue
        ids = tokenizer(f"{row['prompt']} {str(row['answer']).strip()}",
                        add_special_tokens=False)["input_ids"]
        out[cat].append({"ids": ids, "positions": list(range(len(ids))), "kind": cat})
    return dict(sorted(out.items()))


def task_interaction(model, tokenizer, eigen: dict, layers, modules, task_rows, clean_texts,
                     retention: dict, selected: str, memorized_rows=None,
                     bands=BANDS, max_per_category: int = 40, max_clean_blocks: int = 40,
                     block_len: int = 64, prefix_len: int = 64, suffix_len: int = 48,
                     batch_size: int = 16) -> dict:
    bands = check_bands(bands)
    targets = mlp_modules(model, layers, modules)
    groups = task_items(task_rows, tokenizer, max_per_category)
    if memorized_rows is not None:
        groups["memorization"] = memorized_items(memorized_rows, tokenizer, prefix_len,
                                                 suffix_len, max_per_category)
    groups["clean"] = clean_items(clean_texts, tokenizer, block_len, range(block_len),
                                  max_clean_blocks)
    norms = group_band_norms(model, targets, eigen, groups, bands, batch_size)
    cats = [g for g in groups if g != "clean"]
    per_module, mean_ratio = [], {c: {f: np.zeros(len(bands)) for f in FAMILIES} for c in cats}
    for (layer, name), by_group in norms.items():
        ratios = {c: {f: [x / k for x, k in zip(by_group[c][f], by_group["clean"][f])]
                      for f in FAMILIES} for c in cats}
        per_module.append({"layer": layer, "module": name, "ratio": ratios,
                           "n_positions": {g: v["n"] for g, v in by_group.items()}})
        for c in cats:
            for f in FAMILIES:
                mean_ratio[c][f] += np.asarray(ratios[c][f]) / len(norms)
    kept = retention
    both = [c for c in cats if kept.get(c) is not None]
    corr = {f: [spearman([mean_ratio[c][f][b] for c in both], [kept[c] for c in both])
                for b in range(len(bands))] for f in FAMILIES}
    return {"analysis": "task_interaction", "definition": DEFINITION,
            "params": {"layers": sorted({m.layer for m in targets}),
                       "modules": sorted({m.name for m in targets}),
                       "bands": [list(b) for b in bands], "selected": selected,
                       "max_per_category": max_per_category, "max_clean_blocks": max_clean_blocks,
                       "block_len": block_len},
            "band_labels": [band_label(*b) for b in bands],
            "categories": cats,
            "retention": {c: kept.get(c) for c in cats},
            "mean_ratio": {c: {f: v.tolist() for f, v in mean_ratio[c].items()} for c in cats},
            "spearman": corr, "spearman_n": len(both),
            "modules": per_module}


def task_interaction_figure(result: dict, path, family: str = "kfac_pairs") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, cats = result["band_labels"], result["categories"]
    fig, axes = plt.subplots(1, len(labels), figsize=(3.4 * len(labels), 3.4), sharey=True)
    colours = plt.get_cmap("tab10")
    for b, (ax, label) in enumerate(zip(np.atleast_1d(axes), labels)):
        for k, c in enumerate(cats):
            r, kept = result["mean_ratio"][c][family][b], result["retention"][c]
            if kept is None:
                continue
            ax.scatter(r, kept, color=colours(k), s=40, label=c)
            ax.annotate(c, (r, kept), fontsize=7, xytext=(3, 3), textcoords="offset points")
        rho = result["spearman"][family][b]
        ax.set_title(f"K-FAC band {label}\nSpearman ρ = " + ("–" if rho is None else f"{rho:.2f}")
                     + f" (n = {result['spearman_n']})", fontsize=9)
        ax.axvline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("category ÷ clean mean ‖band output‖")
    np.atleast_1d(axes)[0].set_ylabel(f"retention under {result['params']['selected']}\n"
                                      "(edited ÷ base)")
    fig.suptitle("Per-task activation ratio vs retention (ratio averaged over edited modules)",
                 y=1.04, fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)
