"""The claims a multi-seed study tests, and their rules: one place, versioned, fixed before the runs.

Each seed's run is judged by the rules of the version its `lm_summary.json` records
(`claims_version`, written by `curvmem report-lm` from CLAIMS_VERSION); a summary without one was
written before this module and is judged by version 1, the rules it was made under. A study is
reported as "holds in k of n seeds" per claim, never re-judged by rules written after its runs
(tests/test_claims.py checks that every committed study judged by version 2 was run at a commit
that descends from the last change to this file).

Version 2 (CLAIMS_VERSION) — every rule a paired item-level bootstrap within one seed
--------------------------------------------------------------------------------------------------
Bootstrap: N_BOOTSTRAP resamples with numpy's default_rng(BOOTSTRAP_SEED), fresh for every rule
and edit (so a verdict does not depend on which other rules ran). Items are matched by id across
the base model and the edits (curvmem.report.lm stores them in one order), resampled with
replacement within their kind (memorized and control documents: menu, table, licence, random;
quotes: quote; tasks: category), the same draw for every model of the rule (paired). Two item
sets that differ (a memorized set and its never-trained controls) are drawn independently. The
interval is the 2.5-97.5 percentile of the statistic over the resamples; a claim holds when that
interval lies wholly on the claim's side of its margin, so a claim with too few items to be sure
does not hold. Perplexities enter as measured (one held-out text), except in the ablation rule,
which resamples the held-out blocks. "Recitation" is strict: greedy continuation equal to the
suffix (Levenshtein distance 0).

Statements (name: rule; margin; the comparison):

- `removes_memorization_{forget_validation,quotes}_{kfac,svd,bsn}`: the method's selected edit
  removes memorization of the set (forget-validation: the held-out half of the forget documents,
  read by nothing; quotes: the untargeted set) only if BOTH (a) recitation falls: the edit's rate
  minus RECITATION_SHARE x the base's rate on the same items is below 0 (the edit recites under
  half of what the base recites), AND (b) genre competence stays: the mean rise of teacher-forced
  suffix loss (nats/token) from base to edit on never-trained items of the same kinds (control
  documents for forget-validation, control quotes for the quotes) is below GENRE_MARGIN =
  log(1.10), the rise in log perplexity the selection's own +10 % budget allows on general text.
- `kfac_beats_bsn_quotes` (Table 1): selected BSN's quote recitation minus selected K-FAC's on the
  same quotes is above RECITATION_MARGIN (5 points).
- `kfac_front_below_{bsn,svd}_{quotes,forget_validation}` (Table 1 as fronts): K-FAC's Pareto
  front of recitation against reported perplexity minus the other method's, averaged over the
  perplexities both reach (curvmem.report.compare.front_gap), is below -RECITATION_MARGIN; every
  edit of both methods is rescored on each resample of the items.
- `skill_split` / `skill_split_paper_depth` (Figure 3): for the selected K-FAC edit, and for the
  K-FAC edit nearest the paper's relative depth (paper_depth_edit; tested only when it is within
  the selection's perplexity budget), the smaller retention (edit ÷ base accuracy on the same
  test items) of open-book and logic minus the larger of closed-book and arithmetic is above
  SKILL_MARGIN (5 points of retention). Needs per-item task records.
- `top_beats_random_mass`: at the controls' setting (their layers and ρ), the top-curvature edit
  recites fewer forget-validation documents than random pairs of equal curvature mass at matched
  perplexity: the random-mass edits (>= MIN_FRONT_POINTS values of ρ at the same layers) form a
  Pareto front, interpolated linearly in log perplexity at the top edit's perplexity; front minus
  top edit is above RECITATION_MARGIN. Not tested where the top edit's perplexity lies outside
  the front (no extrapolation).
- `ablate_top_hurts_most`: removing the band of pairs holding the top (1 - ρ) of the curvature
  mass (kfac-ablate-mass-top) raises log perplexity more than removing an equal-mass band from
  the middle (kfac-ablate-mass-middle) or from the bottom (which is the top-ρ edit itself), by
  more than PPL_MARGIN = log(1.05); held-out blocks resampled, paired across the three edits and
  the base. Needs per-block losses.
- `bottom_band_memorized` (Figure 2): memorized documents against never-trained documents of the
  same kinds (kind-balanced, curvmem.analysis.activation_ratio's `same_kind["documents"]`, mean
  over the analysed modules): the bottom-50 % K-FAC band's ratio is above 1 + ACTIVATION_MARGIN
  and the top-10 % band's below 1 - ACTIVATION_MARGIN.
- `bottom_band_beyond_norm`: the same on each band's ratio divided by the full output's ratio
  (a band profile that the overall norm does not explain).
- `memorized_low_kappa`: per-example curvature along a sequence's own gradient: the kind-balanced
  median κ (median within each kind, mean over kinds) of the memorized documents ÷ that of the
  same-kind controls (mean over modules, as curvmem.analysis.per_example) is below
  1 - KAPPA_MARGIN.
- `vit_bottom_band_memorized`: the ViT's noisy-label training images against its clean training
  images (the same distribution): the band rule of `bottom_band_memorized`. Needs per-image
  records.
- `vit_table2` (Table 2): the selected K-FAC ViT edit's memorized noisy labels minus 1/VIT_REDUCTION
  of the base's are below 0, and its validation accuracy minus the base's is above
  -VIT_VAL_MARGIN (1 point). Needs per-image records.

A rule whose inputs are absent (an older summary or analysis) is "not tested", with its reason;
it is never counted as failing or holding.

Version 1 (the rules of the committed study made before the covered world; kept only to report
its verdicts as they were judged): `claims_v1`, a yes/no per seed on point estimates, described
in CLAIM_TEXT_V1.
"""

