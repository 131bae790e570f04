"""The claim rules (curvmem.report.claims): each can hold and can fail on synthetic item records,
an uncertain one does not hold, absent inputs leave it untested; studies are judged by the rules
they were run under, and a committed study judged by the current rules was run after them."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

from curvmem.report import claims
from curvmem.report.lm import (
    build_summary,
    genre_competence,
    memorization_gaps,
    parse_entries,
    report_text,
    wilson,
)
from test_analysis import disk as analysis_disk  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[1]
DOC_KINDS = ("licence", "menu", "random", "table")
SPLIT_KINDS = {"forget_validation": DOC_KINDS, "untargeted": ("quote",), "control": DOC_KINDS,
               "control_quotes": ("quote",), "forget": DOC_KINDS}

# --------------------------------------------------------------------------- synthetic summaries


def _items(split: str, per_kind: int) -> dict:
    kinds = [k for k in SPLIT_KINDS[split] for _ in range(per_kind)]
    return {"id": [f"{split}-{i}" for i in range(len(kinds))], "kind": kinds,
            "suffix_len": [48] * len(kinds)}


def _split(rate: float, loss: float, per_kind: int, kinds) -> dict:
    """A memorized set where the first round(rate * n) items of each kind are recited."""
    k = round(rate * per_kind)
    distance = [0 if i < k else 20 for _ in kinds for i in range(per_kind)]
    n = len(distance)
    strict = distance.count(0) / n
    return {"n": n, "strict": strict, "loose": strict, "avg_distance": 0.5 * (1 - strict),
            "suffix_loss": loss, "by_kind": {},
            "items": {"distance": distance, "suffix_loss": [loss] * n}}


def _model(method=None, layers=(), ppl=20.0, fv=1.0, quotes=1.0, control_loss=4.0,
           quotes_control_loss=4.0, per_kind=30, rho=0.7, spec=None):
    m = {"forget": _split(fv, 0.1, per_kind, DOC_KINDS),
         "forget_validation": _split(fv, 0.1, per_kind, DOC_KINDS),
         "untargeted": _split(quotes, 0.1, per_kind, ("quote",)),
         "control": _split(0.0, control_loss, per_kind, DOC_KINDS),
         "control_quotes": _split(0.0, quotes_control_loss, per_kind, ("quote",)),
         "perplexity": ppl, "perplexity_selection": ppl,
         "tasks": dict.fromkeys(("closed_book", "open_book", "arithmetic", "logic"), 0.9),
         "tasks_n": {}, "subtasks": {}, "subtasks_n": {}, "ndcg10": None}
    if method:
        m["method"] = method
        m["spec"] = spec or {str(layer): {"mlp.gate_proj": rho, "mlp.up_proj": rho}
                             for layer in layers}
    return m


def summary_v2(per_kind: int = 30) -> dict:
    models = {
        "base": _model(per_kind=per_kind),
        "kfac-L2+3-rho0.7": _model("kfac", (2, 3), 21.0, fv=0.0, quotes=0.1, per_kind=per_kind),
        "kfac-L0-rho0.7": _model("kfac", (0,), 21.5, fv=0.2, quotes=0.3, per_kind=per_kind),
        "svd-L2+3-drop0.3": _model("svd", (2, 3), 21.0, fv=0.6, quotes=0.7, per_kind=per_kind),
        "bsn-ratio0.03": _model("bsn", (), 20.5, fv=0.0, quotes=0.6, per_kind=per_kind),
    }
    models["bsn-ratio0.03"]["spec"] = {"ratio": 0.03}
    for m in models.values():  # as report-lm writes them
        m["gap"], m["genre"] = memorization_gaps(m), genre_competence(m, models["base"])
    s = {"models": models, "claims_version": claims.CLAIMS_VERSION, "model_layers": 4,
         "items": {split: _items(split, per_kind) for split in SPLIT_KINDS},
         "selection": {m: {"selected": n, "reads": ["memorization_forget"], "n": 1,
                           "max_ppl_rise": 0.10, "task_weight": 0.0}
                       for m, n in (("kfac", "kfac-L2+3-rho0.7"), ("svd", "svd-L2+3-drop0.3"),
                                    ("bsn", "bsn-ratio0.03"))}}
    return s


def _tasks(summary: dict, rates: dict[str, dict[str, float]], per_cat: int = 200) -> None:
    """Per-item task records: rates[model][category] of the items correct."""
    cats = [c for c in ("closed_book", "open_book", "arithmetic", "logic") for _ in range(per_cat)]
    summary["items"]["tasks"] = {"id": [f"t{i}" for i in range(len(cats))], "category": cats,
                                 "subcategory": [None] * len(cats)}
    for name, by_cat in rates.items():
        correct = []
        for c in ("closed_book", "open_book", "arithmetic", "logic"):
            k = round(by_cat[c] * per_cat)
            correct += [1] * k + [0] * (per_cat - k)
        summary["models"][name]["task_items"] = {"correct": correct}


# --------------------------------------------------------------------------- the rules


def test_removal_needs_recitation_to_fall_and_the_genre_to_stay():
    s = summary_v2()
    v = claims.removes_memorization(s, "kfac-L2+3-rho0.7", "forget_validation")
    assert v["holds"] is True and v["recitation"]["estimate"] == pytest.approx(-0.5)
    # the same recitation, but the never-trained documents of the same kinds lose 0.3 nats/token
    s["models"]["kfac-L2+3-rho0.7"]["control"]["items"]["suffix_loss"] = [4.3] * 120
    v = claims.removes_memorization(s, "kfac-L2+3-rho0.7", "forget_validation")
    assert v["holds"] is False and v["genre"]["holds"] is False and v["recitation"]["holds"]
    assert v["genre"]["estimate"] == pytest.approx(0.3)
    # recites 60 % of what the base recites: not removed
    s = summary_v2()
    assert claims.removes_memorization(s, "svd-L2+3-drop0.3", "forget_validation")["holds"] is False
    # quotes against the control quotes
    assert claims.removes_memorization(s, "kfac-L2+3-rho0.7", "quotes")["holds"] is True
    assert claims.removes_memorization(s, None, "quotes")["holds"] is None


def test_too_few_items_to_be_sure_do_not_hold():
    """Recitation at 0.4 of the base's is under half on 200 items; on 20 it is not sure."""
    for per_kind, expected in ((50, True), (5, False)):
        s = summary_v2(per_kind)
        s["models"]["kfac-L2+3-rho0.7"]["forget_validation"] = _split(0.4, 0.1, per_kind, DOC_KINDS)
        v = claims.removes_memorization(s, "kfac-L2+3-rho0.7", "forget_validation")
        assert v["recitation"]["estimate"] == pytest.approx(-0.1)
        assert v["recitation"]["holds"] is expected, per_kind


