"""The comparison of all methods: every edit beside the base model and the paper's Table 1.

Reads `results/lm_summary.json` (written by `curvmem report-lm`): memorization, perplexity and task
retention of each edit, and the cost of producing it from the summary's cost file (a separate
cost table, `compare_costs.md`, beside the comparison), plus a Pareto figure (untargeted strict recitation
against perplexity, one curve per method and recipe: BSN's training length, an edit's layer set).

The verdict compares whole Pareto fronts, not hand-picked points: for each method, the lowest
recitation (on the reported sets: forget-validation and quotes) reachable at or below each
perplexity, averaged over the perplexity range both fronts cover.
"""

from __future__ import annotations

import math
from pathlib import Path

from curvmem import io
from curvmem.edit.build import layer_set_label
from curvmem.report.costs import cost_table_path, markdown_table, model_costs
from curvmem.report.figures import RECIPE_MARKERS, log_x_if_wide, recipe_order, shade
from curvmem.report.paper import PAPER_TABLE1_ROWS, TASK_CATEGORIES

# Each method's knob, in the order the spec keys are looked up, and the table/plot label.
KNOBS = {
    "kfac": ("rho", ("rho",)),
    "kfac-bottom": ("rho", ("rho",)),
    "kfac-random": ("rho", ("rho",)),
    "kfac-shard": ("rho", ("rho",)),
    "svd": ("drop", ("svd_drop", "drop", "fraction")),
    "bsn": ("ratio", ("ratio",)),
}
METHOD_ORDER = ("base", "kfac", "svd", "bsn", "kfac-bottom", "kfac-random", "kfac-shard")


def _number(x, keys=("value", "mean", "accuracy", "score", "perplexity")):
    """A metric as a float: a number, or the first numeric entry of a dict among `keys`."""
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, dict):
        for k in keys:
            if k in x:
                return _number(x[k], keys)
    return None


def knob(method: str, spec: dict):
    """(knob name, value) of an edit from its sidecar spec; value None when absent.

    BSN's spec names its knob (`ratio`); `curvmem edit` writes {layer: {module: value}} (ρ or the
    SVD drop fraction). Where modules got different values, the knob is their largest.
    """
    name, keys = KNOBS.get(method, KNOBS["kfac"] if method.startswith("kfac-") else ("", ()))
    spec = spec or {}
    for k in keys:
        v = _number(spec.get(k))
        if v is not None:
            return name, v
    per_module = [_number(v) for mods in spec.values() if isinstance(mods, dict)
                  for v in mods.values()]
    per_module = [v for v in per_module if v is not None]
    return name, (max(per_module) if per_module else None)


def curve_variant(spec: dict) -> str:
    """What tells curves of one method apart: BSN's training length ("50 epochs"), or the layer
    set of an edit written by `curvmem edit` ("L4+5"); "" when neither is recorded."""
    epochs = _number(spec.get("epochs"))
    if epochs is not None:
        return f"{epochs:g} epochs"

    return layer_set_label(spec)


def comparison_rows(summary: dict) -> list[dict]:
    """One row per model of an lm_summary: metrics, knob, task retention relative to base."""
    models = summary.get("models") if isinstance(summary, dict) else None
    if not isinstance(models, dict) or "base" not in models:
        raise ValueError("the summary needs {\"models\": {\"base\": ..., \"<edit>\": ...}} as "
                         "written by `curvmem report-lm`; it has no base model")
    base_tasks = {c: _number((models["base"].get("tasks") or {}).get(c)) for c in TASK_CATEGORIES}
    rows = []
    for name, m in models.items():
        if not isinstance(m, dict):
            raise ValueError(f"summary entry '{name}' is not an object")  # noqa: TRY004
        method = "base" if name == "base" else str(m.get("method") or name)
        knob_name, knob_value = knob(method, m.get("spec") or {})
        picks = {v.get("selected") for v in (summary.get("selection") or {}).values()}
        row = {"name": name, "method": method, "knob_name": knob_name, "knob": knob_value,
               # report-lm's selection rule's pick for this method (validation data only)
               "selected": name in picks or name == summary.get("selected")}
        for split in ("forget", "forget_validation", "untargeted", "control"):
            metrics = m.get(split) or {}
            for key in ("strict", "loose", "avg_distance"):
                row[f"{split}_{key}"] = _number(metrics.get(key))
        # genre competence (never-trained items of the memorized kinds) and the removal rule
        row["genre_control"] = _number(((m.get("genre") or {}).get("control") or {})
                                       .get("suffix_loss"))
        row["removes"] = {s: (v or {}).get("holds")
                          for s, v in (m.get("removes_memorization") or {}).items()}
        row["perplexity"] = _number(m.get("perplexity"))
        row["ndcg10"] = _number(m.get("ndcg10"))
        for cat in TASK_CATEGORIES:
            v, b = _number((m.get("tasks") or {}).get(cat)), base_tasks[cat]
            row[f"{cat}_retention"] = 100 * v / b if v is not None and b else None
        rows.append(row)
    # One curve per recipe: BSN at 5 and at 50 epochs are two curves, and so are K-FAC edits of
    # different layer sets (a knob sweep only makes a curve within one recipe).
    variants = [curve_variant(m.get("spec") or {}) for m in models.values()]
    recipes = {}
    for r, v in zip(rows, variants):
        recipes.setdefault(r["method"], set()).add(v)
    for r, v in zip(rows, variants):
        r["recipe"] = v if len(recipes[r["method"]]) > 1 else ""
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    rows.sort(key=lambda r: (rank.get(r["method"], len(rank)), r["method"],
                             r["knob"] if r["knob"] is not None else math.inf, r["name"]))
    return rows