from __future__ import annotations

import math
import statistics

import numpy as np

from curvmem.report.compare import comparison_rows, front_gap, front_verdicts, pareto_front
from curvmem.report.paper import PAPER_EDIT_LAYERS, PAPER_N_LAYERS, TASK_CATEGORIES
from curvmem.report.selection import is_control, retention, select_edits, selected_names

CLAIMS_VERSION = 2
BOOTSTRAP_SEED = 29
N_BOOTSTRAP = 2000
RECITATION_SHARE = 0.5
GENRE_MARGIN = math.log(1.10)
RECITATION_MARGIN = 0.05
SKILL_MARGIN = 0.05
PPL_MARGIN = math.log(1.05)
ACTIVATION_MARGIN = 0.05
KAPPA_MARGIN = 0.10
VIT_REDUCTION = 5
VIT_VAL_MARGIN = 0.01
MIN_FRONT_POINTS = 4
# the memorized sets a rule reads and their never-trained controls of the same kinds
MEMORIZED_SETS = {"forget_validation": "control", "quotes": "control_quotes"}
SPLIT_OF = {"forget_validation": "forget_validation", "quotes": "untargeted"}
METHODS = ("kfac", "svd", "bsn")
METHOD_NAMES = {"kfac": "K-FAC", "svd": "SVD", "bsn": "BSN"}
# the ViT's activation ratio compared: memorized (noisy-label) ÷ clean training images
VIT_COMPARISON = "noisy_train/clean_train"
VIT_GROUPS = ("noisy_train", "clean_train")

SET_NAMES = {"forget_validation": "forget-validation", "quotes": "quotes"}
CLAIM_TEXT = {
    **{f"removes_memorization_{s}_{m}":
       f"selected {METHOD_NAMES[m]} removes memorization of {SET_NAMES[s]}: recites < "
       f"{RECITATION_SHARE:g} x base, same-kind control loss rises < log 1.10"
       for s in MEMORIZED_SETS for m in METHODS},
    "kfac_beats_bsn_quotes": "selected K-FAC recites > 5 points fewer quotes than selected BSN "
                             "(Table 1)",
    "kfac_front_below_bsn_quotes": "K-FAC's front > 5 points below BSN's on quotes",
    "kfac_front_below_bsn_forget_validation": "K-FAC's front > 5 points below BSN's on "
                                              "forget-validation",
    "kfac_front_below_svd_quotes": "K-FAC's front > 5 points below SVD's on quotes",
    "skill_split": "selected K-FAC keeps > 5 points more of open-book and logic than of "
                   "closed-book and arithmetic (Figure 3)",
    "skill_split_paper_depth": "the same for the K-FAC edit nearest the paper's depth",
    "top_beats_random_mass": "top-curvature pairs recite > 5 points less forget-validation than "
                             "random pairs of equal mass at matched perplexity",
    "ablate_top_hurts_most": "removing the top band of curvature mass costs > 5 % more "
                             "perplexity than an equal-mass middle or bottom band",
    "bottom_band_memorized": "memorized documents activate the bottom-50 % band > 5 % more and "
                             "the top-10 % > 5 % less than same-kind controls (Figure 2)",
    "bottom_band_beyond_norm": "the same, each band relative to the full output's norm ratio",
    "memorized_low_kappa": "memorized documents' median κ along their own gradient > 10 % "
                           "below same-kind controls'",
    "vit_bottom_band_memorized": "ViT: noisy-label images activate the bottom-50 % band > 5 % "
                                 "more than clean ones, the top-10 % > 5 % less",
    "vit_table2": "ViT: selected K-FAC edit < 1/5 of the base's memorized labels, validation "
                  "accuracy > 1 point below base at worst (Table 2)",
}


# --------------------------------------------------------------------------- reading a summary


def ppl_rise(models: dict, name: str) -> float | None:
    """Reported perplexity of `name` ÷ base − 1 (None where absent)."""
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
            "control": m["control"]["strict"], "ppl_rise": ppl_rise(models, name),
            **{c: r[c] for c in TASK_CATEGORIES}}


def selected(summary: dict) -> dict:
    """{method: the selection rule's pick} (validation data only; None where nothing passed)."""
    picks = {m: n for n, m in selected_names(summary).items()}
    return {m: picks.get(m) for m in METHODS}