def test_the_bootstrap_is_fixed_and_paired():
    s = summary_v2()
    s["models"]["bsn-ratio0.03"]["untargeted"] = _split(0.5, 0.1, 30, ("quote",))
    a = claims.fewer_recited(s, "kfac-L2+3-rho0.7", "bsn-ratio0.03", "untargeted")
    b = claims.fewer_recited(s, "kfac-L2+3-rho0.7", "bsn-ratio0.03", "untargeted")
    assert a == b and a["holds"] is True and a["estimate"] == pytest.approx(0.4)
    # paired: the same items recited by both, the difference is the same on every resample
    s["models"]["bsn-ratio0.03"]["untargeted"] = _split(0.1, 0.1, 30, ("quote",))
    same = claims.fewer_recited(s, "kfac-L2+3-rho0.7", "bsn-ratio0.03", "untargeted")
    assert same["ci95"] == [0.0, 0.0] and same["holds"] is False  # 0 points is within the margin
    idx = claims.resample(["a"] * 3 + ["b"] * 5, np.random.default_rng(0), 50)
    assert (idx[:, :3] < 3).all() and (idx[:, 3:] >= 3).all()  # within the kind


def test_kfac_beats_bsn_only_beyond_the_margin():
    s = summary_v2()
    s["models"]["bsn-ratio0.03"]["untargeted"] = _split(0.13, 0.1, 30, ("quote",))
    v = claims.fewer_recited(s, "kfac-L2+3-rho0.7", "bsn-ratio0.03", "untargeted")
    assert v["estimate"] == pytest.approx(1 / 30) and v["holds"] is False


