"""A multi-seed study, aggregated: each seed's run -> means with 95 % intervals and k-of-n claims.

Every seed's run (`seeds` in the config; curvmem.plan.seeded_config) has its own world, model,
factors and edits, and its own selection (validation data only). Across seeds this module reports,
for each number the README shows, the mean and the half-width of a 95 % Student-t interval
(mean ± t(0.975, n−1)·s/√n; with one seed, no interval); beside each recitation rate, the seeds'
own 95 % Wilson intervals (from the lowest lower bound to the highest upper bound: what one seed
can resolve, e.g. 0 of 52 items is [0–6.9 %]); perplexity changes as log ratios, shown as
exp(mean ± half-width) − 1, so an interval never runs below −100 %. Rows are fixed by rule, as
in curvmem.report.readme: each method's selected edit (which may differ between seeds: the
labels are listed), the K-FAC edit nearest the paper's depth, the task-weighted selection's
variant, the controls (the same edits in every seed), the paper's rows.

The claims and their rules live in curvmem.report.claims (versioned; each study is judged by the
rules its runs were made under, and the summary records which).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

from curvmem.report.claims import (
    METHOD_NAMES,
    METHODS,
    VIT_COMPARISON,
    band_means,
    control_names,
    control_reference,
    edit_numbers,
    judge,
    paper_depth_edit,
    ppl_rise,
    rules_label,
    selected,
)
from curvmem.report.compare import comparison_rows, front_verdicts
from curvmem.report.costs import is_cost_file, markdown_table, model_costs
from curvmem.report.lm import wilson
from curvmem.report.paper import PAPER_RETENTION, PAPER_TABLE1, PAPER_TABLE2, TASK_CATEGORIES
from curvmem.report.readme import PAPER_ACTIVATION, PAPER_STRESS

# the recitation rates a row shows, each with its seeds' Wilson intervals
RATES = ("forget_validation", "untargeted", "forget", "control", "control_quotes")

# Student-t 0.975 quantiles by degrees of freedom (no scipy needed for a dozen numbers)
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (1.96 beyond 30)."""
    if df < 1:
        raise ValueError("an interval needs at least two seeds")
    if df in _T975:
        return _T975[df]
    below = max(k for k in _T975 if k < df) if df < 30 else None
    if below is None:
        return 1.96
    above = min(k for k in _T975 if k > df)
    w = (df - below) / (above - below)  # linear in df between tabulated values (< 0.01 off)
    return _T975[below] * (1 - w) + _T975[above] * w


def interval(values: list[float | None]) -> dict:
    """{"mean", "half_width" (None with one value), "n", "values"} over the non-missing values."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "half_width": None, "n": 0, "values": values}
    mean = statistics.fmean(vals)
    half = (t975(len(vals) - 1) * statistics.stdev(vals) / math.sqrt(len(vals))
            if len(vals) > 1 else None)
    return {"mean": mean, "half_width": half, "n": len(vals), "values": values}


def cell(iv: dict, scale: float = 1.0, digits: int = 1, sign: bool = False) -> str:
    """'12.0 ± 3.4' (mean ± 95 % half-width), '12.0' with one seed, '–' with none."""
    if iv["mean"] is None:
        return "–"
    fmt = f"{{:{'+' if sign else ''}.{digits}f}}"
    text = fmt.format(iv["mean"] * scale)
    if iv["half_width"] is not None:
        text += f" ± {iv['half_width'] * scale:.{digits}f}"
    return text


# --------------------------------------------------------------------------- one seed's numbers


def ratio_cell(iv: dict, digits: int = 1) -> str:
    """A log ratio's interval as a change in %: '+47.0 % (+30.1 to +65.9)'; '–' with none."""
    if iv["mean"] is None:
        return "–"
    text = f"{100 * math.expm1(iv['mean']):+.{digits}f} %"
    if iv["half_width"] is not None:
        lo, hi = (100 * math.expm1(iv["mean"] + s * iv["half_width"]) for s in (-1, 1))
        text += f" ({lo:+.{digits}f} to {hi:+.{digits}f})"
    return text


def rate_cell(iv: dict, span: list | None, digits: int = 1) -> str:
    """'3.8 ± 2.1 [0.0–12.9]': a rate in % across seeds, then its seeds' Wilson span."""
    text = cell(iv, 100, digits)
    if span and iv["mean"] is not None:
        text += f" [{100 * span[0]:.{digits}f}–{100 * span[1]:.{digits}f}]"
    return text


def _split_wilson(split: dict | None) -> list | None:
    if not split or not split.get("n") or split.get("strict") is None:
        return None
    return split.get("wilson") or wilson(round(split["strict"] * split["n"]), split["n"])


