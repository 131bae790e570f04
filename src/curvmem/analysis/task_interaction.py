"""Per-task interaction (the paper's Fig. 4): each task group's activation ratio per curvature
band against clean text, beside the group's retention under the selected edit.

Groups: a task row's "category/subcategory" where it has a subcategory, else its category.
Inputs of a group: every position of its items' prompt + " " + answer (teacher-forced); clean:
every position of held-out blocks. Retention (edited ÷ base accuracy) comes from the summary that
`curvmem report-lm` writes (`tasks`, and `subtasks` for subcategories). Spearman's rank
correlation across the task groups, per band, pairs the ratio (averaged over the analysed modules)
with the retention: the paper's reading is that groups leaning on low-curvature directions lose
the most. With fewer than MIN_GROUPS groups it is descriptive (a rank correlation over 5 points
moves with one point); its permutation p-value is given either way. Memorization (quotes, with the
untargeted retention) is drawn for reference and never counted in the correlation.
"""

from __future__ import annotations

import itertools
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
    "groups: category/subcategory of task rows with a subcategory, else category. "
    "ratio[group][band] = mean_{group positions} ||y_B(a)|| / mean_{clean positions} "
    "||y_B(a)||, y_B as in activation_ratio; group positions: all positions of "
    "prompt + ' ' + answer of its task items; clean: all positions of held-out blocks; "
    "'memorization': the suffix-predicting positions of the memorized items given (the workflow: "
    "quotes). retention = edited / base (tasks: accuracy, subtasks for a subcategory; "
    "memorization: untargeted strict) of the summary's selected edit. spearman[family][band]: "
    "rank correlation (average ranks for ties) across the task groups with a retention "
    "(memorization excluded) of the ratio (mean over modules) and the retention; spearman_p: "
    "two-sided permutation p (exact enumeration up to 8 groups, else 20000 permutations, seed 0); "
    "descriptive = fewer than 8 groups.")

MIN_GROUPS = 8  # task groups below which the correlation is descriptive only
MEMORIZATION = "memorization"


def _ranks(v) -> np.ndarray:
    """Ranks 0..n-1, ties sharing their mean rank."""
    v = np.asarray(v, np.float64)
    order = np.argsort(v, kind="stable")
    r = np.empty(v.size)
    r[order] = np.arange(v.size, dtype=np.float64)
    for value in np.unique(v):
        r[v == value] = r[v == value].mean()
    return r


def spearman(x, y) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None below 3 points or no spread."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.size < 3:
        return None
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def spearman_permutation_p(x, y, n_random: int = 20000, exact_up_to: int = 8,
                           seed: int = 0) -> float | None:
    """Two-sided permutation p of Spearman's ρ: the share of pairings of x with a permutation of
    y whose |ρ| reaches the observed |ρ|.

    Args:
        x: one value per group.
        y: one value per group.
        n_random: random permutations when there are more groups than `exact_up_to`.
        exact_up_to: groups up to which every permutation is enumerated.
        seed: the random permutations' seed.

    Returns:
        The p-value, or None where ρ is undefined.
    """
    rho = spearman(x, y)
    if rho is None:
        return None
    rx, ry = _ranks(x), _ranks(y)
    rx = (rx - rx.mean()) / rx.std()
    if len(rx) <= exact_up_to:
        perms = np.array(list(itertools.permutations(range(len(ry)))))
    else:
        rng = np.random.default_rng(seed)
        perms = np.array([rng.permutation(len(ry)) for _ in range(n_random)])
    py = ry[perms]
    py = (py - py.mean(axis=1, keepdims=True)) / py.std(axis=1, keepdims=True)
    rhos = (rx * py).mean(axis=1)
    return float(np.mean(np.abs(rhos) >= abs(rho) - 1e-12))


def subcategory_retention(summary: dict, name: str) -> dict:
    """Edited ÷ base accuracy per "category/subcategory" of the summary's `subtasks` (empty
    when its task file had no subcategories); None where the base accuracy is 0 or absent."""
    base = summary["models"]["base"].get("subtasks") or {}
    edited = summary["models"][name].get("subtasks") or {}
    return {s: edited[s] / base[s] if base.get(s) and edited.get(s) is not None else None
            for s in base}


def task_group(row: dict) -> str:
    """'category/subcategory', or the category of a row without a subcategory."""
    sub = row.get("subcategory")
    return f"{row['category']}/{sub}" if sub else str(row["category"])


def task_items(rows, tokenizer, max_per_group: int) -> dict:
    """{group: items}, at most `max_per_group` per group, in file order; groups sorted."""
    out = defaultdict(list)
    for row in rows:
        group = task_group(row)
        if len(out[group]) >= max_per_group:
            continue
        ids = tokenizer(f"{row['prompt']} {str(row['answer']).strip()}",
                        add_special_tokens=False)["input_ids"]
        out[group].append({"ids": ids, "positions": list(range(len(ids))), "kind": group})
    return dict(sorted(out.items()))