def test_fronts_are_rescored_on_each_resample():
    s = summary_v2()
    s["models"]["bsn-low"] = _model("bsn", (), 21.5, fv=0.9, quotes=0.9)
    s["models"]["bsn-low"]["spec"] = {"ratio": 0.1}
    v = claims.front_below(s, "bsn", "untargeted")
    assert v["holds"] is True and v["estimate"] < -claims.RECITATION_MARGIN
    s["models"]["bsn-ratio0.03"]["untargeted"] = _split(0.1, 0.1, 30, ("quote",))
    s["models"]["bsn-ratio0.03"]["perplexity"] = 20.9
    assert claims.front_below(s, "bsn", "untargeted")["holds"] is False  # BSN as low, earlier
    del s["models"]["bsn-low"]["untargeted"]["items"]
    assert claims.front_below(s, "bsn", "untargeted")["holds"] is None


def test_skill_split_needs_item_records_and_a_margin():
    s = summary_v2()
    assert claims.skill_split(s, "kfac-L2+3-rho0.7")["holds"] is None  # no task records
    base = dict.fromkeys(("closed_book", "open_book", "arithmetic", "logic"), 0.9)
    spared = {"closed_book": 0.6, "open_book": 0.88, "arithmetic": 0.5, "logic": 0.86}
    _tasks(s, {n: base for n in s["models"]} | {"kfac-L2+3-rho0.7": spared})
    v = claims.skill_split(s, "kfac-L2+3-rho0.7")
    assert v["holds"] is True
    assert v["estimate"] == pytest.approx(0.86 / 0.9 - 0.6 / 0.9)
    logic_hurt = {**spared, "logic": 0.55}  # logic hurt as much as closed-book: no split
    _tasks(s, {n: base for n in s["models"]} | {"kfac-L2+3-rho0.7": logic_hurt})
    assert claims.skill_split(s, "kfac-L2+3-rho0.7")["holds"] is False


def test_the_paper_depth_edit_is_l2_and_l3_of_four():
    s = summary_v2()
    assert claims.PAPER_RELATIVE_DEPTH == pytest.approx(24.5 / 32)
    d = claims.paper_depth_edit(s)
    assert d == {"name": "kfac-L2+3-rho0.7", "layers": [2, 3], "depth": 0.75,
                 "within_budget": True}
    s["models"]["kfac-L2+3-rho0.7"]["perplexity_selection"] = 30.0  # over the +10 % budget
    d = claims.paper_depth_edit(s)
    assert d["name"] == "kfac-L2+3-rho0.7" and d["within_budget"] is False
    assert claims.claims_v2({"lm": s})["skill_split_paper_depth"]["holds"] is None
    assert claims.paper_depth_edit({**s, "model_layers": None}) is None


def _controls(s: dict, rm_points, ref_ppl=22.0):
    """The reference edit at L2+3 ρ 0.7 and random-mass edits at (ρ, perplexity, recitation)."""
    s["models"]["kfac-L2+3-rho0.7"]["perplexity"] = ref_ppl
    for rho, ppl, rate in rm_points:
        m = _model("kfac-random-mass", (2, 3), ppl, fv=rate, rho=rho)
        m["spec"] = {str(layer): {"mlp.gate_proj": 0.7, "mlp.up_proj": 0.7} for layer in (2, 3)} \
            if rho == 0.7 else m["spec"]
        s["models"][f"kfac-random-mass-L2+3-rho{rho}"] = m


def test_random_mass_is_a_front_read_at_matched_perplexity():
    s = summary_v2()
    assert claims.interpolate_front([(20.0, 0.8), (40.0, 0.2)], 20 * math.sqrt(2)) == \
        pytest.approx(0.5)
    assert claims.interpolate_front([(20.0, 0.8)], 19.0) is None
    _controls(s, [(0.7, 20.5, 0.9), (0.35, 21.0, 0.8), (0.15, 24.0, 0.6), (0.05, 40.0, 0.1)])
    v = claims.top_beats_random_mass(s)
    assert v["holds"] is True and v["edit"] == "kfac-L2+3-rho0.7"
    assert v["estimate"] == pytest.approx(0.8 + (0.6 - 0.8) * math.log(22 / 21) / math.log(24 / 21))
    s = summary_v2()
    _controls(s, [(0.7, 20.5, 0.9), (0.35, 21.0, 0.8), (0.15, 24.0, 0.6), (0.05, 40.0, 0.0)],
              ref_ppl=45.0)
    assert "outside" in claims.top_beats_random_mass(s)["why"]  # no extrapolation
    s = summary_v2()
    _controls(s, [(0.7, 20.5, 0.9), (0.15, 24.0, 0.6), (0.05, 40.0, 0.1)])
    assert "front needs 4" in claims.top_beats_random_mass(s)["why"]
    s = summary_v2()
    _controls(s, [(0.7, 20.5, 0.05), (0.35, 21.0, 0.05), (0.15, 24.0, 0.0), (0.05, 40.0, 0.0)])
    assert claims.top_beats_random_mass(s)["holds"] is False