def edit_record(summary: dict, name: str) -> dict:
    """edit_numbers plus what separates memorization from genre (curvmem.report.lm): suffix
    losses, gaps, genre competence, the log perplexity ratio and each rate's Wilson interval."""
    nums = edit_numbers(summary, name)
    if not nums:
        return {}
    models = summary["models"]
    m, base = models[name], models["base"]

    def get(*path):
        x = m
        for key in path:
            x = (x or {}).get(key)
        return x

    nums["control_quotes"] = get("control_quotes", "strict")
    for split in ("forget_validation", "untargeted", "control", "control_quotes"):
        nums[f"{split}_loss"] = get(split, "suffix_loss")
    for split in ("forget_validation", "untargeted", "control", "control_quotes"):
        nums[f"{split}_distance"] = get(split, "avg_distance")
    nums["gap_forget_validation"] = get("gap", "forget_validation", "suffix_loss")
    nums["gap_untargeted"] = get("gap", "untargeted", "suffix_loss")
    nums["genre_control"] = get("genre", "control", "suffix_loss")
    nums["genre_control_quotes"] = get("genre", "control_quotes", "suffix_loss")
    nums["log_ppl_ratio"] = (math.log(m["perplexity"] / base["perplexity"])
                             if m.get("perplexity") and base.get("perplexity") else None)
    nums["wilson"] = {f: _split_wilson(m.get(f)) for f in RATES}
    return nums


FIELDS = ("forget_validation", "untargeted", "forget", "control", "control_quotes", "ppl_rise",
          "log_ppl_ratio", "forget_validation_loss", "untargeted_loss", "control_loss",
          "control_quotes_loss", "forget_validation_distance", "untargeted_distance",
          "control_distance", "control_quotes_distance", "gap_forget_validation", "gap_untargeted",
          "genre_control", "genre_control_quotes", *TASK_CATEGORIES)


def _span(intervals: list) -> list | None:
    """The seeds' Wilson intervals as one span: lowest lower bound, highest upper bound."""
    have = [w for w in intervals if w]
    return [min(w[0] for w in have), max(w[1] for w in have)] if have else None


def row(runs: dict, seeds: list, pick: Callable[[int], str | None]) -> dict:
    """{field: interval over the seeds} of the edit `pick(seed)` of each seed (None: absent),
    with "wilson": {rate: the seeds' span}."""
    recs = {s: edit_record(runs[s]["lm"], pick(s)) if pick(s) else {} for s in seeds}
    out = {f: interval([recs[s].get(f) for s in seeds]) for f in FIELDS}
    out["wilson"] = {f: _span([(recs[s].get("wilson") or {}).get(f) for s in seeds])
                     for f in RATES}
    return out


def variant_picks(summary: dict) -> dict:
    """{method: pick} of the task-weighted selection (a reported variant; none in older
    summaries, whose primary selection was that rule)."""
    variant = (summary.get("selection_variants") or {}).get("task_weighted") or {}
    return {m: (variant.get(m) or {}).get("selected") for m in METHODS}


# --------------------------------------------------------------------------- across seeds


def amortised_cost(run: dict, method: str) -> dict | None:
    """Compute per edit of one method in one seed's run, in seconds: the mean edit time and, for
    K-FAC, the main factor set's collection and eigendecomposition shared by its sweep's edits.
    Edit times from the run's `lm_costs` (its lm_summary.cost.json), else from the summary's own
    fields (summaries an older curvmem wrote)."""
    s = run["lm"]
    costs = run.get("lm_costs") or model_costs(s)
    names = [n for n, m in s["models"].items() if m.get("method") == method]
    secs = [(costs.get(n) or {}).get("seconds") for n in names]
    secs = [x for x in secs if x is not None]
    if not secs:
        return None
    factors = (run.get("factor_seconds") or 0.0) if method == "kfac" else 0.0
    return {"edits": len(names), "edit_seconds": statistics.fmean(secs),
            "factor_seconds": factors,
            "per_edit_seconds": statistics.fmean(secs) + factors / len(names)}


