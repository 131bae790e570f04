"""The vision report: the paper's Table 2 beside ours, the selection rule, the sweep figure."""

from __future__ import annotations

import numpy as np

from curvmem import io
from curvmem.edit.build import layer_set_label
from curvmem.report.figures import RECIPE_MARKERS, recipe_order, shade
from curvmem.report.paper import PAPER_TABLE2

# --------------------------------------------------------------------------- report


def _row(res: dict) -> dict:
    row = {k: res.get(k) for k in ("memorized", "train_gt_acc", "clean_train_acc", "val_acc")}
    edit = res.get("edit")
    if edit:
        row["method"] = edit.get("method")
        row["spec"] = edit.get("spec")
    return row


def selection_score(row: dict) -> float:
    """The selection rule, on TRAINING images only: clean training accuracy minus memorized
    fraction (keep what fits the clean labels, drop what fits the noisy ones). Validation
    accuracy never enters."""
    return (row["clean_train_acc"] or 0.0) - (row["memorized"] or 0.0)


def select(models: dict, method: str):
    """Name of the best edit of `method` by `selection_score`; ties go to the first given."""
    cands = [n for n, r in models.items() if r.get("method") == method]
    return max(cands, key=lambda n: selection_score(models[n])) if cands else None


def summarize(entries: list[tuple[str, dict]]) -> dict:
    """{"models": {name: row}, "selected": {"kfac": name, "svd": name}, ...}."""
    names = [n for n, _ in entries]
    if "base" not in names:
        raise ValueError("report-vit needs an entry named 'base' (the unedited model)")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate entry names in {names}")
    models = {}
    for name, res in entries:
        missing = [k for k in ("memorized", "val_acc", "clean_train_acc", "train_gt_acc")
                   if k not in res]
        if missing:
            raise ValueError(f"entry '{name}' is not an `evaluate vit` result (lacks {missing})")
        if name == "base" and res.get("edit"):
            raise ValueError("the 'base' entry has an edit applied; give the unedited model")
        if name != "base" and not res.get("edit"):
            raise ValueError(f"entry '{name}' has no edit; only 'base' may be unedited")
        models[name] = _row(res)
    return {"models": models,
            "selected": {"kfac": select(models, "kfac"), "svd": select(models, "svd")},
            "selection_rule": "max(clean_train_acc - memorized) over training images; "
                              "validation is never used to choose",
            "paper_table2_percent": PAPER_TABLE2}


def _pct(x):
    return "–" if x is None else f"{100 * x:.1f}"


