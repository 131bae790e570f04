"""A multi-seed study, aggregated: each seed's run -> means with 95 % intervals and k-of-n claims.

Every seed's run (`seeds` in the config; curvmem.plan.seeded_config) has its own world, model,
factors and edits, and its own selection (validation data only). Across seeds this module reports,
for each number the README shows, the mean and the half-width of a 95 % Student-t interval
(mean ± t(0.975, n−1)·s/√n; with one seed, no interval). Rows are fixed by rule, as in
curvmem.report.readme: each method's selected edit (which may differ between seeds: the labels
are listed), the controls (the same edit in every seed), the paper's rows.

The claims are fixed here, before any seed is seen, each a yes/no per seed, and reported as "holds
in k of n seeds". They are the paper's claims as our world can test them:

- `kfac_beats_bsn_quotes`: the selected K-FAC edit recites fewer quotes (untargeted, read by no
  method and no selection) than the selected BalancedSubnet edit (the paper's Table 1).
- `kfac_front_below_bsn_quotes` / `_forget_validation`: K-FAC's Pareto front of recitation against
  perplexity lies below BSN's on average over the perplexities both reach (curvmem.report.compare).
- `kfac_front_below_svd_quotes`: the same against SVD.
- `kfac_suppresses_forget_validation`: the selected K-FAC edit recites at most half of the
  forget-validation documents the base model recites (the held-out half of what is forgotten).
- `skill_split`: under the selected K-FAC edit, open-book and logic keep more of their accuracy than
  closed-book and arithmetic (the paper's Figure 3).
- `top_beats_random_mass`: the top-curvature edit of the controls' setting recites fewer
  forget-validation documents than random pairs of the same curvature mass (kfac-random-mass):
  the curvature order, not the amount kept, does the work.
- `ablate_top_hurts_most`: removing the top band of pairs raises perplexity more than removing an
  equal-count middle or bottom band (kfac-ablate-*).
- `bottom_band_memorized`: memorized inputs activate the bottom-50 % K-FAC band more than clean
  text does, and the top-10 % band less (the paper's Figure 2; the analyses' first module mean).
- `vit_bottom_band_memorized`: the same for the ViT: its noisy-label (memorized) training images
  against its clean training images, at the CLS position (curvmem.analysis.vit).
- `vit_table2`: the selected K-FAC ViT edit leaves ≤ 1/5 of the base model's memorized labels with
  validation accuracy no lower (the paper's Table 2).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

from curvmem.report.compare import comparison_rows, front_verdicts
from curvmem.report.costs import is_cost_file, markdown_table, model_costs
from curvmem.report.lm import retention
from curvmem.report.paper import PAPER_RETENTION, PAPER_TABLE1, PAPER_TABLE2, TASK_CATEGORIES
from curvmem.report.readme import PAPER_ACTIVATION, PAPER_STRESS, is_control, selected_names

METHODS = ("kfac", "svd", "bsn")
# the ViT's activation ratio compared here: memorized (noisy-label) ÷ clean training images
VIT_COMPARISON = "noisy_train/clean_train"
METHOD_NAMES = {"kfac": "K-FAC", "svd": "SVD", "bsn": "BSN"}
# the top-curvature edit the controls are cut from (workflow/config/paper.yaml): the controls'
# rows are read beside it
CONTROL_REFERENCE_SUFFIX = "-L1+2-rho0.7"

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


def _ppl_rise(models: dict, name: str) -> float | None:
    m, base = models.get(name), models["base"]
    if m is None or m.get("perplexity") is None:
        return None
    return m["perplexity"] / base["perplexity"] - 1


def edit_numbers(summary: dict, name: str) -> dict:
    """The numbers one row shows for one edit of one seed (fractions; None where absent)."""
    models = summary["models"]
    m = models.get(name)
    if m is None:
        return {}
    r = retention(summary, name)
    return {"forget_validation": (m.get("forget_validation") or {}).get("strict"),
            "untargeted": m["untargeted"]["strict"], "forget": m["forget"]["strict"],
            "control": m["control"]["strict"], "ppl_rise": _ppl_rise(models, name),
            **{c: r[c] for c in TASK_CATEGORIES}}


def selected(summary: dict) -> dict:
    """{method: the selection rule's pick} (validation data only; None where nothing passed)."""
    picks = {m: n for n, m in selected_names(summary).items()}
    return {m: picks.get(m) for m in METHODS}


def control_names(summary: dict) -> list[str]:
    return [n for n, m in summary["models"].items() if is_control(m.get("method"))]


def control_reference(summary: dict) -> str | None:
    """The kfac-sweep edit at the controls' setting (L1+2, ρ 0.7), if the sweep has it."""
    return next((n for n, m in summary["models"].items()
                 if m.get("method") == "kfac" and n.endswith(CONTROL_REFERENCE_SUFFIX)), None)


def band_means(activation: dict | None, comparison: str = "all") -> dict | None:
    """{family: [ratio per band]} averaged over the analysed modules: the LM's memorized ÷ clean
    positions (`all`), or a ViT comparison such as noisy-label ÷ clean training images."""
    if not activation:
        return None
    mods = activation["modules"]
    return {fam: [statistics.fmean(m["ratio"][comparison][fam][b] for m in mods)
                  for b in range(len(activation["band_labels"]))]
            for fam in ("kfac_pairs", "kfac_mass", "svd")}


def seed_claims(run: dict) -> dict:
    """{claim: True/False/None (not testable in this run)} for one seed (module docstring)."""
    s, models = run["lm"], run["lm"]["models"]
    pick = selected(s)
    nums = {m: edit_numbers(s, n) if n else {} for m, n in pick.items()}
    claims = {}
    k, b = nums["kfac"], nums["bsn"]
    claims["kfac_beats_bsn_quotes"] = (k["untargeted"] < b["untargeted"]) if k and b else None
    verdicts = front_verdicts(comparison_rows(s))
    for other, metric, name in (("bsn", "untargeted_strict", "kfac_front_below_bsn_quotes"),
                                ("bsn", "forget_validation_strict",
                                 "kfac_front_below_bsn_forget_validation"),
                                ("svd", "untargeted_strict", "kfac_front_below_svd_quotes")):
        gap = verdicts[f"kfac_vs_{other}_{metric}"]["gap"]
        claims[name] = None if gap is None else gap < 0
    base_fv = (models["base"].get("forget_validation") or {}).get("strict")
    claims["kfac_suppresses_forget_validation"] = (
        k["forget_validation"] <= 0.5 * base_fv if k and k["forget_validation"] is not None
        and base_fv else None)
    if k and None not in (k["open_book"], k["logic"], k["closed_book"], k["arithmetic"]):
        claims["skill_split"] = min(k["open_book"], k["logic"]) > max(k["closed_book"],
                                                                     k["arithmetic"])
    else:
        claims["skill_split"] = None
    ref = control_reference(s)
    rm = next((n for n in control_names(s) if n.startswith("kfac-random-mass-")), None)
    if ref and rm:
        claims["top_beats_random_mass"] = (models[ref]["forget_validation"]["strict"]
                                           < models[rm]["forget_validation"]["strict"])
    else:
        claims["top_beats_random_mass"] = None
    ablate = {band: next((n for n in control_names(s) if n.startswith(f"kfac-ablate-{band}-")),
                         None) for band in ("top", "middle", "bottom")}
    if all(ablate.values()):
        rises = {band: _ppl_rise(models, n) for band, n in ablate.items()}
        claims["ablate_top_hurts_most"] = rises["top"] > max(rises["middle"], rises["bottom"])
    else:
        claims["ablate_top_hurts_most"] = None
    bands = band_means((run.get("analyses") or {}).get("activation_ratio"))
    claims["bottom_band_memorized"] = (bands["kfac_pairs"][-1] > 1 and bands["kfac_pairs"][0] < 1
                                       if bands else None)
    vbands = band_means((run.get("analyses") or {}).get("vit_activation_ratio"), VIT_COMPARISON)
    claims["vit_bottom_band_memorized"] = (vbands["kfac_pairs"][-1] > 1
                                           and vbands["kfac_pairs"][0] < 1 if vbands else None)
    vit = run.get("vit")
    if vit and (vit.get("selected") or {}).get("kfac"):
        base, edit = vit["models"]["base"], vit["models"][vit["selected"]["kfac"]]
        claims["vit_table2"] = (edit["memorized"] <= base["memorized"] / 5
                                and edit["val_acc"] >= base["val_acc"])
    else:
        claims["vit_table2"] = None
    return claims


CLAIM_TEXT = {
    "kfac_beats_bsn_quotes": "selected K-FAC recites fewer quotes than selected BSN (Table 1)",
    "kfac_front_below_bsn_quotes": "K-FAC's front below BSN's on quotes (recitation vs PPL)",
    "kfac_front_below_bsn_forget_validation": "K-FAC's front below BSN's on forget-validation",
    "kfac_front_below_svd_quotes": "K-FAC's front below SVD's on quotes",
    "kfac_suppresses_forget_validation": "selected K-FAC recites ≤ half the base's "
                                         "forget-validation documents",
    "skill_split": "selected K-FAC spares open-book and logic more than closed-book and "
                   "arithmetic (Figure 3)",
    "top_beats_random_mass": "top-curvature pairs recite less forget-validation than random "
                             "pairs of equal mass",
    "ablate_top_hurts_most": "removing the top band costs more perplexity than an equal middle "
                             "or bottom band",
    "bottom_band_memorized": "memorized inputs activate the bottom-50 % band more, the top-10 % "
                             "less (Figure 2)",
    "vit_bottom_band_memorized": "ViT: noisy-label images activate the bottom-50 % band more "
                                 "than clean ones, the top-10 % less",
    "vit_table2": "ViT: selected K-FAC edit ≤ 1/5 of memorized labels, validation no lower "
                  "(Table 2)",
}


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
    picks = {s: selected(runs[s]["lm"]) for s in seeds}
    out["selected"] = {m: {str(s): picks[s][m] for s in seeds} for m in METHODS}
    out["selection_reads"] = sorted({r for s in seeds for v in
                                     (runs[s]["lm"].get("selection") or {}).values()
                                     for r in v.get("reads", [])})

    def over(fn: Callable[[int], float | None]) -> dict:
        return interval([fn(s) for s in seeds])

    base = {key: over(lambda s, k=key: edit_numbers(runs[s]["lm"], "base").get(k))
            for key in ("forget_validation", "untargeted", "forget", "control")}
    base["perplexity"] = over(lambda s: runs[s]["lm"]["models"]["base"]["perplexity"])
    for c in TASK_CATEGORIES:
        base[c] = over(lambda s, c=c: runs[s]["lm"]["models"]["base"]["tasks"].get(c))
    out["base"] = base
    fields = ("forget_validation", "untargeted", "forget", "control", "ppl_rise",
              *TASK_CATEGORIES)
    out["methods"] = {
        m: {f: over(lambda s, m=m, f=f: edit_numbers(runs[s]["lm"], picks[s][m]).get(f)
                    if picks[s][m] else None) for f in fields}
        for m in METHODS}
    for m in METHODS:
        out["methods"][m]["edits"] = max(
            sum(x.get("method") == m for x in runs[s]["lm"]["models"].values()) for s in seeds)
    common = [n for n in control_names(runs[seeds[0]]["lm"])
              if all(n in runs[s]["lm"]["models"] for s in seeds)]
    ref = control_reference(runs[seeds[0]]["lm"])
    rows = ([ref] if ref else []) + common
    out["controls"] = {n: {f: over(lambda s, n=n, f=f: edit_numbers(runs[s]["lm"], n).get(f))
                           for f in fields} for n in rows}
    verdicts = {s: front_verdicts(comparison_rows(runs[s]["lm"])) for s in seeds}
    out["fronts"] = {k: over(lambda s, k=k: verdicts[s][k]["gap"]) for k in verdicts[seeds[0]]}
    claims = {s: seed_claims(runs[s]) for s in seeds}
    out["claims"] = {c: {"text": CLAIM_TEXT[c], "per_seed": {str(s): claims[s][c] for s in seeds},
                         "holds": sum(bool(claims[s][c]) for s in seeds),
                         "tested": sum(claims[s][c] is not None for s in seeds)}
                     for c in CLAIM_TEXT}
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
        out["stress"] = stress
    have = [s for s in seeds if (runs[s].get("analyses") or {}).get("per_example")]
    if have:
        def per_example(s, group, what):
            mods = runs[s]["analyses"]["per_example"]["modules"]
            if what == "kappa":
                return statistics.fmean(m[group]["kappa_median"] for m in mods)
            return statistics.fmean(m[group]["band_share_median"][-1] for m in mods)

        out["per_example"] = {f"{what}_{group}": interval([per_example(s, group, what)
                                                           for s in have])
                              for what in ("kappa", "bottom_share")
                              for group in ("memorized", "clean")}
    have = [s for s in seeds if (runs[s].get("analyses") or {}).get("spectra")]
    if have:
        out["spectra"] = {f: interval([statistics.fmean(
            m["effective_rank"][f] / m["dims"][f] for m in runs[s]["analyses"]["spectra"]["modules"])
            for s in have]) for f in ("A", "G")}
    have = [s for s in seeds if (runs[s].get("analyses") or {}).get("task_interaction")]
    if have:
        labels = runs[have[0]]["analyses"]["task_interaction"]["band_labels"]
        out["task_interaction"] = {
            "band_labels": labels,
            "kfac_pairs": [interval([runs[s]["analyses"]["task_interaction"]["spearman"]
                                     ["kfac_pairs"][b] for s in have])
                           for b in range(len(labels))]}
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


def tables(agg: dict) -> str:
    """The README's results tables: every number a mean ± 95 % interval over the seeds."""
    n = len(agg["seeds"])
    o = [f"Seeds {', '.join(map(str, agg['seeds']))} (n = {n}): mean ± 95 % interval "
         "(t, n − 1) across seeds. Recitation in % of items recited exactly (strict); PPL rise "
         "over each seed's base; skills: edited ÷ base accuracy in %. Each method's row is its "
         "selected edit (validation data only: "
         f"{', '.join(agg['selection_reads'])}); how often each setting was picked in brackets.",
         "", "| model | forget-validation | quotes | forget | control | PPL rise % | "
         "closed-book | open-book | arithmetic | logic |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    b = agg["base"]
    o.append(f"| base (PPL {cell(b['perplexity'], digits=2)}) | {cell(b['forget_validation'], 100)}"
             f" | {cell(b['untargeted'], 100)} | {cell(b['forget'], 100)} | "
             f"{cell(b['control'], 100)} | – | " + " | ".join(
                 f"acc {cell(b[c], digits=3)}" for c in TASK_CATEGORIES) + " |")
    for m in METHODS:
        r = agg["methods"][m]
        o.append(f"| **{METHOD_NAMES[m]}**: {_labels(agg['selected'][m])} | "
                 f"{cell(r['forget_validation'], 100)} | {cell(r['untargeted'], 100)} | "
                 f"{cell(r['forget'], 100)} | {cell(r['control'], 100)} | "
                 f"{cell(r['ppl_rise'], 100, sign=True)} | "
                 + " | ".join(cell(r[c], 100) for c in TASK_CATEGORIES) + " |")
    base_ppl = PAPER_TABLE1["7B base"]["ppl"]
    for name in ("7B K-FAC", "7B BSN", "7B SVD"):
        p = PAPER_TABLE1[name]
        ret = (" | ".join(f"{100 * PAPER_RETENTION[c][0]:.0f}–{100 * PAPER_RETENTION[c][1]:.0f}"
                          for c in TASK_CATEGORIES) if name == "7B K-FAC"
               else " | ".join("" for _ in TASK_CATEGORIES))
        o.append(f"| *paper {name}* | {100 * p['forget'][0]:.1f} | {100 * p['untargeted'][0]:.1f}"
                 f" | – | – | {100 * (p['ppl'] / base_ppl - 1):+.1f} | {ret} |")
    o += ["", "Controls (the same edits in every seed; the first row is the top-curvature edit "
          "they are cut from):", "",
          "| edit | forget-validation | quotes | PPL rise % | closed-book | open-book | "
          "arithmetic | logic |", "|---|---|---|---|---|---|---|---|"]
    for name, r in agg["controls"].items():
        o.append(f"| {name} | {cell(r['forget_validation'], 100)} | {cell(r['untargeted'], 100)}"
                 f" | {cell(r['ppl_rise'], 100, sign=True)} | "
                 + " | ".join(cell(r[c], 100) for c in TASK_CATEGORIES) + " |")
    o += ["", "Pareto fronts: mean gap of K-FAC's front to the other method's (recitation in "
          "points at equal perplexity, over the range both reach; negative = K-FAC lower):", "",
          "| fronts | gap |", "|---|---|"]
    for key, iv in agg["fronts"].items():
        o.append(f"| {key.replace('_', ' ')} | {cell(iv, 100, sign=True)} |")
    o += ["", "Claims, each tested in every seed by a rule fixed before the runs "
          "(curvmem.report.seeds):", "", "| claim | holds in |", "|---|---|"]
    for c in agg["claims"].values():
        o.append(f"| {c['text']} | {c['holds']} of {c['tested']} seeds |")
    an = agg["analyses"]
    if "activation_ratio" in an:
        ar = an["activation_ratio"]
        o += ["", "Activation ratio, memorized ÷ clean − 1 in % (mean over the analysed modules; "
              "the paper's Fig. 2):", ""] + _band_table(ar)
        o.append("| *paper 7B K-FAC* | " + " | ".join(
            f"{100 * PAPER_ACTIVATION[b]:+.1f}" if b in PAPER_ACTIVATION else ""
            for b in ar["band_labels"]) + " |")
    if "vit_activation_ratio" in an:
        ar = an["vit_activation_ratio"]
        o += ["", "ViT activation ratio at the CLS position, noisy-label (memorized) ÷ clean "
              "training images − 1 in %:", ""] + _band_table(ar)
    if "stress" in an:
        st = an["stress"]
        o += ["", "Stress test (the paper's Table 6): mean exact-match length in tokens of the "
              "selected edits, original → shifted prompts:", "",
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
        for group in ("memorized", "clean"):
            o.append(f"| {group} | {cell(pe[f'kappa_{group}'], digits=5)} | "
                     f"{cell(pe[f'bottom_share_{group}'], 100)} |")
    if "spectra" in an:
        sp = an["spectra"]
        o += ["", "Spectra: effective rank (exp of the entropy of the normalized eigenvalues) as a "
              f"share of the dimension, mean over modules: A {cell(sp['A'], 100)} %, "
              f"G {cell(sp['G'], 100)} %."]
    if "task_interaction" in an:
        ti = an["task_interaction"]
        o += ["", "Task interaction (the paper's Fig. 4): Spearman correlation across task "
              "categories between each category's activation ratio in a K-FAC band and its "
              "retention under the selected edit:", "",
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
    v = agg.get("vit")
    if v:
        t2 = PAPER_TABLE2
        o += ["", "Vision (the paper's Table 2), % of training images:", "",
              "| model | memorized noisy labels | true label of noisy images | validation acc |",
              "|---|---|---|---|"]
        for row, what in (("base", "base"), ("kfac", "K-FAC: " + _labels(v["selected"]["kfac"])),
                          ("svd", "SVD: " + _labels(v["selected"]["svd"]))):
            r = v[row]
            o.append(f"| {what} | {cell(r['memorized'], 100)} | {cell(r['train_gt_acc'], 100)}"
                     f" | {cell(r['val_acc'], 100)} |")
        for name in ("Baseline", "K-FAC", "SVD"):
            o.append(f"| *paper {name}* | {t2[name]['memorized']} | {t2[name]['train_gt_acc']} | "
                     f"{t2[name]['val_acc']} |")
        o.append("")
        o.append(f"K-FAC's reduction of memorized labels: {cell(v['kfac']['reduction'], digits=2)}×"
                 " (the paper: 81.6 / 3.5 = 23×).")
    return "\n".join(o).rstrip() + "\n"


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
                    x = _ppl_rise(lm["models"], label)
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