def test_equal_mass_ablations_compare_log_perplexity_on_resampled_blocks():
    s = summary_v2()
    spec = s["models"]["kfac-L2+3-rho0.7"]["spec"]
    rng = np.random.default_rng(1)
    base = 3.0 + 0.1 * rng.standard_normal(300)
    rises = {"base": 0.0, "kfac-L2+3-rho0.7": 0.05, "kfac-ablate-mass-top-L2+3-rho0.7": 0.5,
             "kfac-ablate-mass-middle-L2+3-rho0.7": 0.02}
    for name, method in (("kfac-ablate-mass-top-L2+3-rho0.7", "kfac-ablate-mass-top"),
                         ("kfac-ablate-mass-middle-L2+3-rho0.7", "kfac-ablate-mass-middle")):
        s["models"][name] = _model(method, spec=spec)
    assert claims.ablate_top_hurts_most(s)["holds"] is None  # no per-block losses
    for name, rise in rises.items():
        s["models"][name]["perplexity_blocks"] = list(base + rise
                                                      + 0.01 * rng.standard_normal(300))
    v = claims.ablate_top_hurts_most(s)
    assert v["holds"] is True and v["estimate"] == pytest.approx(0.45, abs=0.01)
    s["models"]["kfac-ablate-mass-middle-L2+3-rho0.7"]["perplexity_blocks"] = list(base + 0.48)
    assert claims.ablate_top_hurts_most(s)["holds"] is False


def _activation(bottom: float, top: float, full: float, n_items: int = 20) -> dict:
    """Two modules of M's activation-ratio format: memorized norms = control x the ratios."""
    def items(scale_b, scale_t, scale_f, group):
        return [{"id": f"{group}-{k}-{i}", "kind": k, "n": 48 + i % 3,
                 "mean_norm": {"kfac_pairs": [scale_t * (1 + 0.01 * i), 1.0, 1.0,
                                              scale_b * (1 + 0.01 * i)],
                               "full": scale_f * (1 + 0.01 * i)}}
                for k in DOC_KINDS for i in range(n_items)]

    module = {"items": {"memorized": items(bottom, top, full, "m"),
                        "control": items(1.0, 1.0, 1.0, "c")}}
    return {"band_labels": ["top 10 %", "10–25 %", "25–50 %", "bottom 50 %"],
            "modules": [module, json.loads(json.dumps(module))]}


def test_figure_2_against_same_kind_controls_and_beyond_the_norm():
    mods = _activation(1.3, 0.8, 1.0)["modules"]
    v = claims.band_contrast(mods, ("memorized", "control"), False)
    assert v["holds"] is True and v["bottom_band"]["estimate"] == pytest.approx(1.3)
    # every band and the full output 30 % larger: raw bands fail at the top, beyond-norm at both
    mods = _activation(1.3, 1.3, 1.3)["modules"]
    assert claims.band_contrast(mods, ("memorized", "control"), False)["holds"] is False
    assert claims.band_contrast(mods, ("memorized", "control"), True)["holds"] is False
    mods = _activation(1.5, 1.0, 1.2)["modules"]
    assert claims.band_contrast(mods, ("memorized", "control"), False)["holds"] is False
    v = claims.band_contrast(mods, ("memorized", "control"), True)
    assert v["holds"] is True and v["top_band"]["estimate"] == pytest.approx(1 / 1.2)
    # quotes in the same records ("set": quotes) are another contrast: left out of this one
    mods = _activation(1.3, 0.8, 1.0)["modules"]
    for m in mods:
        for side, scale in (("memorized", 1.0), ("control", 3.0)):
            for it in m["items"][side]:
                it["set"] = "documents"
            m["items"][side] += [{"id": f"{side}-q{i}", "kind": "quote", "set": "quotes", "n": 48,
                                  "mean_norm": {"kfac_pairs": [scale] * 4, "full": scale}}
                                 for i in range(20)]
    v = claims.band_contrast(mods, ("memorized", "control"), False)
    assert v["holds"] is True and v["bottom_band"]["estimate"] == pytest.approx(1.3)
    old = [{"ratio": {"all": {}}}]  # an analysis against held-out text only
    assert claims.band_contrast(old, ("memorized", "control"), False)["holds"] is None


