"""Figures for the LM report: retention per category (the paper's Figure 3) and the edit sweep;
and what the compare and ViT figures share: one curve per recipe, in order, in shades of a hue."""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from curvmem.io import atomic_output
from curvmem.report.paper import PAPER_RETENTION, TASK_CATEGORIES
from curvmem.report.selection import retention

CATEGORY_LABELS = {"closed_book": "closed-book\nfacts", "open_book": "open-book\nfacts",
                   "arithmetic": "arithmetic\n(paper: math)", "logic": "logic",
                   "memorization": "memorization\n(untargeted strict)"}


RECIPE_MARKERS = ("o", "s", "D", "^", "v", "P", "X", "<", ">")


def shade(colour, t: float):
    """`colour` darkened (t = 0) through lightened (t = 1), so one method's curves keep its hue."""
    import matplotlib.colors

    rgb = matplotlib.colors.to_rgb(colour)
    f = -0.45 + 0.9 * t
    return tuple(c * (1 + f) if f < 0 else c + (1 - c) * f for c in rgb)


def recipe_order(recipe: str):
    """Sort key of recipe labels by their numbers: L1, L4, L11, L4+5, L4+5+6; 5 before 50 epochs."""
    numbers = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", recipe)]
    return len(numbers), numbers, recipe


def log_x_if_wide(ax, values, ratio: float = 2.5) -> bool:
    """A log x-axis when the values span more than `ratio`x, so one wrecked control (perplexity
    +900 %) does not squash the curves that matter into the left edge. Returns whether it did."""
    import matplotlib.ticker

    values = [v for v in values if v]
    if not values or max(values) <= ratio * min(values):
        return False
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())  # 20, 30, 50, 100, ...
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    return True


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


def _kfac_sweep_lines(models: dict) -> dict[str, list[tuple[float, str]]]:
    """The plain K-FAC sweep grouped by layer set: {"L5+6": [(rho, name), ...] by rho}."""
    lines: dict[str, list[tuple[float, str]]] = {}
    for name, m in models.items():
        spec = m.get("spec") or {}
        if (m.get("method") != "kfac" or not spec
                or not all(isinstance(mods, dict) for mods in spec.values())):
            continue
        rhos = {r for mods in spec.values() for r in mods.values()}
        if len(rhos) != 1:  # a mixed-rho spec is not a point on a rho line
            continue
        label = "L" + "+".join(str(k) for k in sorted(spec, key=int))
        lines.setdefault(label, []).append((rhos.pop(), name))
    return {k: sorted(v) for k, v in sorted(lines.items(), key=lambda kv: (len(kv[0]), kv[0]))}


# controls and baselines: one grey marker each, so the K-FAC lines stay readable
_OTHER_MARKERS = ("X", "P", "*", "D", "^", "v", "<", ">", "s", "h", "p", "d")


SWEEP_PANELS = (("forget", "forget (read by BSN and the selection)"),
                ("forget_validation", "forget-validation (held out: read by nothing)"),
                ("untargeted", "quotes (untargeted), last 8 words"),
                ("untargeted_long", "long quotes, 48-token suffix"))


def sweep_figure(summary: dict, path, max_ppl_rise: float | None = None) -> None:
    """Strict recitation against held-out perplexity, one panel per memorized set present
    (SWEEP_PANELS). Each K-FAC layer set is a line through its rho values (labelled at the
    points); controls and baselines are single markers; each method's selected edit is circled."""
    models = summary["models"]
    base_ppl = models["base"]["perplexity"]
    lines = _kfac_sweep_lines(models)
    in_lines = {name for pts in lines.values() for _, name in pts}
    others = [n for n in models if n != "base" and n not in in_lines]
    colors = plt.get_cmap("tab10")
    panels = [(s, t) for s, t in SWEEP_PANELS if models["base"].get(s)]
    n_cols = 2 if len(panels) > 1 else 1
    n_rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(6 * n_cols, 4 * n_rows), sharex=True,
                             sharey=True, squeeze=False)
    picks = {s["selected"] for s in (summary.get("selection") or {}).values() if s["selected"]}
    picks |= {summary["selected"]} if summary.get("selected") else set()
    for i_panel, (split, title) in enumerate(panels):
        row, col = divmod(i_panel, n_cols)
        ax = axes[row, col]

        def strict(name, split=split):
            m = models[name].get(split)
            return None if not m or m.get("strict") is None else 100 * m["strict"]

        for i, (label, pts) in enumerate(lines.items()):
            xy = [(models[n]["perplexity"], strict(n), rho) for rho, n in pts
                  if strict(n) is not None]
            ax.plot([x for x, _, _ in xy], [y for _, y, _ in xy], "-o", ms=4, lw=1.2,
                    color=colors(i % 10), label=f"K-FAC {label}")
            for x, y, rho in xy:
                ax.annotate(f"{rho:g}", (x, y), fontsize=6, xytext=(2, 3),
                            textcoords="offset points", color=colors(i % 10))
        for k, name in enumerate(others):
            if strict(name) is not None:
                ax.scatter([models[name]["perplexity"]], [strict(name)], s=45, color="0.35",
                           marker=_OTHER_MARKERS[k % len(_OTHER_MARKERS)], label=name,
                           zorder=3)
        ax.scatter([base_ppl], [strict("base")], marker="o", s=60, facecolors="none",
                   edgecolors="k", label="base", zorder=3)
        for sel in sorted(picks):
            if strict(sel) is not None:
                ax.scatter([models[sel]["perplexity"]], [strict(sel)], s=220,
                           facecolors="none", edgecolors="r", lw=1.5,
                           label=f"selected: {sel}", zorder=4)
        if max_ppl_rise is not None:
            ax.axvline(base_ppl * (1 + max_ppl_rise), color="0.5", lw=0.8, ls=":",
                       label=f"selection limit (+{100 * max_ppl_rise:.0f} % perplexity)")
        ax.axvline(base_ppl, color="k", lw=0.6, ls="--")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.25)
        if row == n_rows - 1:
            ax.set_xlabel("held-out perplexity (mean over batches of exp(batch loss))")
        if row == col == 0:  # the axes share x
            log_x_if_wide(ax, [m.get("perplexity") for m in models.values()])
        if col == 0:
            ax.set_ylabel("strict recitation (%)")
    for k in range(len(panels), n_rows * n_cols):
        axes.flat[k].set_visible(False)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
               title="numbers at points: rho", title_fontsize=8)
    fig.suptitle("Edit sweep: memorization against perplexity (dashed: base perplexity)")
    fig.tight_layout()
    _save(fig, path)