FRONT_METRICS = ("forget_validation_strict", "untargeted_strict")


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (perplexity, recitation) points no other point beats in both, by perplexity."""
    front, best = [], math.inf
    for ppl, rec in sorted(points):
        if rec < best:
            front.append((ppl, rec))
            best = rec
    return front


def best_at(front: list[tuple[float, float]], ppl: float) -> float | None:
    """The lowest recitation a front reaches at perplexity <= ppl (None below its first point)."""
    reached = [rec for p, rec in front if p <= ppl]
    return min(reached) if reached else None


def front_gap(rows: list[dict], method: str, other: str, metric: str, n_grid: int = 64) -> dict:
    """Mean (method's front - other's front) recitation over the perplexities both reach, on a
    log grid from the larger of their first points to the largest point of either."""
    def front(m):
        return pareto_front([(r["perplexity"], r[metric]) for r in rows if r["method"] == m
                             and r["perplexity"] is not None and r.get(metric) is not None])

    a, b = front(method), front(other)
    out = {"metric": metric, "methods": [method, other], "fronts": {method: a, other: b}}
    if not a or not b:
        return {**out, "gap": None, "verdict": "no front"}
    lo, hi = max(a[0][0], b[0][0]), max(a[-1][0], b[-1][0])
    grid = [lo * (hi / lo) ** (k / (n_grid - 1)) for k in range(n_grid)] if hi > lo else [lo]
    gap = sum(best_at(a, p) - best_at(b, p) for p in grid) / len(grid)
    verdict = (f"{method} lower" if gap < 0 else f"{other} lower" if gap > 0 else "equal")
    return {**out, "gap": gap, "range": [lo, hi], "verdict": verdict}


def front_verdicts(rows: list[dict]) -> dict:
    """K-FAC's front against SVD's and BSN's, on each reported recitation metric."""
    return {f"kfac_vs_{other}_{metric}": front_gap(rows, "kfac", other, metric)
            for other in ("bsn", "svd") for metric in FRONT_METRICS}


def _fmt(v, digits=1, scale=1.0):
    return "–" if v is None else f"{v * scale:.{digits}f}"


def _pct_scale(rows: list[dict]) -> float:
    """Strict/loose come as fractions (→ ×100) unless some value already exceeds 1 (percent)."""
    vals = [r[f"{s}_{k}"] for r in rows for s in ("forget", "forget_validation", "untargeted")
            for k in ("strict", "loose") if r[f"{s}_{k}"] is not None]
    return 1.0 if any(v > 1 for v in vals) else 100.0