def test_kappa_against_same_kind_controls():
    def group(scale, prefix):
        return {"examples": [{"id": f"{prefix}{k}{i}", "kind": k, "kappa": scale * (1 + 0.02 * i)}
                             for k in DOC_KINDS for i in range(25)]}

    pe = {"modules": [{"memorized": group(0.5, "m"), "control": group(1.0, "c")}] * 2}
    v = claims.memorized_low_kappa(pe)
    assert v["holds"] is True and v["estimate"] == pytest.approx(0.5)
    pe = {"modules": [{"memorized": group(0.95, "m"), "control": group(1.0, "c")}]}
    assert claims.memorized_low_kappa(pe)["holds"] is False  # within the 10 % margin
    assert claims.memorized_low_kappa({"modules": [{"memorized": group(1, "m")}]})["holds"] is None


def test_vit_table2_on_image_records():
    def images(mem, val):
        return {"noisy_memorized": [1] * mem + [0] * (100 - mem),
                "val_correct": [1] * val + [0] * (400 - val)}

    vit = {"selected": {"kfac": "k"}, "models": {"base": {"items": images(90, 360)},
                                                  "k": {"items": images(3, 362)}}}
    assert claims.vit_table2(vit)["holds"] is True
    vit["models"]["k"]["items"] = images(3, 330)  # 7.5 points of validation lost
    assert claims.vit_table2(vit)["holds"] is False
    vit["models"]["k"] = {"memorized": 0.03}
    assert claims.vit_table2(vit)["holds"] is None


# --------------------------------------------------------------------------- studies


def test_a_study_is_judged_by_the_rules_it_was_run_under():
    new = summary_v2()
    version, judged = claims.judge({0: {"lm": new}, 1: {"lm": new}})
    assert version == claims.CLAIMS_VERSION and set(judged) == set(claims.CLAIM_TEXT)
    c = judged["removes_memorization_forget_validation_kfac"]
    assert c["holds"] == 2 and c["tested"] == 2 and c["detail"]["0"]["holds"] is True
    assert judged["vit_table2"]["tested"] == 0  # no ViT: untested, not failed
    old = {k: v for k, v in new.items() if k != "claims_version"}
    version, judged = claims.judge({0: {"lm": old}})
    assert version == 1 and set(judged) == set(claims.CLAIM_TEXT_V1)
    with pytest.raises(ValueError, match="different claim rules"):
        claims.judge({0: {"lm": new}, 1: {"lm": old}})
    with pytest.raises(ValueError, match="unknown"):
        claims.judge({0: {"lm": {**new, "claims_version": 99}}})


def test_wilson_interval():
    lo, hi = wilson(0, 52)
    assert lo == 0.0 and hi == pytest.approx(0.0688, abs=1e-4)
    lo, hi = wilson(26, 52)
    assert lo < 0.5 < hi and hi - 0.5 == pytest.approx(0.5 - lo)
    assert wilson(0, 0) is None