def table_markdown(summary: dict) -> str:
    """The paper's Table 2 (Baseline / SVD / K-FAC) with ours beside, then the whole sweep."""
    models, sel = summary["models"], summary["selected"]
    lines = [("| method | ours: memorized % | paper | ours: train gt acc % | paper | "
              "ours: val acc % | paper | ours: clean train acc % | edit |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for label, name in (("Baseline", "base"), ("SVD", sel["svd"]), ("K-FAC", sel["kfac"])):
        paper = PAPER_TABLE2[label]
        r = models.get(name) if name else None
        if r is None:
            lines.append(f"| {label} | (not run) | {paper['memorized']} | | "
                         f"{paper['train_gt_acc']} | | {paper['val_acc']} | | |")
            continue
        lines.append(f"| {label} | {_pct(r['memorized'])} | {paper['memorized']} | "
                     f"{_pct(r['train_gt_acc'])} | {paper['train_gt_acc']} | {_pct(r['val_acc'])} | "
                     f"{paper['val_acc']} | {_pct(r['clean_train_acc'])} | "
                     f"{'' if name == 'base' else name} |")
    lines += ["", ("All entries (the SVD and K-FAC rows above are chosen by "
                   "max(clean train acc − memorized) on training images; validation is not "
                   "used):"), "",
              "| entry | method | memorized % | train gt acc % | clean train acc % | val acc % |",
              "|---|---|---|---|---|---|"]
    for name, r in models.items():
        lines.append(f"| {name} | {r.get('method', 'base')} | {_pct(r['memorized'])} | "
                     f"{_pct(r['train_gt_acc'])} | {_pct(r['clean_train_acc'])} | "
                     f"{_pct(r['val_acc'])} |")
    return "\n".join(lines) + "\n"


def _edit_knob(record: dict) -> float | None:
    """The largest per-module value of an edit spec: its rho (K-FAC) or drop fraction (SVD).

    Unlike `baselines.knob`, a top-level "rho" is not read (`curvmem edit` writes only
    {layer: {module: value}}): a spec holding only that gets no label on the figure."""
    values = [v for mods in (record.get("spec") or {}).values() if isinstance(mods, dict)
              for v in mods.values()]
    return max(values) if values else None


def plot_sweep(summary: dict, path) -> None:
    """Left: memorized vs validation accuracy for every entry (the trade-off). Right: the four
    metrics of base and the selected SVD and K-FAC edits beside the paper's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, sel = summary["models"], summary["selected"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5.2))
    # one line per method and layer set through its knob values (rho, drop), labelled at points
    colours = {"kfac": "tab:blue", "svd": "tab:orange"}
    names = {"kfac": "K-FAC", "svd": "SVD"}
    curves = {}
    for name, r in models.items():
        if name != "base" and r["memorized"] is not None and r["val_acc"] is not None:
            key = (str(r.get("method") or "?"), layer_set_label(r.get("spec") or {}))
            curves.setdefault(key, []).append((_edit_knob(r), name, r))
    order = sorted(curves, key=lambda k: (k[0] != "kfac", k[0], recipe_order(k[1])))
    for method in dict.fromkeys(m for m, _ in order):
        keys = [k for k in order if k[0] == method]
        for i, key in enumerate(keys):
            pts = sorted(curves[key], key=lambda p: (p[0] is None, p[0] or 0))
            colour = shade(colours.get(method, "tab:gray"),  # a lone curve: the plain hue
                           i / (len(keys) - 1) if len(keys) > 1 else 0.5)
            xs = [100 * r["memorized"] for _, _, r in pts]
            ys = [100 * r["val_acc"] for _, _, r in pts]
            ax.plot(xs, ys, color=colour, marker=RECIPE_MARKERS[i % len(RECIPE_MARKERS)],
                    markersize=7, label=f"{names.get(method, method)} {key[1]}".strip(), zorder=3)
            for (value, name, _), x, y in zip(pts, xs, ys):
                if value is not None:
                    ax.annotate(f"{value:g}", (x, y), fontsize=7, color=colour,
                                xytext=(-14 if method == "svd" else 4, 3),
                                textcoords="offset points")
                if name in sel.values():
                    ax.scatter([x], [y], s=220, facecolors="none", edgecolors="red",
                               linewidths=1.5, zorder=5)
    base = models["base"]
    if base["memorized"] is not None and base["val_acc"] is not None:  # None: no noisy labels
        ax.scatter(100 * base["memorized"], 100 * base["val_acc"], marker="*", s=220,
                   facecolors="none", edgecolors="black", label="base", zorder=4)
    ax.scatter([], [], s=120, facecolors="none", edgecolors="red", label="selected")
    ax.set_xlim(-3, 103)  # the whole 0-100 range, so a small reduction looks small
    ax.set_xlabel("memorized noisy training labels (%)  ← better")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Edit sweep: memorization vs generalization\n(numbers: rho or SVD drop; red "
                 "ring: selected on training images)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)  # points crowd at high memorization (right)

    keys = [("memorized", "memorized"), ("train_gt_acc", "train gt acc"),
            ("val_acc", "val acc")]
    rows = [("Baseline", "base"), ("SVD", sel["svd"]), ("K-FAC", sel["kfac"])]
    width = 0.13
    for j, (label, name) in enumerate(rows):
        ours = [100 * (models[name][k] or 0) if name else 0 for k, _ in keys]
        paper = [PAPER_TABLE2[label][k] for k, _ in keys]
        xs = np.arange(len(keys)) + (2 * j - 2.5) * width
        c = ["black", "tab:orange", "tab:blue"][j]
        bx.bar(xs, ours, width, color=c, label=f"{label} (ours)")
        bx.bar(xs + width, paper, width, color=c, alpha=0.35, hatch="//",
               label=f"{label} (paper)")
    bx.set_xticks(np.arange(len(keys)), [t for _, t in keys])
    bx.set_ylabel("%")
    bx.set_ylim(0, 105)
    bx.set_title("Table 2: ours (digits, tiny ViT) vs paper (ImageNet, ViT-B/16)")
    bx.legend(fontsize=7, ncol=3, loc="upper center")
    bx.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with io.atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