def comparison_table(rows: list[dict], verdicts: dict, source: str = "") -> str:
    """Markdown: our Table 1 (with task retention), the verdict, the paper's Table 1."""
    pct = _pct_scale(rows)
    head = ("| entry | method | knob | forget strict % | forget-validation strict % | loose % | "
            "Avg Lev | quotes strict % | loose % | Avg Lev | PPL | nDCG@10 | closed-book | "
            "open-book | arithmetic | logic | Δ control loss | removes (forget-validation, "
            "quotes) |")
    lines = [f"## This run{f' ({source})' if source else ''}", "",
             ("Forget = the memorized documents given to the methods and read by the selection; "
             "forget-validation = their held-out half (the paper's Dolma validation column); "
             "quotes = the untargeted set, never given to any method (the paper's Quotes "
             "column). Task columns: test score as % of the base model's. Δ control loss: the "
             "suffix loss (nats/token) on never-trained documents of the memorized kinds minus "
             "the base's (genre competence lost); removes: the rule of "
             "curvmem.report.claims.removes_memorization. (selected) = the "
             "selection rule's pick for its method (validation data only). The cost of "
             "producing each edit is in the cost table beside this one."), "", head,
             "|" + "---|" * 18]
    for r in rows:
        k = "" if r["knob"] is None else f"{r['knob_name']}={r['knob']:g}"
        cells = [r["name"] + (" (selected)" if r["selected"] else ""), r["method"], k,
                 _fmt(r["forget_strict"], 1, pct), _fmt(r["forget_validation_strict"], 1, pct),
                 _fmt(r["forget_validation_loose"], 1, pct),
                 _fmt(r["forget_validation_avg_distance"], 3),
                 _fmt(r["untargeted_strict"], 1, pct), _fmt(r["untargeted_loose"], 1, pct),
                 _fmt(r["untargeted_avg_distance"], 3), _fmt(r["perplexity"], 2),
                 _fmt(r["ndcg10"], 3)]
        cells += [_fmt(r[f"{c}_retention"], 1) for c in TASK_CATEGORIES]
        cells += ["–" if r["genre_control"] is None else f"{r['genre_control']:+.3f}",
                  ", ".join({True: "yes", False: "no", None: "–"}[r["removes"].get(s)]
                            for s in ("forget_validation", "quotes")) if r["removes"] else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "**Pareto fronts** (lowest recitation reachable at or below each perplexity, "
              "averaged over the perplexity range both fronts reach; negative = K-FAC lower):", ""]
    for v in verdicts.values():
        a, b = v["methods"]
        if v["gap"] is None:
            lines.append(f"- {a} vs {b}, {v['metric']}: no front to compare")
            continue
        lines.append(f"- {a} vs {b}, {v['metric']}: mean gap {v['gap'] * pct:+.1f} points over "
                     f"PPL {v['range'][0]:.2f}–{v['range'][1]:.2f}: **{v['verdict']}**")
    lines += ["", "## The paper's Table 1 (Merullo et al. 2025, OLMo-2; not this run)", "",
              ("| model | method | Dolma strict % | loose % | Avg Lev | Quotes strict % | loose % "
              "| Avg Lev | PPL |"), "|" + "---|" * 9]
    for model, method, *v in PAPER_TABLE1_ROWS:
        cells = [f"{v[0]:g}", f"{v[1]:g}", f"{v[2]:.3f}", f"{v[3]:g}", f"{v[4]:g}",
                 f"{v[5]:.3f}", f"{v[6]:.2f}"]
        lines.append(f"| {model} | {method} | " + " | ".join(cells) + " |")
    lines += ["", ("Paper, nDCG@10 (7B): base 1.00, BSN 0.97, K-FAC 0.91, SVD 0.91. The paper "
              "reports no cost of producing the edits.")]
    return "\n".join(lines) + "\n"


def comparison_cost_table(rows: list[dict], costs: dict) -> str:
    """Markdown: the cost of producing each edit of the comparison, in its rows' order."""
    cells = []
    for r in rows:
        if r["method"] == "base":
            continue
        c = costs.get(r["name"]) or {}
        k = "" if r["knob"] is None else f"{r['knob_name']}={r['knob']:g}"
        cells.append([r["name"], r["method"], k, _fmt(_number(c.get("seconds")), 1),
                      _fmt(_number(c.get("peak_rss_mb")), 0)])
    return markdown_table(
        "Cost of producing each edit", ["entry", "method", "knob", "edit s", "peak MB"], cells,
        "Wall time and peak RSS of producing each edit (for K-FAC including the collection and "
        "eigendecomposition it builds on); measured, so they differ between runs.")


STYLES = {  # method -> (label, colour, marker, joined by a line)
    "kfac": ("K-FAC (top curvature)", "tab:blue", "o", True),
    "svd": ("SVD", "tab:orange", "s", True),
    "bsn": ("BalancedSubnet", "tab:green", "^", True),
    "kfac-bottom": ("control: K-FAC bottom", "tab:red", "v", False),
    "kfac-random": ("control: K-FAC random", "tab:purple", "X", False),
    "kfac-shard": ("control: K-FAC other shard", "tab:brown", "D", False),
}