def test_report_lm_keeps_item_records_gaps_and_both_selections(tmp_path):
    from curvmem.io import write_json

    def mem(split, distances, losses, kinds):
        ex = [{"id": f"{split}-{i}", "kind": k, "distance": d, "suffix_len": 48,
               "suffix_loss": loss} for i, (d, loss, k) in enumerate(zip(distances, losses, kinds))]
        n = len(ex)
        return {"n": n, "strict": sum(d == 0 for d in distances) / n, "loose": 0.0,
                "avg_distance": sum(distances) / 48 / n, "suffix_loss": sum(losses) / n,
                "by_kind": {}, "examples": ex}

    def entry(name, recited, control_loss, ppl, val, method=None):
        d = tmp_path / name
        kinds = ["menu", "table"] * 4
        order = list(range(8)) if name == "base" else list(reversed(range(8)))  # another order
        for split, loss in (("forget", 0.1), ("forget_validation", 0.1), ("untargeted", 0.1),
                            ("control", control_loss), ("control_quotes", control_loss)):
            data = mem(split, [0 if i < recited else 30 for i in range(8)], [loss] * 8, kinds)
            data["examples"] = [data["examples"][i] for i in order]
            write_json(d / f"memorization_{split}.json", data)
        edit = {"method": method, "spec": {"2": {"mlp.up_proj": 0.7}}} if method else None
        write_json(d / "perplexity.json", {"perplexity": ppl, "perplexity_batch_mean": ppl,
                                           "edit": edit, "block_losses": [3.0, 3.1]})
        write_json(d / "perplexity_selection.json", {"perplexity": ppl,
                                                     "perplexity_batch_mean": ppl})
        tasks = {"accuracy": {"logic": 1.0}, "n": {"logic": 2},
                 "items": [{"id": "a", "category": "logic", "correct": True},
                           {"id": "b", "category": "logic", "correct": val > 0.5}]}
        write_json(d / "tasks.json", tasks)
        write_json(d / "tasks_validation.json", {"accuracy": dict.fromkeys(
            ("closed_book", "open_book", "arithmetic", "logic"), val)})
        return f"{name}={d}"

    entries = parse_entries([entry("base", 8, 4.0, 10.0, 1.0),
                             entry("k1", 0, 4.5, 10.5, 0.5, "kfac"),
                             entry("k2", 1, 4.01, 10.6, 1.0, "kfac")])
    s = build_summary(entries)
    # the paper's rule: lowest forget recitation within the budget; the variant weighs tasks
    assert s["selection"]["kfac"]["selected"] == "k1" and s["selected"] == "k1"
    assert s["selection"]["kfac"]["reads"] == ["memorization_forget", "perplexity_selection"]
    assert s["selection_variants"]["task_weighted"]["kfac"]["selected"] == "k2"
    assert s["claims_version"] == claims.CLAIMS_VERSION
    assert s["items"]["forget"]["id"] == [f"forget-{i}" for i in range(8)]
    # k1's files list the items in reverse order: matched by id, not position
    assert s["models"]["k2"]["forget"]["items"]["distance"] == [0] + [30] * 7
    assert s["models"]["k1"]["task_items"] == {"correct": [1, 0]}
    assert s["models"]["k1"]["perplexity_blocks"] == [3.0, 3.1]
    k1 = s["models"]["k1"]
    assert k1["gap"]["forget_validation"]["suffix_loss"] == pytest.approx(4.4)
    assert k1["genre"]["control"]["suffix_loss"] == pytest.approx(0.5)
    assert s["models"]["base"]["genre"]["control"]["suffix_loss"] == 0.0
    assert k1["forget"]["wilson"] == wilson(0, 8)
    # 8 items: nothing recited, yet genre lost (0.5 nats/token) -> not "removed"
    assert k1["removes_memorization"]["forget_validation"]["holds"] is False
    assert k1["removes_memorization"]["forget_validation"]["genre"]["holds"] is False
    text = report_text(s)
    assert "| k1 | 0.0 [0.0–32.4] | 0.100 | +4.400 |" in text  # Wilson: 0 of 8 items
    assert "| k2 (task-weighted pick) | kfac |" in text and "Variant (reported" in text


# --------------------------------------------------------------------------- rules before runs


def _git(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)


def descends(commit: str, ancestor: str, cwd=ROOT) -> bool:
    """Whether `commit` has `ancestor` in its history (git merge-base --is-ancestor)."""
    proc = _git("merge-base", "--is-ancestor", ancestor, commit, cwd=cwd)
    if proc.returncode not in (0, 1):
        raise AssertionError(f"git merge-base {ancestor} {commit}: {proc.stderr.strip()}")
    return proc.returncode == 0