def aggregate(runs: dict[int, dict]) -> dict:
    """{seed: {"lm": lm_summary, "vit": vit_summary?, "analyses": {...}?, "factor_seconds"?}} ->
    the seeds summary (every number as an `interval`, plus per-seed values and claims)."""
    if not runs:
        raise ValueError("no seed's run to aggregate")
    seeds = sorted(runs)
    out = {"seeds": seeds, "interval": "mean ± t(0.975, n-1)·s/√n over seeds"}
    version, claims = judge(runs)
    out["claims_version"], out["claims_rules"] = version, rules_label(version)
    picks = {s: selected(runs[s]["lm"]) for s in seeds}
    out["selected"] = {m: {str(s): picks[s][m] for s in seeds} for m in METHODS}
    out["selection_reads"] = sorted({r for s in seeds for v in
                                     (runs[s]["lm"].get("selection") or {}).values()
                                     for r in v.get("reads", [])})
    variants = {s: variant_picks(runs[s]["lm"]) for s in seeds}
    out["selected_variant"] = {m: {str(s): variants[s][m] for s in seeds} for m in METHODS}
    depth = {s: paper_depth_edit(runs[s]["lm"]) for s in seeds}
    out["paper_depth"] = {str(s): depth[s] for s in seeds}

    def over(fn: Callable[[int], float | None]) -> dict:
        return interval([fn(s) for s in seeds])

    base = row(runs, seeds, lambda s: "base")
    base["perplexity"] = over(lambda s: runs[s]["lm"]["models"]["base"]["perplexity"])
    for c in TASK_CATEGORIES:
        base[c] = over(lambda s, c=c: runs[s]["lm"]["models"]["base"]["tasks"].get(c))
    out["base"] = base
    out["methods"] = {m: row(runs, seeds, lambda s, m=m: picks[s][m]) for m in METHODS}
    for m in METHODS:
        out["methods"][m]["edits"] = max(
            sum(x.get("method") == m for x in runs[s]["lm"]["models"].values()) for s in seeds)
    out["paper_depth_row"] = row(runs, seeds, lambda s: depth[s]["name"] if depth[s] else None)
    out["variant_rows"] = {m: row(runs, seeds, lambda s, m=m: variants[s][m]) for m in METHODS}
    common = [n for n in control_names(runs[seeds[0]]["lm"])
              if all(n in runs[s]["lm"]["models"] for s in seeds)]
    ref = control_reference(runs[seeds[0]]["lm"])
    names = ([ref] if ref else []) + common
    out["controls"] = {n: row(runs, seeds, lambda s, n=n: n) for n in names}
    verdicts = {s: front_verdicts(comparison_rows(runs[s]["lm"])) for s in seeds}
    out["fronts"] = {k: over(lambda s, k=k: verdicts[s][k]["gap"]) for k in verdicts[seeds[0]]}
    out["claims"] = claims
    out["analyses"] = _aggregate_analyses(runs, seeds, picks)
    out["vit"] = _aggregate_vit(runs, seeds)
    return out


def aggregate_costs(runs: dict[int, dict]) -> dict:
    """The seeds summary's costs (for `<summary>.cost.json`): per method, the compute per edit,
    amortised (`amortised_cost`), as an interval over the seeds, and each seed's own."""
    seeds = sorted(runs)
    out = {"seeds": seeds, "methods": {}}
    for m in METHODS:
        costs = {s: amortised_cost(runs[s], m) for s in seeds}
        out["methods"][m] = {
            "per_edit_seconds": interval([c["per_edit_seconds"] if c else None
                                          for c in costs.values()]),
            "per_seed": {str(s): c for s, c in costs.items()}}
    return out


def cost_tables(costs: dict) -> str:
    """The README's cost table: compute per edit of each method, amortised, over the seeds."""
    n = len(costs["seeds"])
    rows = [[f"**{METHOD_NAMES[m]}**", cell(costs["methods"][m]["per_edit_seconds"])]
            for m in METHODS]
    return markdown_table(
        "Cost per edit", ["method", "s per edit (amortised)"], rows,
        f"Seeds {', '.join(map(str, costs['seeds']))} (n = {n}): mean ± 95 % interval of the "
        "wall seconds per edit: the mean edit time plus, for K-FAC, the main factor set's "
        "collection and eigendecomposition shared by its sweep's edits. Measured, so they differ "
        "between runs and machines.")


def _module_mean(analysis: dict, get) -> float | None:
    """The mean over the analysed modules of get(module); None where a module lacks it."""
    vals = [get(m) for m in analysis["modules"]]
    return None if not vals or any(v is None for v in vals) else statistics.fmean(vals)


def _same_kind(module: dict, contrast: str = "documents") -> dict | None:
    return (module.get("same_kind") or {}).get(contrast)


def _has_same_kind(analysis: dict | None) -> bool:
    """Whether an analysis compares memorized with never-trained items of the same kinds."""
    return bool(analysis) and all(_same_kind(m) for m in analysis["modules"])