def comparison_figure(rows: list[dict], path, verdicts: dict | None = None) -> None:
    """Untargeted strict recitation vs perplexity: one curve per method and recipe, base and controls marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    pct = _pct_scale(rows)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    drawable = [r for r in rows if r["method"] != "base" and r["perplexity"] is not None
                and r["untargeted_strict"] is not None]
    methods = list(dict.fromkeys(r["method"] for r in drawable))
    curves = sorted(dict.fromkeys((r["method"], r.get("recipe", "")) for r in drawable),
                    key=lambda c: (methods.index(c[0]), recipe_order(c[1])))
    base = next((r for r in rows if r["method"] == "base"), None)
    if base and base["perplexity"] is not None and base["untargeted_strict"] is not None:
        # drawn first and hollow, so an edit sitting on the base point stays visible
        ax.plot([base["perplexity"]], [base["untargeted_strict"] * pct], marker="*",
                markerfacecolor="none", markeredgecolor="black", markersize=20,
                linestyle="none", label="base model", zorder=1)
    n_recipes = {m: sum(1 for c in curves if c[0] == m) for m, _ in curves}
    seen = {}
    for i, (method, recipe) in enumerate(curves):
        pts = [r for r in drawable if r["method"] == method and r.get("recipe", "") == recipe]
        label, colour, marker, line = STYLES.get(
            method, (f"control: {method}", "tab:gray", "P", False) if method.startswith("kfac-")
            else (method, "tab:gray", "P", True))
        k = seen[method] = seen.get(method, -1) + 1
        if n_recipes[method] > 1:  # a method's recipes: shades of its colour, each its own marker
            colour = shade(colour, k / (n_recipes[method] - 1))
            marker = RECIPE_MARKERS[k % len(RECIPE_MARKERS)]
        pts.sort(key=lambda r: r["knob"] if r["knob"] is not None else math.inf)
        xs = [r["perplexity"] for r in pts]
        ys = [r["untargeted_strict"] * pct for r in pts]
        ax.plot(xs, ys, marker=marker, color=colour, label=f"{label}, {recipe}" if recipe else label,
                markersize=7, linestyle="-" if line else "none", alpha=0.85, zorder=2)
        for r, x, y in zip(pts, xs, ys):
            if r["knob"] is not None:  # labels of different methods stacked apart vertically
                ax.annotate(f"{r['knob']:g}", (x, y), textcoords="offset points",
                            xytext=(4, 5 + 9 * (i % 4)), fontsize=7, color=colour)
    log_x_if_wide(ax, [r["perplexity"] for r in rows])
    ax.margins(y=0.15)  # room for the knob labels above the points
    ax.set_xlabel("perplexity on held-out text (lower is better); point labels: the method's "
                  "knob (rho, drop, ratio)")
    ax.set_ylabel("quotes (untargeted) strict recitation, % (lower is better)")
    title = "Memorization removed vs. cost in perplexity (lower-left is better)"
    v = (verdicts or {}).get("kfac_vs_bsn_untargeted_strict")
    if v is not None and v["gap"] is not None:
        title += f"\nfronts, K-FAC vs BSN on quotes: mean gap {v['gap'] * pct:+.1f} points"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    with io.atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    plt.close(fig)


def compare(summary_path, figure=None, table=None) -> dict:
    """`curvmem compare`: rows, matched-perplexity verdict, figure and Markdown table."""
    for path, suffix, flag in ((figure, ".png", "--figure"), (table, ".md", "--table")):
        if path is not None and Path(path).suffix != suffix:
            raise ValueError(f"{flag} {path}: expected a {suffix} file")
    summary = io.read_json(summary_path)
    models = summary.get("models") if isinstance(summary, dict) else None
    if isinstance(models, dict) and not all(isinstance(m, dict) for m in models.values()):
        raise ValueError(f"--summary {summary_path}: each model must be an object, as "
                         "`curvmem report-lm` writes them")
    try:
        rows = comparison_rows(summary)
    except (AttributeError, TypeError, KeyError, ValueError) as e:  # a hand-edited summary
        raise ValueError(f"--summary {summary_path}: not a summary written by `curvmem "
                         f"report-lm` ({type(e).__name__}: {e})") from None
    verdicts = front_verdicts(rows)
    text = comparison_table(rows, verdicts, source=str(summary_path))
    costs = model_costs(summary, summary_path)
    cost_text = comparison_cost_table(rows, costs)
    if figure is not None:
        comparison_figure(rows, figure, verdicts)
    if table is not None:
        with io.atomic_output(table) as tmp:
            tmp.write_text(text)
        with io.atomic_output(cost_table_path(table)) as tmp:
            tmp.write_text(cost_text)
    return {"rows": rows, "verdicts": verdicts, "table": text, "costs": costs,
            "cost_table": cost_text}