def test_descends_tells_a_later_run_from_an_earlier_one(tmp_path):
    git = ["-c", "user.name=t", "-c", "user.email=t@example.org"]
    assert _git("init", "-q", cwd=tmp_path).returncode == 0
    shas = []
    for name in ("before", "rules", "after"):
        (tmp_path / name).write_text(name)
        _git("add", name, cwd=tmp_path)
        _git(*git, "commit", "-qm", name, cwd=tmp_path)
        shas.append(_git("rev-parse", "HEAD", cwd=tmp_path).stdout.strip())
    before, rules, after = shas
    assert descends(after, rules, tmp_path) and descends(rules, rules, tmp_path)
    assert not descends(before, rules, tmp_path)


def _snapshots() -> list[Path]:
    return sorted(p.parent for p in (ROOT / "docs" / "results").glob("*/seeds_summary.json"))


def test_every_study_judged_by_the_current_rules_was_run_after_them():
    """A committed study is judged by version >= 2 exactly when every seed's run was made at a
    commit that descends from the last change to curvmem/report/claims.py; a study run before
    the rules (the version-1 snapshot) must say it was judged by version 1."""
    if _git("rev-parse", "--is-shallow-repository").stdout.strip() == "true":
        pytest.skip("a shallow clone lacks the history that says which commit came first")
    rules = _git("log", "-1", "--format=%H", "--", "src/curvmem/report/claims.py").stdout.strip()
    if not rules:
        pytest.skip("claims.py is not committed yet in this working tree")
    snapshots = _snapshots()
    assert snapshots, "no committed multi-seed study"
    for snap in snapshots:
        summary = json.loads((snap / "seeds_summary.json").read_text())
        assert "claims_version" in summary, f"{snap}: the summary does not say which rules judged it"
        for seed in summary["seeds"]:
            run = json.loads((snap / f"seed-{seed}" / "run.json").read_text())
            assert _git("cat-file", "-e", f"{run['commit']}^{{commit}}").returncode == 0, \
                f"{snap}/seed-{seed}: commit {run['commit']} is not in this clone's history"
            lm = json.loads((snap / f"seed-{seed}" / "lm_summary.json").read_text())
            after = descends(run["commit"], rules)
            assert claims.claims_version(lm) == summary["claims_version"], (snap, seed)
            if summary["claims_version"] >= 2:
                assert after, (f"{snap}/seed-{seed}: run at {run['commit']}, before the last "
                               f"change to the claim rules ({rules[:8]}): rerun the study")
            else:
                assert not after, (f"{snap}/seed-{seed}: run after the current rules yet "
                                   "judged by version 1")


def test_the_rules_read_the_analyses_as_written(analysis_disk, tmp_path):  # noqa: F811 (fixture)
    """On the analyses' own JSON (a tiny model): the Figure 2 and κ rules' point estimates are
    the analyses' same-kind documents contrasts, mean over modules."""
    from test_analysis import analyze

    d = analysis_disk
    common = ["--model", str(d / "model"), "--threads", "1", "--device", "cpu",
              "--eigen", str(d / "eigen" / "main"), "--layers", "1",
              "--memorized", str(d / "mem.jsonl"), "--prefix-len", "24", "--suffix-len", "12",
              "--control", str(d / "ctl.jsonl"), "--quotes", str(d / "quotes.jsonl"),
              "--control-quotes", str(d / "quotes_ctl.jsonl"), "--resamples", "50",
              "--clean", str(d / "corpus.jsonl")]
    out = {}
    for name, extra in (("activation-ratio", ["--max-clean-blocks", "4"]), ("per-example", [])):
        path = tmp_path / f"{name}.json"
        assert analyze([name, *common, *extra, "--out", str(path)]) == 0
        out[name] = json.loads(path.read_text())
    mods = out["activation-ratio"]["modules"]
    for relative in (False, True):
        v = claims.band_contrast(mods, ("memorized", "control"), relative)
        for band, key in ((-1, "bottom_band"), (0, "top_band")):
            own = [m["same_kind"]["documents"]["kfac_pairs"][band]
                   / (m["same_kind"]["documents"]["full"] if relative else 1.0) for m in mods]
            assert v[key]["estimate"] == pytest.approx(float(np.mean(own)))
    k = claims.memorized_low_kappa(out["per-example"])
    own = [m["same_kind"]["documents"]["kappa_median_ratio"] for m in out["per-example"]["modules"]]
    assert k["estimate"] == pytest.approx(float(np.mean(own)))
    assert k["holds"] in (True, False) and len(k["ci95"]) == 2