def _aggregate_analyses(runs, seeds, picks) -> dict:
    out = {}
    for name, comparison in (("activation_ratio", "all"), ("vit_activation_ratio", VIT_COMPARISON)):
        have = [s for s in seeds if (runs[s].get("analyses") or {}).get(name)]
        if have:
            bands = {s: band_means(runs[s]["analyses"][name], comparison) for s in have}
            labels = runs[have[0]]["analyses"][name]["band_labels"]
            out[name] = {"band_labels": labels, **{
                fam: [interval([bands[s][fam][b] - 1 for s in have]) for b in range(len(labels))]
                for fam in ("kfac_pairs", "kfac_mass", "svd")}}
    have = [s for s in seeds if _has_same_kind((runs[s].get("analyses") or {})
                                               .get("activation_ratio"))]
    if have:
        ar = {s: runs[s]["analyses"]["activation_ratio"] for s in have}
        labels = ar[have[0]]["band_labels"]

        def same(s, fam, b=None):
            if b is None:
                return _module_mean(ar[s], lambda m: _same_kind(m)["full"]) - 1
            return _module_mean(ar[s], lambda m: _same_kind(m)[fam][b]) - 1

        out["activation_same_kind"] = {"band_labels": labels, "full": interval(
            [same(s, None) for s in have]), **{
                fam: [interval([same(s, fam, b) for s in have]) for b in range(len(labels))]
                for fam in ("kfac_pairs", "kfac_mass", "svd")}}
    have = [s for s in seeds if (runs[s].get("analyses") or {}).get("stress")]
    if have:
        stress = {}
        for m in METHODS:
            for when in ("original", "perturbed"):
                stress.setdefault(m, {})[when] = interval(
                    [runs[s]["analyses"]["stress"]["summary"].get(picks[s][m], {})
                     .get(when, {}).get("mean") if picks[s][m] else None for s in have])
        stress["base"] = {when: interval([runs[s]["analyses"]["stress"]["summary"]["base"][when]
                                          ["mean"] for s in have])
                          for when in ("original", "perturbed")}
        stress["n"] = sorted({runs[s]["analyses"]["stress"]["summary"]["base"].get("n")
                              or runs[s]["analyses"]["stress"]["params"].get("n_items")
                              for s in have} - {None})
        out["stress"] = stress
    have = [s for s in seeds if (runs[s].get("analyses") or {}).get("per_example")]
    if have:
        def per_example(s, group, what):
            mods = runs[s]["analyses"]["per_example"]["modules"]
            if any(group not in m for m in mods):
                return None
            if what == "kappa":
                return statistics.fmean(m[group]["kappa_median"] for m in mods)
            return statistics.fmean(m[group]["band_share_median"][-1] for m in mods)

        groups = ("memorized", "control", "clean")
        out["per_example"] = {f"{what}_{group}": interval([per_example(s, group, what)
                                                           for s in have])
                              for what in ("kappa", "bottom_share") for group in groups}
        pe = {s: runs[s]["analyses"]["per_example"] for s in have}
        out["per_example"]["kappa_ratio_same_kind"] = interval(
            [_module_mean(pe[s], lambda m: (_same_kind(m) or {}).get("kappa_median_ratio"))
             for s in have])
    have = [s for s in seeds if (runs[s].get("analyses") or {}).get("spectra")]
    if have:
        out["spectra"] = {f: interval([statistics.fmean(
            m["effective_rank"][f] / m["dims"][f] for m in runs[s]["analyses"]["spectra"]["modules"])
            for s in have]) for f in ("A", "G")}
    have = [s for s in seeds if (runs[s].get("analyses") or {}).get("task_interaction")]
    if have:
        ti = {s: runs[s]["analyses"]["task_interaction"] for s in have}
        labels = ti[have[0]]["band_labels"]
        out["task_interaction"] = {
            "band_labels": labels,
            "kfac_pairs": [interval([ti[s]["spearman"]["kfac_pairs"][b] for s in have])
                           for b in range(len(labels))],
            "groups": sorted({ti[s].get("spearman_n") for s in have} - {None}),
            # fewer groups than the analysis needs for inference: a description, not a test
            "descriptive": any(ti[s].get("descriptive") for s in have)}
    have = [s for s in seeds if (runs[s].get("analyses") or {}).get("stability")]
    if have:
        kinds = {}
        for s in have:
            comps = [c for c in runs[s]["analyses"]["stability"]["comparisons"]
                     if c["n_tokens"][0] == c["n_tokens"][1] and c["kind"] in ("data", "seed")]
            largest = max(c["n_tokens"][0] for c in comps)
            for c in comps:
                if c["n_tokens"][0] == largest:
                    kinds.setdefault(c["kind"], {})[s] = c["mean"]["kept_projector"]
        out["stability"] = {k: interval([v.get(s) for s in have]) for k, v in kinds.items()}
    return out


def _aggregate_vit(runs, seeds) -> dict | None:
    have = [s for s in seeds if runs[s].get("vit")]
    if not have:
        return None
    out = {"selected": {m: {str(s): runs[s]["vit"]["selected"].get(m) for s in have}
                        for m in ("kfac", "svd")}}
    for row, pick in (("base", lambda s: "base"),
                      ("kfac", lambda s: runs[s]["vit"]["selected"].get("kfac")),
                      ("svd", lambda s: runs[s]["vit"]["selected"].get("svd"))):
        out[row] = {f: interval([runs[s]["vit"]["models"][pick(s)][f] if pick(s) else None
                                 for s in have])
                    for f in ("memorized", "train_gt_acc", "val_acc")}
    out["kfac"]["reduction"] = interval(
        [runs[s]["vit"]["models"]["base"]["memorized"]
         / max(runs[s]["vit"]["models"][runs[s]["vit"]["selected"]["kfac"]]["memorized"], 1e-9)
         for s in have if runs[s]["vit"]["selected"].get("kfac")])
    return out