def control_names(summary: dict) -> list[str]:
    return [n for n, m in summary["models"].items() if is_control(m.get("method"))]


def band_means(activation: dict | None, comparison: str = "all") -> dict | None:
    """{family: [ratio per band]} averaged over the analysed modules: the LM's memorized ÷ clean
    positions (`all`), or a ViT comparison such as noisy-label ÷ clean training images."""
    if not activation:
        return None
    mods = activation["modules"]
    return {fam: [statistics.fmean(m["ratio"][comparison][fam][b] for m in mods)
                  for b in range(len(activation["band_labels"]))]
            for fam in ("kfac_pairs", "kfac_mass", "svd")}


def claims_version(summary: dict) -> int:
    """The rules' version a run's lm_summary was made under (1: before this module)."""
    return int(summary.get("claims_version", 1))


def layers_of(model: dict) -> tuple[int, ...]:
    """The layer indices an edit's spec {layer: {module: value}} touches."""
    return tuple(sorted(int(k) for k in (model.get("spec") or {}) if str(k).isdecimal()))


def relative_depth(layers, n_layers: int) -> float:
    """Mean over the layers of (index + 0.5) / n_layers: where in the stack an edit sits."""
    return statistics.fmean((layer + 0.5) / n_layers for layer in layers)


PAPER_RELATIVE_DEPTH = relative_depth(PAPER_EDIT_LAYERS, PAPER_N_LAYERS)


def paper_depth_edit(summary: dict) -> dict | None:
    """The K-FAC edit nearest the paper's relative depth (layers 23-25 of 32: 0.77), chosen by the
    primary selection rule among the sweep's edits of the nearest layer set (ties: the larger set,
    then the lower layers). {"name", "layers", "depth", "within_budget"}; when none of that set is
    within the perplexity budget, the one of lowest selection perplexity with within_budget False.
    None without the model's depth (`model_layers`) or K-FAC edits."""
    n = summary.get("model_layers")
    models = summary["models"]
    kfac = {name: layers_of(m) for name, m in models.items()
            if m.get("method") == "kfac" and layers_of(m)}
    if not n or not kfac:
        return None
    sets = sorted(set(kfac.values()),
                  key=lambda ls: (abs(relative_depth(ls, n) - PAPER_RELATIVE_DEPTH), -len(ls), ls))
    layers = sets[0]
    names = [name for name, ls in kfac.items() if ls == layers]
    rule = (summary.get("selection") or {}).get("kfac") or {}
    sub = {"base": models["base"], **{name: models[name] for name in names}}
    pick = select_edits(sub, rule.get("max_ppl_rise", 0.10),
                        rule.get("task_weight", 0.0))["kfac"]["selected"]
    within = pick is not None
    if pick is None:
        key = "perplexity_selection" if models["base"].get("perplexity_selection") else "perplexity"
        pick = min(names, key=lambda name: (models[name][key], name))
    return {"name": pick, "layers": list(layers), "depth": relative_depth(layers, n),
            "within_budget": within}


def control_spec(summary: dict) -> dict | None:
    """The spec the K-FAC controls share (the most common among them), or None."""
    specs = [models_spec for models_spec in
             (summary["models"][n].get("spec") for n in control_names(summary)) if models_spec]
    if not specs:
        return None
    keys = [repr(sorted((k, sorted(v.items())) for k, v in s.items())) for s in specs]
    return specs[max(range(len(specs)), key=lambda i: (keys.count(keys[i]), -i))]


def control_reference(summary: dict) -> str | None:
    """The K-FAC sweep's edit the controls are cut from: the one at the controls' setting (same
    layers, modules and ρ); in a version-1 summary the edit named ...-L1+2-rho0.7, as then."""
    if claims_version(summary) == 1:
        return control_reference_v1(summary)
    spec = control_spec(summary)
    return next((n for n, m in summary["models"].items()
                 if m.get("method") == "kfac" and m.get("spec") == spec), None) if spec else None


def controls_at(summary: dict, method: str) -> list[str]:
    """The edits of a control `method` (e.g. kfac-random-mass) at the controls' layers."""
    spec = control_spec(summary)
    if spec is None:
        return []
    layers = layers_of({"spec": spec})
    return [n for n, m in summary["models"].items()
            if m.get("method") == method and layers_of(m) == layers]


# --------------------------------------------------------------------------- item records


def split_items(summary: dict, split: str) -> dict | None:
    """{"id", "kind", "suffix_len"}: a memorized set's items in the summary's order."""
    return (summary.get("items") or {}).get(split)


def item_array(summary: dict, name: str, split: str, field: str = "strict") -> np.ndarray | None:
    """One model's per-item values on a set: strict (1.0 recited, 0.0 not), distance,
    suffix_loss; None where the summary has no item records."""
    rec = ((summary["models"].get(name) or {}).get(split) or {}).get("items")
    if not rec:
        return None
    if field == "strict":
        return (np.asarray(rec["distance"]) == 0).astype(np.float64)
    return np.asarray(rec[field], dtype=np.float64)