def task_interaction(model, tokenizer, eigen: dict, layers, modules, task_rows, clean_texts,
                     retention: dict, selected: str, memorized_rows=None,
                     bands=BANDS, max_per_category: int = 40, max_clean_blocks: int = 40,
                     block_len: int = 64, prefix_len: int = 64, suffix_len: int = 48,
                     batch_size: int = 16) -> dict:
    """Each task group's band ratio against held-out text, beside its retention.

    Args:
        model: the language model.
        tokenizer: its tokenizer.
        eigen: `load_eigen`'s eigenbases of the modules.
        layers: blocks analysed.
        modules: MLP module names inside a block.
        task_rows: task rows (category, prompt, answer, optional subcategory).
        clean_texts: held-out texts.
        retention: {group: edited ÷ base} (categories, "category/subcategory" and
            "memorization"; report.lm.retention with subcategory_retention).
        selected: the edit's name (recorded).
        memorized_rows: memorized rows of the reference point (the workflow: quotes), or None.
        bands: band edges.
        max_per_category: items per task group (and memorized items per kind).
        max_clean_blocks: held-out blocks.
        block_len: tokens per held-out block.
        prefix_len: memorized prefix tokens of rows given as text.
        suffix_len: memorized suffix tokens of rows given as text.
        batch_size: sequences per forward pass.

    Returns:
        The JSON-able result; its `definition` says what was computed.
    """
    bands = check_bands(bands)
    targets = mlp_modules(model, layers, modules)
    groups = task_items(task_rows, tokenizer, max_per_category)
    if MEMORIZATION in groups:
        raise ValueError(f"a task group is named '{MEMORIZATION}', the memorized reference's name")
    if memorized_rows is not None:
        groups[MEMORIZATION] = memorized_items(memorized_rows, tokenizer, prefix_len,
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
    kept = {c: retention.get(c) for c in cats}
    tested = [c for c in cats if c != MEMORIZATION and kept[c] is not None]
    corr, pvals = {}, {}
    for f in FAMILIES:
        xs = [[mean_ratio[c][f][b] for c in tested] for b in range(len(bands))]
        corr[f] = [spearman(x, [kept[c] for c in tested]) for x in xs]
        pvals[f] = [spearman_permutation_p(x, [kept[c] for c in tested]) for x in xs]
    return {"analysis": "task_interaction", "definition": DEFINITION,
            "params": {"layers": sorted({m.layer for m in targets}),
                       "modules": sorted({m.name for m in targets}),
                       "bands": [list(b) for b in bands], "selected": selected,
                       "max_per_category": max_per_category, "max_clean_blocks": max_clean_blocks,
                       "block_len": block_len},
            "band_labels": [band_label(*b) for b in bands],
            "grouping": "category/subcategory where a row has a subcategory, else category",
            "categories": cats, "tested_groups": tested,
            "retention": kept,
            "mean_ratio": {c: {f: v.tolist() for f, v in mean_ratio[c].items()} for c in cats},
            "spearman": corr, "spearman_p": pvals, "spearman_n": len(tested),
            "min_groups_for_inference": MIN_GROUPS, "descriptive": len(tested) < MIN_GROUPS,
            "modules": per_module}


def task_interaction_figure(result: dict, path, family: str = "kfac_pairs") -> None:
    """Per band: each task group's ratio against its retention, Spearman's ρ and its p over the
    task groups (memorization drawn grey, not counted); 'descriptive' below MIN_GROUPS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, cats = result["band_labels"], result["categories"]
    tested = set(result.get("tested_groups", cats))
    fig, axes = plt.subplots(1, len(labels), figsize=(3.8 * len(labels), 3.8), sharey=True)
    colours = plt.get_cmap("tab20")
    for b, (ax, label) in enumerate(zip(np.atleast_1d(axes), labels)):
        for k, c in enumerate(cats):
            r, kept = result["mean_ratio"][c][family][b], result["retention"][c]
            if kept is None:
                continue
            counted = c in tested
            ax.scatter(r, kept, color=colours(k % 20) if counted else "0.6", s=36,
                       marker="o" if counted else "X", label=c)
            ax.annotate(c, (r, kept), fontsize=6, xytext=(3, 3), textcoords="offset points",
                        color="k" if counted else "0.4")
        rho = result["spearman"][family][b]
        p = (result.get("spearman_p") or {}).get(family, [None] * len(labels))[b]
        text = "–" if rho is None else f"{rho:.2f}" + ("" if p is None else f", p = {p:.2f}")
        ax.set_title(f"K-FAC band {label}\nSpearman ρ = {text} (n = {result['spearman_n']})",
                     fontsize=9)
        ax.axvline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("group ÷ clean mean ‖band output‖")
    np.atleast_1d(axes)[0].set_ylabel(f"retention under {result['params']['selected']}\n"
                                      "(edited ÷ base)")
    n, need = result["spearman_n"], result.get("min_groups_for_inference", MIN_GROUPS)
    status = (f"DESCRIPTIVE: {n} task groups < {need}, no inference" if n < need
              else f"{n} task groups")
    fig.suptitle("Per-task activation ratio vs retention (ratio averaged over edited modules; "
                 f"grey ×: memorization, not in ρ) — {status}", y=1.04, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