# --------------------------------------------------------------------------- Markdown


def _labels(per_seed: dict) -> str:
    names = list(dict.fromkeys(v for v in per_seed.values() if v))
    return ", ".join(f"{n} ({sum(v == n for v in per_seed.values())})" for n in names) or "none"


def _band_table(ar: dict) -> list[str]:
    """The rows of one activation-ratio table: each band family's intervals, in %."""
    rows = ["| bands | " + " | ".join(ar["band_labels"]) + " |",
            "|---|" + "---|" * len(ar["band_labels"])]
    for fam, what in (("kfac_pairs", "K-FAC, by share of pairs"),
                      ("kfac_mass", "K-FAC, by share of mass"),
                      ("svd", "SVD, by share of singular values")):
        rows.append(f"| {what} | " + " | ".join(cell(iv, 100, sign=True) for iv in ar[fam]) + " |")
    return rows


def verdict_text(v: dict) -> str:
    """One seed's verdict: estimate [95 % interval] against its threshold, or why untested."""
    if v.get("holds") is None:
        return f"not tested ({v.get('why', 'no data')})"
    if "estimate" in v:
        sign = ">" if v["side"] == "above" else "<"
        lo, hi = v["ci95"]
        return f"{v['estimate']:+.3f} [{lo:+.3f}, {hi:+.3f}] {sign} {v['threshold']:+.3f}"
    parts = [k for k, p in v.items() if isinstance(p, dict) and "holds" in p]
    return ", ".join(f"{k.replace('_', ' ')} {verdict_text(v[k])}" for k in parts)


def _claims_lines(agg: dict) -> list[str]:
    version = agg.get("claims_version", 1)
    o = ["", f"Claims, each tested in every seed by a rule fixed before the runs (rules "
         f"{rules_label(version)}):", ""]
    if version == 1:
        o += ["| claim | holds in |", "|---|---|"]
        o += [f"| {c['text']} | {c['holds']} of {c['tested']} seeds |"
              for c in agg["claims"].values()]
        return o
    o += ["| claim | holds in | per seed: estimate [95 % bootstrap interval] vs threshold |",
          "|---|---|---|"]
    for c in agg["claims"].values():
        per = "; ".join(f"{s}: {verdict_text(v)}" for s, v in c["detail"].items())
        o.append(f"| {c['text']} | {c['holds']} of {c['tested']} seeds | {per} |")
    return o


def _main_row(label: str, r: dict) -> str:
    w = r["wilson"]
    return (f"| {label} | " + " | ".join(rate_cell(r[f], w[f]) for f in
                                         ("forget_validation", "untargeted", "forget", "control"))
            + f" | {ratio_cell(r['log_ppl_ratio'])} | "
            + " | ".join(cell(r[c], 100) for c in TASK_CATEGORIES) + " |")


def _genre_row(label: str, r: dict) -> str:
    return (f"| {label} | {cell(r['forget_validation_loss'], digits=3)} | "
            f"{cell(r['forget_validation_distance'], digits=3)} | "
            f"{cell(r['gap_forget_validation'], digits=3, sign=True)} | "
            f"{cell(r['untargeted_loss'], digits=3)} | "
            f"{cell(r['untargeted_distance'], digits=3)} | "
            f"{cell(r['gap_untargeted'], digits=3, sign=True)} | "
            f"{cell(r['control_loss'], digits=3)} | "
            f"{cell(r['control_distance'], digits=3)} | "
            f"{cell(r['genre_control'], digits=3, sign=True)} | "
            f"{cell(r['control_quotes_loss'], digits=3)} | "
            f"{cell(r['control_quotes_distance'], digits=3)} | "
            f"{cell(r['genre_control_quotes'], digits=3, sign=True)} | "
            f"{rate_cell(r['control_quotes'], r['wilson']['control_quotes'])} |")


def _edit_rows(agg: dict) -> list[tuple[str, dict]]:
    """(label, row) of every edit row the main and genre tables show, in order."""
    rows = [(f"**{METHOD_NAMES[m]}**: {_labels(agg['selected'][m])}", agg["methods"][m])
            for m in METHODS]
    depth = [d for d in agg.get("paper_depth", {}).values() if d]
    if depth:
        budget = "" if all(d["within_budget"] for d in depth) else (
            f"; over the budget in {sum(not d['within_budget'] for d in depth)} seeds")
        rows.append((f"K-FAC nearest the paper's depth: "
                     f"{_labels({s: d and d['name'] for s, d in agg['paper_depth'].items()})}"
                     f"{budget}", agg["paper_depth_row"]))
    variant = agg.get("selected_variant", {}).get("kfac", {})
    if any(variant.values()):
        rows.append((f"K-FAC, task-weighted selection (variant): {_labels(variant)}",
                     agg["variant_rows"]["kfac"]))
    return rows