def task_arrays(summary: dict, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(categories, correct 0/1) of the test task items of one model; None without records."""
    items = (summary.get("items") or {}).get("tasks")
    rec = (summary["models"].get(name) or {}).get("task_items")
    if not items or not rec:
        return None
    return np.asarray(items["category"]), np.asarray(rec["correct"], dtype=np.float64)


def resample(strata, rng, n_boot: int = N_BOOTSTRAP) -> np.ndarray:
    """(n_boot, n) indices: each row a resample with replacement within each stratum (kind), so
    every resample keeps the strata's sizes."""
    strata = np.asarray(strata)
    out = np.empty((n_boot, strata.size), dtype=np.int64)
    for s in sorted(set(strata.tolist())):
        idx = np.flatnonzero(strata == s)
        out[:, idx] = idx[rng.integers(0, idx.size, (n_boot, idx.size))]
    return out


def _rng():
    return np.random.default_rng(BOOTSTRAP_SEED)


def verdict(estimate: float, draws, side: str, threshold: float, **detail) -> dict:
    """Holds when the 95 % percentile interval of `draws` lies wholly above (side "above") or
    below ("below") `threshold`. NaN draws (a resample where the statistic is undefined) count
    against the claim."""
    draws = np.asarray(draws, dtype=np.float64)
    finite = draws[np.isfinite(draws)]
    if finite.size == 0 or not math.isfinite(estimate):
        return untested("the statistic is undefined on these items", **detail)
    lo, hi = (float(x) for x in np.quantile(finite, [0.025, 0.975]))
    undefined = finite.size < draws.size
    holds = (lo > threshold if side == "above" else hi < threshold) and not undefined
    return {"holds": bool(holds), "estimate": float(estimate), "ci95": [lo, hi],
            "side": side, "threshold": threshold, **detail}


def untested(why: str, **detail) -> dict:
    return {"holds": None, "why": why, **detail}


def both(name_a: str, a: dict, name_b: str, b: dict) -> dict:
    """A claim of two parts: holds when both hold; untested when either is."""
    if a["holds"] is None or b["holds"] is None:
        return {"holds": None, "why": a.get("why") or b.get("why"), name_a: a, name_b: b}
    return {"holds": a["holds"] and b["holds"], name_a: a, name_b: b}


# --------------------------------------------------------------------------- the rules (v2)


def removes_memorization(summary: dict, name: str | None, memorized: str) -> dict:
    """The rule of item 2: recitation of the memorized set falls below RECITATION_SHARE x the
    base's, AND the same-kind control's suffix loss rises less than GENRE_MARGIN (module
    docstring). `memorized`: forget_validation or quotes."""
    if name is None:
        return untested("no edit of this method was selected (none within the budget)")
    split, control = SPLIT_OF[memorized], MEMORIZED_SETS[memorized]
    items, ctl_items = split_items(summary, split), split_items(summary, control)
    base, edit = item_array(summary, "base", split), item_array(summary, name, split)
    base_l = item_array(summary, "base", control, "suffix_loss")
    edit_l = item_array(summary, name, control, "suffix_loss")
    if any(x is None for x in (items, ctl_items, base, edit, base_l, edit_l)):
        return untested(f"no per-item records of {split} and {control} in this summary")
    idx = resample(items["kind"], _rng())
    stat = edit - RECITATION_SHARE * base
    recitation = verdict(float(stat.mean()), stat[idx].mean(1), "below", 0.0,
                         edit_rate=float(edit.mean()), base_rate=float(base.mean()),
                         n=int(edit.size))
    rise = edit_l - base_l
    idx = resample(ctl_items["kind"], _rng())
    genre = verdict(float(rise.mean()), rise[idx].mean(1), "below", GENRE_MARGIN,
                    n=int(rise.size))
    return {"edit": name, **both("recitation", recitation, "genre", genre)}


def fewer_recited(summary: dict, fewer: str | None, more: str | None, split: str) -> dict:
    """`more`'s recitation minus `fewer`'s on the same items is above RECITATION_MARGIN."""
    if fewer is None or more is None:
        return untested("a method has no selected edit")
    items = split_items(summary, split)
    a, b = item_array(summary, fewer, split), item_array(summary, more, split)
    if items is None or a is None or b is None:
        return untested(f"no per-item records of {split} in this summary")
    d = b - a
    idx = resample(items["kind"], _rng())
    return verdict(float(d.mean()), d[idx].mean(1), "above", RECITATION_MARGIN,
                   edits=[fewer, more])


def front_below(summary: dict, other: str, split: str) -> dict:
    """K-FAC's front minus `other`'s (compare.front_gap) is below -RECITATION_MARGIN, every edit
    of both methods rescored on each resample of the set's items."""
    models = summary["models"]
    names = [n for n, m in models.items() if m.get("method") in ("kfac", other)
             and m.get("perplexity") is not None]
    items = split_items(summary, split)
    values = [item_array(summary, n, split) for n in names]
    if items is None or not names or any(v is None for v in values):
        return untested(f"no per-item records of {split} in this summary")
    metric = f"{split}_strict"
    methods = [models[n]["method"] for n in names]
    ppl = [models[n]["perplexity"] for n in names]

    def gap(rates):
        rows = [{"method": m, "perplexity": p, metric: r} for m, p, r in zip(methods, ppl, rates)]
        return front_gap(rows, "kfac", other, metric)["gap"]

    matrix = np.vstack(values)
    estimate = gap(matrix.mean(1))
    if estimate is None:
        return untested("a method has no front")
    idx = resample(items["kind"], _rng())
    rates = matrix[:, idx].mean(2)  # (edits, resamples)
    draws = [gap(rates[:, b]) for b in range(rates.shape[1])]
    return verdict(estimate, draws, "below", -RECITATION_MARGIN, edits=len(names))


def skill_split(summary: dict, name: str | None) -> dict:
    """Figure 3: min(open-book, logic) − max(closed-book, arithmetic) retention above
    SKILL_MARGIN, test items resampled within category, paired base/edit."""
    if name is None:
        return untested("no edit to test")
    base, edit = task_arrays(summary, "base"), task_arrays(summary, name)
    if base is None or edit is None:
        return untested("no per-item task records in this summary")
    cats, b = base
    e = edit[1]
    missing = [c for c in TASK_CATEGORIES if not (cats == c).any()]
    if missing:
        return untested(f"no test items of {', '.join(missing)}")
    idx = resample(cats, _rng())
    by_cat = {c: np.flatnonzero(cats == c) for c in TASK_CATEGORIES}

    def stat(bv, ev):
        with np.errstate(divide="ignore", invalid="ignore"):
            r = {c: ev[..., cols].mean(-1) / bv[..., cols].mean(-1) for c, cols in by_cat.items()}
        return (np.minimum(r["open_book"], r["logic"])
                - np.maximum(r["closed_book"], r["arithmetic"]))

    # a resample keeps each category's columns in place, so its columns are the same positions
    estimate = float(stat(b, e))
    return verdict(estimate, stat(b[idx], e[idx]), "above", SKILL_MARGIN, edit=name,
                   retention={c: float(e[cols].mean() / b[cols].mean()) if b[cols].mean()
                              else None for c, cols in by_cat.items()})


def interpolate_front(front: list[tuple[float, float]], ppl: float) -> float | None:
    """Recitation of a Pareto front at perplexity `ppl`, linear in log perplexity between its
    points; flat beyond its last point (higher points are dominated); None below its first."""
    if not front or ppl < front[0][0]:
        return None
    for (p0, r0), (p1, r1) in zip(front, front[1:]):
        if p0 <= ppl <= p1:
            w = (math.log(ppl) - math.log(p0)) / (math.log(p1) - math.log(p0)) if p1 > p0 else 0
            return r0 + w * (r1 - r0)
    return front[-1][1]


def top_beats_random_mass(summary: dict) -> dict:
    """The top-curvature edit at the controls' setting against the random-mass front at its
    perplexity (module docstring)."""
    ref = control_reference(summary)
    rm = controls_at(summary, "kfac-random-mass")
    models = summary["models"]
    rhos = {max(v for mods in models[n]["spec"].values() for v in mods.values()) for n in rm}
    if ref is None:
        return untested("no top-curvature edit at the controls' setting")
    if len(rhos) < MIN_FRONT_POINTS:
        return untested(f"random-mass edits at {len(rhos)} values of ρ (a front needs "
                        f"{MIN_FRONT_POINTS})")
    split = "forget_validation"
    items = split_items(summary, split)
    top = item_array(summary, ref, split)
    values = [item_array(summary, n, split) for n in rm]
    if items is None or top is None or any(v is None for v in values):
        return untested(f"no per-item records of {split} in this summary")
    ppl = [models[n]["perplexity"] for n in rm]
    p_ref = models[ref]["perplexity"]
    if not min(ppl) <= p_ref <= max(ppl):
        return untested(f"the top edit's perplexity {p_ref:.2f} lies outside the random-mass "
                        f"front ({min(ppl):.2f}-{max(ppl):.2f})", edit=ref, random_mass=rm)
    matrix = np.vstack(values)

    def diff(rates, top_rate):
        at = interpolate_front(pareto_front(list(zip(ppl, rates))), p_ref)
        return math.nan if at is None else at - top_rate

    idx = resample(items["kind"], _rng())
    rates, top_rates = matrix[:, idx].mean(2), top[idx].mean(1)
    draws = [diff(rates[:, b], top_rates[b]) for b in range(rates.shape[1])]
    return verdict(diff(matrix.mean(1), float(top.mean())), draws, "above", RECITATION_MARGIN,
                   edit=ref, random_mass=rm)


def ablate_top_hurts_most(summary: dict) -> dict:
    """Equal-mass band ablations: the top band's log perplexity ratio exceeds the middle band's and
    the bottom band's (the top-ρ edit) by more than PPL_MARGIN, held-out blocks resampled."""
    ref = control_reference(summary)
    top = controls_at(summary, "kfac-ablate-mass-top")
    middle = controls_at(summary, "kfac-ablate-mass-middle")
    if ref is None or not top or not middle:
        return untested("no equal-mass band ablations at the controls' setting")
    names = {"top": top[0], "middle": middle[0], "bottom": ref}
    blocks = {k: (summary["models"][n].get("perplexity_blocks")) for k, n in
              {**names, "base": "base"}.items()}
    if any(v is None for v in blocks.values()):
        return untested("no per-block perplexity records in this summary", edits=names)
    arr = {k: np.asarray(v, dtype=np.float64) for k, v in blocks.items()}
    if len({a.size for a in arr.values()}) != 1:
        return untested("the edits were scored on different held-out blocks", edits=names)
    rise = {k: arr[k] - arr["base"] for k in names}

    def stat(r):
        return np.minimum(r["top"] - r["middle"], r["top"] - r["bottom"])

    idx = resample(np.zeros(arr["base"].size), _rng())
    estimate = float(stat({k: v.mean() for k, v in rise.items()}))
    draws = stat({k: v[idx].mean(1) for k, v in rise.items()})
    return verdict(estimate, draws, "above", PPL_MARGIN, edits=names,
                   log_ppl_ratio={k: float(v.mean()) for k, v in rise.items()})


def _items_by_id(module_items: list[dict], order: list) -> list[dict] | None:
    by_id = {it["id"]: it for it in module_items}
    return [by_id[i] for i in order] if set(by_id) == set(order) else None


def _group_arrays(records: list[dict], group: str, subset: str):
    """(kinds, n, band norms, full norm) of one item group over the modules, items in the first
    module's order: n (modules, items), band norms (modules, items, bands), full (modules, items);
    only the items of `subset` (their "set", e.g. documents, not quotes; items without one are
    kept); None when the modules hold different items."""
    def chosen(items):
        return [it for it in items if it.get("set", subset) == subset]

    order = [it["id"] for it in chosen(records[0][group])]
    mods = [_items_by_id(chosen(r[group]), order) for r in records]
    if any(x is None for x in mods):
        return None
    kinds = np.asarray([str(it.get("kind", "all")) for it in mods[0]])
    n = np.asarray([[it["n"] for it in items] for items in mods], dtype=np.float64)
    bands = np.asarray([[it["mean_norm"]["kfac_pairs"] for it in items] for items in mods],
                       dtype=np.float64)
    full = np.asarray([[it["mean_norm"]["full"] for it in items] for items in mods],
                      dtype=np.float64)
    return kinds, n, bands, full


def _kind_balanced(kinds: np.ndarray, n: np.ndarray, x: np.ndarray, idx: np.ndarray):
    """Per module and resample, the mean over kinds of the kind's position-weighted mean
    Σ nᵢxᵢ / Σ nᵢ (curvmem.analysis.activation_ratio's pooled contrast): (modules, resamples)."""
    per_kind = []
    for k in sorted(set(kinds.tolist())):
        cols = idx[:, kinds == k]
        per_kind.append((n[:, cols] * x[:, cols]).sum(-1) / n[:, cols].sum(-1))
    return np.mean(per_kind, axis=0)


def band_contrast(modules: list[dict], groups: tuple[str, str], relative_to_full: bool,
                  subset: str = "documents") -> dict:
    """Figure 2's rule on per-item records: memorized ÷ control band ratios (kind-balanced over the
    kinds both hold, mean over modules), the bottom band above 1 + ACTIVATION_MARGIN and the top
    band below 1 − ACTIVATION_MARGIN; with `relative_to_full` each band ratio ÷ the full output's.
    Items of `subset` only (the documents: the quotes are another contrast)."""
    records = [m.get("items") for m in modules]
    if not modules or any(not r or not all(r.get(g) for g in groups) for r in records):
        return untested("no per-item records of the memorized and same-kind control items")
    sides = [_group_arrays(records, g, subset) for g in groups]
    if any(s is None for s in sides):
        return untested("the modules hold different items")
    if any(s[0].size == 0 for s in sides):
        return untested(f"no {subset} among the items")
    shared = sorted(set(sides[0][0].tolist()) & set(sides[1][0].tolist()))
    if not shared:
        return untested("no kind is in both the memorized and the control items")
    sides = [tuple(a[:, np.isin(kinds, shared)] if a.ndim == 3 else a[..., np.isin(kinds, shared)]
                   for a in (kinds, n, bands, full)) for kinds, n, bands, full in sides]
    last = sides[0][2].shape[-1] - 1

    def ratios(draws):
        out = {}
        for band in (0, last):
            r = (_kind_balanced(*sides[0][:2], sides[0][2][..., band], draws[0])
                 / _kind_balanced(*sides[1][:2], sides[1][2][..., band], draws[1]))
            if relative_to_full:
                r = r / (_kind_balanced(*sides[0][:2], sides[0][3], draws[0])
                         / _kind_balanced(*sides[1][:2], sides[1][3], draws[1]))
            out[band] = r.mean(0)
        return out

    est = ratios([np.arange(s[0].size)[None, :] for s in sides])
    rng = _rng()
    draws = ratios([resample(s[0], rng) for s in sides])
    bottom = verdict(float(est[last][0]), draws[last], "above", 1 + ACTIVATION_MARGIN)
    top = verdict(float(est[0][0]), draws[0], "below", 1 - ACTIVATION_MARGIN)
    return both("bottom_band", bottom, "top_band", top)


def _kind_balanced_median(values: np.ndarray, kinds: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per resample, the median within each kind (NaN ignored) and then the plain mean over kinds
    (curvmem.analysis.per_example's kind-balanced median): (resamples,)."""
    return np.mean([np.nanmedian(values[idx[:, kinds == k]], axis=1)
                    for k in sorted(set(kinds.tolist()))], axis=0)


def memorized_low_kappa(per_example: dict | None) -> dict:
    """Kind-balanced median κ of the memorized documents ÷ that of the same-kind controls (the
    kinds both hold; mean over modules) below 1 − KAPPA_MARGIN; items resampled within kind."""
    mods = (per_example or {}).get("modules") or []
    if not mods or not all((m.get("control") or {}).get("examples") for m in mods):
        return untested("no same-kind control in the per-example analysis")
    sides = {}
    for g in ("memorized", "control"):
        order = [e["id"] for e in mods[0][g]["examples"]]
        per_mod = [_items_by_id(m[g]["examples"], order) for m in mods]
        if any(x is None for x in per_mod):
            return untested(f"the modules hold different {g} items")
        sides[g] = per_mod
    shared = ({e["kind"] for e in sides["memorized"][0]}
              & {e["kind"] for e in sides["control"][0]})
    if not shared:
        return untested("no kind is in both the memorized and the control items")
    rng = _rng()
    arrays, kinds, draws = {}, {}, {}
    for g, per_mod in sides.items():
        keep = [i for i, e in enumerate(per_mod[0]) if e["kind"] in shared]
        arrays[g] = np.asarray([[np.nan if per_mod[j][i]["kappa"] is None
                                 else per_mod[j][i]["kappa"] for i in keep]
                                for j in range(len(per_mod))], dtype=np.float64)
        kinds[g] = np.asarray([per_mod[0][i]["kind"] for i in keep])
        draws[g] = resample(kinds[g], rng)

    def ratio(j, idx):
        return (_kind_balanced_median(arrays["memorized"][j], kinds["memorized"], idx["memorized"])
                / _kind_balanced_median(arrays["control"][j], kinds["control"], idx["control"]))

    whole = {g: np.arange(kinds[g].size)[None, :] for g in sides}
    est = float(np.mean([ratio(j, whole)[0] for j in range(len(mods))]))
    values = np.mean([ratio(j, draws) for j in range(len(mods))], axis=0)
    return verdict(est, values, "below", 1 - KAPPA_MARGIN, modules=len(mods))


def vit_table2(vit: dict | None) -> dict:
    """Table 2: memorized labels below 1/VIT_REDUCTION of the base's and validation accuracy
    no more than VIT_VAL_MARGIN below it, images resampled, paired base/edit."""
    pick = ((vit or {}).get("selected") or {}).get("kfac")
    if not pick:
        return untested("no ViT summary or no selected K-FAC edit")
    base, edit = vit["models"]["base"].get("items"), vit["models"][pick].get("items")
    if not base or not edit:
        return untested("no per-image records in the ViT summary")
    b_mem, e_mem = (np.asarray(x["noisy_memorized"], dtype=np.float64) for x in (base, edit))
    b_val, e_val = (np.asarray(x["val_correct"], dtype=np.float64) for x in (base, edit))
    rng = _rng()
    i_mem, i_val = resample(np.zeros(b_mem.size), rng), resample(np.zeros(b_val.size), rng)
    mem = e_mem - b_mem / VIT_REDUCTION
    val = e_val - b_val
    return {"edit": pick, **both(
        "memorized", verdict(float(mem.mean()), mem[i_mem].mean(1), "below", 0.0),
        "validation", verdict(float(val.mean()), val[i_val].mean(1), "above",
                              -VIT_VAL_MARGIN))}


def claims_v2(run: dict) -> dict:
    """{claim: verdict} for one seed under version 2 (module docstring); a verdict's `holds` is
    True, False or None (not tested, with `why`)."""
    s = run["lm"]
    pick = selected(s)
    analyses = run.get("analyses") or {}
    out = {}
    for memorized in MEMORIZED_SETS:
        for method in METHODS:
            out[f"removes_memorization_{memorized}_{method}"] = removes_memorization(
                s, pick[method], memorized)
    out["kfac_beats_bsn_quotes"] = fewer_recited(s, pick["kfac"], pick["bsn"], "untargeted")
    for other, split, name in (("bsn", "untargeted", "kfac_front_below_bsn_quotes"),
                               ("bsn", "forget_validation",
                                "kfac_front_below_bsn_forget_validation"),
                               ("svd", "untargeted", "kfac_front_below_svd_quotes")):
        out[name] = front_below(s, other, split)
    out["skill_split"] = skill_split(s, pick["kfac"])
    depth = paper_depth_edit(s)
    if depth is None:
        out["skill_split_paper_depth"] = untested("no model depth or K-FAC edit in the summary")
    elif not depth["within_budget"]:
        out["skill_split_paper_depth"] = untested(
            f"no edit at the paper's depth ({depth['name']}'s layer set) is within the "
            "perplexity budget", edit=depth["name"])
    else:
        out["skill_split_paper_depth"] = skill_split(s, depth["name"])
    out["top_beats_random_mass"] = top_beats_random_mass(s)
    out["ablate_top_hurts_most"] = ablate_top_hurts_most(s)
    act = analyses.get("activation_ratio")
    for name, rel in (("bottom_band_memorized", False), ("bottom_band_beyond_norm", True)):
        out[name] = (band_contrast(act["modules"], ("memorized", "control"), rel) if act
                     else untested("no activation-ratio analysis"))
    out["memorized_low_kappa"] = memorized_low_kappa(analyses.get("per_example"))
    vact = analyses.get("vit_activation_ratio")
    out["vit_bottom_band_memorized"] = (band_contrast(vact["modules"], VIT_GROUPS, False)
                                        if vact else untested("no ViT activation-ratio analysis"))
    out["vit_table2"] = vit_table2(run.get("vit"))
    return out


# --------------------------------------------------------------------------- version 1 (legacy)

# the top-curvature edit version 1's controls were cut from (its paper.yaml)
CONTROL_REFERENCE_SUFFIX_V1 = "-L1+2-rho0.7"
CLAIM_TEXT_V1 = {
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


def control_reference_v1(summary: dict) -> str | None:
    """Version 1's reference: the kfac-sweep edit named ...-L1+2-rho0.7."""
    return next((n for n, m in summary["models"].items()
                 if m.get("method") == "kfac" and n.endswith(CONTROL_REFERENCE_SUFFIX_V1)), None)


def claims_v1(run: dict) -> dict:
    """{claim: True/False/None} for one seed under version 1: the point-estimate rules the study
    committed before issue 29 was judged by, unchanged."""
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
    ref = control_reference_v1(s)
    rm = next((n for n in control_names(s) if n.startswith("kfac-random-mass-")), None)
    if ref and rm:
        claims["top_beats_random_mass"] = (models[ref]["forget_validation"]["strict"]
                                           < models[rm]["forget_validation"]["strict"])
    else:
        claims["top_beats_random_mass"] = None
    ablate = {band: next((n for n in control_names(s) if n.startswith(f"kfac-ablate-{band}-")),
                         None) for band in ("top", "middle", "bottom")}
    if all(ablate.values()):
        rises = {band: ppl_rise(models, n) for band, n in ablate.items()}
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


# --------------------------------------------------------------------------- a study


RULES = {1: (claims_v1, CLAIM_TEXT_V1), 2: (claims_v2, CLAIM_TEXT)}


def study_version(runs: dict[int, dict]) -> int:
    """The one rules version every seed's summary was made under (a study of mixed versions is
    refused: its seeds were run under different rules)."""
    versions = {s: claims_version(r["lm"]) for s, r in runs.items()}
    if len(set(versions.values())) != 1:
        raise ValueError(f"the seeds' summaries were made under different claim rules "
                         f"(seed: version {versions}); rerun the older seeds")
    version = next(iter(versions.values()))
    if version not in RULES:
        raise ValueError(f"claim rules version {version} is unknown to this curvmem (it knows "
                         f"{sorted(RULES)})")
    return version


def judge(runs: dict[int, dict]) -> tuple[int, dict]:
    """(version, {claim: {"text", "per_seed", "holds", "tested", ...}}) over the seeds: each seed
    judged by the rules its runs were made under. Version 2 adds each seed's verdict
    (`detail`: estimate, 95 % interval, threshold, or why it was not tested)."""
    seeds = sorted(runs)
    version = study_version(runs)
    rule, texts = RULES[version]
    per = {s: rule(runs[s]) for s in seeds}
    out = {}
    for c, text in texts.items():
        if version == 1:
            values = {s: per[s][c] for s in seeds}
            out[c] = {"text": text, "per_seed": {str(s): values[s] for s in seeds},
                      "holds": sum(bool(v) for v in values.values()),
                      "tested": sum(v is not None for v in values.values())}
        else:
            values = {s: per[s][c]["holds"] for s in seeds}
            out[c] = {"text": text, "per_seed": {str(s): values[s] for s in seeds},
                      "holds": sum(bool(v) for v in values.values()),
                      "tested": sum(v is not None for v in values.values()),
                      "detail": {str(s): per[s][c] for s in seeds}}
    return version, out


def rules_label(version: int) -> str:
    """How a report names the rules that judged a study."""
    if version == 1:
        return ("version 1: the point-estimate rules of curvmem.report.seeds before issue 29, "
                "fixed before these runs")
    return (f"version {version}: curvmem.report.claims, paired item bootstraps within each seed "
            f"({N_BOOTSTRAP} resamples, seed {BOOTSTRAP_SEED}), fixed before these runs")

