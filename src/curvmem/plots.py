"""Figures for the LM report: retention per category (the paper's Figure 3) and the edit sweep."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from curvmem.evaluate import PAPER_RETENTION, TASK_CATEGORIES, retention
from curvmem.store import atomic_output

CATEGORY_LABELS = {"closed_book": "closed-book\nfacts", "open_book": "open-book\nfacts",
                   "arithmetic": "arithmetic\n(paper: math)", "logic": "logic",
                   "memorization": "memorization\n(untargeted strict)"}


def _save(fig, path) -> None:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)


def retention_figure(summary: dict, path, names: list[str] | None = None) -> None:
    """Bars: edited ÷ base per category for each edit (default: the selected one, else all);
    grey bands: the paper's K-FAC 7B range per category."""
    edits = [n for n in summary["models"] if n != "base"]
    if names is None:
        names = [summary["selected"]] if summary.get("selected") else edits
    if not names:
        raise ValueError("the retention figure needs at least one edited entry besides 'base'")
    cats = list(TASK_CATEGORIES) + ["memorization"]
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    width = 0.8 / len(names)
    for i, cat in enumerate(cats):
        lo, hi = PAPER_RETENTION[cat]
        ax.fill_between([i - 0.45, i + 0.45], lo, hi, color="0.8", zorder=0,
                        label="paper K-FAC 7B range" if i == 0 else None)
    for k, name in enumerate(names):
        r = retention(summary, name)
        xs = [i - 0.4 + width * (k + 0.5) for i in range(len(cats))]
        ys = [r[c] if r[c] is not None else 0.0 for c in cats]
        ax.bar(xs, ys, width=width * 0.9, label=f"ours: {name}", zorder=2)
    ax.axhline(1.0, color="k", lw=0.8, ls="--", zorder=1)
    # a ratio of near-chance accuracies means little: show the base accuracy under each label
    base_tasks = summary["models"]["base"]["tasks"]
    labels = [CATEGORY_LABELS[c] + (f"\nbase acc {base_tasks[c]:.2f}"
                                    if base_tasks.get(c) is not None else "") for c in cats]
    ax.set_xticks(range(len(cats)), labels)
    ax.set_ylabel("edited ÷ base")
    ax.set_title("What a K-FAC edit keeps: accuracy retained per category")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_ylim(0, max(1.25, ax.get_ylim()[1]))
    _save(fig, path)


def sweep_figure(summary: dict, path, max_ppl_rise: float | None = None) -> None:
    """Strict recitation (forget and untargeted) against held-out perplexity, one point per edit."""
    models = summary["models"]
    base_ppl = models["base"]["perplexity"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, kind in zip(axes, ("random", "natural")):
        for split, marker in (("forget", "o"), ("untargeted", "s")):
            xs, ys = [], []
            for name, m in models.items():
                by_kind = m[split]["by_kind"][kind]
                if by_kind is None:
                    continue
                xs.append(m["perplexity"])
                ys.append(100 * by_kind["strict"])
                if split == "untargeted" and name != "base":
                    ax.annotate(name, (xs[-1], ys[-1]), fontsize=6, xytext=(3, 3),
                                textcoords="offset points")
            ax.scatter(xs, ys, marker=marker, label=f"{split} canaries", alpha=0.8)
        sel = summary.get("selected")
        if sel:
            m = models[sel]
            ax.scatter([m["perplexity"]], [100 * (m["untargeted"]["by_kind"][kind] or
                                                  {"strict": 0})["strict"]],
                       s=160, facecolors="none", edgecolors="r", label=f"selected: {sel}")
        ax.axvline(base_ppl, color="k", lw=0.8, ls="--", label="base perplexity")
        if max_ppl_rise is not None:
            ax.axvline(base_ppl * (1 + max_ppl_rise), color="0.5", lw=0.8, ls=":",
                       label=f"selection limit (+{100 * max_ppl_rise:.0f} %)")
        ax.set_xlabel("held-out perplexity (mean over batches of exp(batch loss))")
        ax.set_title(f"{kind} canaries")
    axes[0].set_ylabel("strict recitation (%)")
    axes[1].legend(fontsize=7, loc="upper right")
    fig.suptitle("Edit sweep: memorization vs perplexity")
    _save(fig, path)