def tables(agg: dict) -> str:
    """The README's results tables: every number a mean ± 95 % interval over the seeds."""
    n = len(agg["seeds"])
    o = [f"Seeds {', '.join(map(str, agg['seeds']))} (n = {n}): mean ± 95 % interval "
         "(t, n − 1) across seeds; in brackets, the seeds' own 95 % Wilson intervals (lowest "
         "lower to highest upper bound). Recitation in % of items recited exactly (strict); "
         "PPL change over each seed's base as a log ratio, shown as a change in % (interval in "
         "brackets); skills: edited ÷ base accuracy in %. Each method's row is its selected edit "
         f"(validation data only: {', '.join(agg['selection_reads'])}); how often each setting "
         "was picked in brackets.",
         "", "| model | forget-validation | quotes | forget | control | PPL change | "
         "closed-book | open-book | arithmetic | logic |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    b = agg["base"]
    w = b["wilson"]
    o.append(f"| base (PPL {cell(b['perplexity'], digits=2)}) | " + " | ".join(
        rate_cell(b[f], w[f]) for f in ("forget_validation", "untargeted", "forget", "control"))
        + " | – | " + " | ".join(f"acc {cell(b[c], digits=3)}" for c in TASK_CATEGORIES) + " |")
    edit_rows = _edit_rows(agg)
    o += [_main_row(label, r) for label, r in edit_rows]
    base_ppl = PAPER_TABLE1["7B base"]["ppl"]
    for name in ("7B K-FAC", "7B BSN", "7B SVD"):
        p = PAPER_TABLE1[name]
        ret = (" | ".join(f"{100 * PAPER_RETENTION[c][0]:.0f}–{100 * PAPER_RETENTION[c][1]:.0f}"
                          for c in TASK_CATEGORIES) if name == "7B K-FAC"
               else " | ".join("" for _ in TASK_CATEGORIES))
        o.append(f"| *paper {name}* | {100 * p['forget'][0]:.1f} | {100 * p['untargeted'][0]:.1f}"
                 f" | – | – | {100 * (p['ppl'] / base_ppl - 1):+.1f} % | {ret} |")
    if b["control_loss"]["mean"] is not None:
        o += ["", "Memorization against genre: teacher-forced suffix loss (nats/token) on the "
              "memorized sets; gap = loss on never-trained items of the same kinds minus it "
              "(positive: memorized beyond the genre); Δ = the control's loss minus the base's "
              "(genre competence lost; < log 1.10 = 0.095 is the removal rule's margin); Avg Lev "
              "= greedy continuation's normalized distance to the suffix:", "",
              "| model | forget-validation loss | Avg Lev | gap | quotes loss | Avg Lev | gap | "
              "control loss | Avg Lev | Δ control | control-quotes loss | Avg Lev | "
              "Δ control-quotes | control-quotes recited |", "|---|" + "---|" * 13,
              _genre_row("base", b)]
        o += [_genre_row(label, r) for label, r in edit_rows]
    o += ["", "Controls (the same edits in every seed; the first row is the top-curvature edit "
          "they are cut from):", "",
          "| edit | forget-validation | quotes | PPL change | Δ control loss | closed-book | "
          "open-book | arithmetic | logic |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in agg["controls"].items():
        o.append(f"| {name} | {rate_cell(r['forget_validation'], r['wilson']['forget_validation'])}"
                 f" | {rate_cell(r['untargeted'], r['wilson']['untargeted'])}"
                 f" | {ratio_cell(r['log_ppl_ratio'])} | "
                 f"{cell(r['genre_control'], digits=3, sign=True)} | "
                 + " | ".join(cell(r[c], 100) for c in TASK_CATEGORIES) + " |")
    o += ["", "Pareto fronts: mean gap of K-FAC's front to the other method's (recitation in "
          "points at equal perplexity, over the range both reach; negative = K-FAC lower):", "",
          "| fronts | gap |", "|---|---|"]
    for key, iv in agg["fronts"].items():
        o.append(f"| {key.replace('_', ' ')} | {cell(iv, 100, sign=True)} |")
    o += _claims_lines(agg)
    o += _analysis_lines(agg["analyses"])
    o += _vit_lines(agg.get("vit"))
    return "\n".join(o).rstrip() + "\n"


def _analysis_lines(an: dict) -> list[str]:
    o = []
    if "activation_same_kind" in an:
        ar = an["activation_same_kind"]
        o += ["", "Activation ratio, memorized ÷ never-trained documents of the same kinds − 1 in "
              "% (the primary contrast: kind-balanced, mean over the analysed modules; the "
              "paper's Fig. 2 compares against clean text):", ""] + _band_table(ar)
        o.append(f"| full output (norm ratio) | {cell(ar['full'], 100, sign=True)} |"
                 + " |" * (len(ar["band_labels"]) - 1))
    if "activation_ratio" in an:
        ar = an["activation_ratio"]
        what = ("memorized ÷ held-out text − 1 in % (secondary: genre and memorization together)"
                if "activation_same_kind" in an else "memorized ÷ clean − 1 in %")
        o += ["", f"Activation ratio, {what} (mean over the analysed modules; the paper's "
              "Fig. 2):", ""] + _band_table(ar)
        o.append("| *paper 7B K-FAC* | " + " | ".join(
            f"{100 * PAPER_ACTIVATION[b]:+.1f}" if b in PAPER_ACTIVATION else ""
            for b in ar["band_labels"]) + " |")
    if "vit_activation_ratio" in an:
        ar = an["vit_activation_ratio"]
        o += ["", "ViT activation ratio at the CLS position, noisy-label (memorized) ÷ clean "
              "training images − 1 in %:", ""] + _band_table(ar)
    if "stress" in an:
        st = an["stress"]
        items = f" ({', '.join(map(str, st['n']))} items per seed)" if st.get("n") else ""
        o += ["", "Stress test (the paper's Table 6): mean exact-match length in tokens of the "
              f"selected edits, original → shifted prompts{items}:", "",
              "| model | original | perturbed |", "|---|---|---|"]
        o.append(f"| base | {cell(st['base']['original'], digits=2)} | "
                 f"{cell(st['base']['perturbed'], digits=2)} |")
        for m in METHODS:
            o.append(f"| {METHOD_NAMES[m]} | {cell(st[m]['original'], digits=2)} | "
                     f"{cell(st[m]['perturbed'], digits=2)} |")
        for name, ((om, _), (pm, _)) in PAPER_STRESS.items():
            o.append(f"| *paper {name}* | {om} | {pm} |")
    if "per_example" in an:
        pe = an["per_example"]
        o += ["", "Per-example curvature (mean over the analysed modules of each seed's medians): "
              "κ = Σ λμ·P² / Σ P² along a sequence's own gradient, and the share of its squared "
              "gradient in the bottom-50 % band:", "",
              "| sequences | κ | bottom-band share % |", "|---|---|---|"]
        for group, what in (("memorized", "memorized"),
                            ("control", "never-trained, same kinds"), ("clean", "held-out text")):
            if pe[f"kappa_{group}"]["mean"] is not None:
                o.append(f"| {what} | {cell(pe[f'kappa_{group}'], digits=5)} | "
                         f"{cell(pe[f'bottom_share_{group}'], 100)} |")
        if pe["kappa_ratio_same_kind"]["mean"] is not None:
            o += ["", "Median κ, memorized ÷ same-kind control (mean over modules): "
                  f"{cell(pe['kappa_ratio_same_kind'], digits=3)}."]
    if "spectra" in an:
        sp = an["spectra"]
        o += ["", "Spectra: effective rank (exp of the entropy of the normalized eigenvalues) as a "
              f"share of the dimension, mean over modules: A {cell(sp['A'], 100)} %, "
              f"G {cell(sp['G'], 100)} %."]
    if "task_interaction" in an:
        ti = an["task_interaction"]
        groups = f" over {', '.join(map(str, ti['groups']))} groups" if ti.get("groups") else ""
        label = (" Descriptive only: too few groups for inference." if ti.get("descriptive")
                 else "")
        o += ["", "Task interaction (the paper's Fig. 4): Spearman correlation across task "
              "categories between each category's activation ratio in a K-FAC band and its "
              f"retention under the selected edit{groups}.{label}", "",
              "| band | " + " | ".join(ti["band_labels"]) + " |",
              "|---|" + "---|" * len(ti["band_labels"]),
              "| Spearman ρ | " + " | ".join(cell(iv, digits=2) for iv in ti["kfac_pairs"])
              + " |"]
    if "stability" in an:
        names = {"data": "disjoint token slices", "seed": "label-sampling seeds"}
        o += ["", "Basis stability at the largest slice: overlap of the kept pair sets (projector "
              "cosine) between factor sets:", "", "| compared | kept-set overlap |", "|---|---|"]
        for kind, iv in an["stability"].items():
            o.append(f"| {names.get(kind, kind)} | {cell(iv, digits=3)} |")
    return o


def _vit_lines(v: dict | None) -> list[str]:
    if not v:
        return []
    t2 = PAPER_TABLE2
    o = ["", "Vision (the paper's Table 2), % of training images:", "",
         "| model | memorized noisy labels | true label of noisy images | validation acc |",
         "|---|---|---|---|"]
    for key, what in (("base", "base"), ("kfac", "K-FAC: " + _labels(v["selected"]["kfac"])),
                      ("svd", "SVD: " + _labels(v["selected"]["svd"]))):
        r = v[key]
        o.append(f"| {what} | {cell(r['memorized'], 100)} | {cell(r['train_gt_acc'], 100)}"
                 f" | {cell(r['val_acc'], 100)} |")
    for name in ("Baseline", "K-FAC", "SVD"):
        o.append(f"| *paper {name}* | {t2[name]['memorized']} | {t2[name]['train_gt_acc']} | "
                 f"{t2[name]['val_acc']} |")
    o += ["", f"K-FAC's reduction of memorized labels: {cell(v['kfac']['reduction'], digits=2)}×"
          " (the paper: 81.6 / 3.5 = 23×)."]
    return o


# --------------------------------------------------------------------------- the fronts' figure

STYLE = {"kfac": ("K-FAC", "tab:blue", "o"), "svd": ("SVD", "tab:orange", "s"),
         "bsn": ("BSN", "tab:green", "^")}


def fronts_figure(runs: dict[int, dict], path) -> None:
    """Each seed's Pareto front per method (recitation against perplexity rise over that seed's
    base), forget-validation and quotes side by side; the selected edits ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from curvmem.io import atomic_output
    from curvmem.report.compare import pareto_front

    seeds = sorted(runs)
    dashes = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    panels = (("forget_validation", "forget-validation (held-out half of the forget set)"),
              ("untargeted", "quotes (untargeted: read by no method, no selection)"))
    for ax, (metric, title) in zip(axes, panels):
        for i, seed in enumerate(seeds):
            lm = runs[seed]["lm"]
            picks = selected(lm)
            for method, (name, colour, marker) in STYLE.items():
                pts = []
                for label, m in lm["models"].items():
                    if m.get("method") != method:
                        continue
                    x = ppl_rise(lm["models"], label)
                    y = edit_numbers(lm, label).get(metric)
                    if x is not None and y is not None:
                        pts.append((100 * x, 100 * y))
                front = pareto_front(pts)
                ax.plot([p[0] for p in front], [p[1] for p in front], color=colour,
                        marker=marker, linestyle=dashes[i % len(dashes)], alpha=0.8,
                        markersize=5, label=f"{name}, seed {seed}")
                if picks[method]:
                    num = edit_numbers(lm, picks[method])
                    if num.get("ppl_rise") is not None and num.get(metric) is not None:
                        ax.plot([100 * num["ppl_rise"]], [100 * num[metric]], marker="o",
                                markersize=13, markerfacecolor="none", markeredgecolor=colour,
                                linestyle="none")
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlabel("perplexity rise over the seed's base model, % (symlog)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("strict recitation, % (lower is better)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, ncol=3 * len(seeds) if len(seeds) < 3 else len(seeds),
               loc="lower center", frameon=False)
    fig.suptitle(f"Pareto fronts of each method in each of {len(seeds)} seeds (lower-left is "
                 "better; rings: each method's selected edit, chosen on validation data)",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- reading the runs


def _benchmark_seconds(directory) -> float:
    """The summed wall seconds (`s` column) of Snakemake benchmark TSVs under `directory`."""
    total = 0.0
    for tsv in sorted(directory.rglob("*.tsv")) if directory.is_dir() else []:
        rows = [line.split("\t") for line in tsv.read_text().splitlines() if line.strip()]
        if len(rows) >= 2:
            total += float(dict(zip(rows[0], rows[-1]))["s"])
    return total


def load_run(outdir) -> dict:
    """One seed's run directory (its `outdir`) -> what `aggregate` reads: the LM and ViT summaries,
    the analyses' JSON, and for `aggregate_costs` the edits' costs (`lm_costs`) and the main
    factor set's collection + eigendecomposition seconds."""
    from pathlib import Path

    from curvmem.io import read_json

    root = Path(outdir)
    if not (root / "lm_summary.json").is_file():
        raise ValueError(f"{root}: no lm_summary.json (has this seed's run finished?)")
    run = {"lm": read_json(root / "lm_summary.json")}
    run["lm_costs"] = model_costs(run["lm"], root / "lm_summary.json")
    if (root / "vit_summary.json").is_file():
        run["vit"] = read_json(root / "vit_summary.json")
    analyses = {p.stem: read_json(p) for p in sorted((root / "analysis").glob("*.json"))
                if not is_cost_file(p)}
    if analyses:
        run["analyses"] = analyses
    bench = root / "benchmarks" / "lm"
    run["factor_seconds"] = sum(
        _benchmark_seconds(d) for stage in ("collect", "merge", "eigen")
        for d in sorted((bench / stage).glob("main-*")))
    return run
