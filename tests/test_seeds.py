"""A multi-seed study: the plan's seed offsets and the aggregation across seeds (intervals, k-of-n
claims), against hand-computed values."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys

import pytest
import yaml
from snakemake.utils import validate

from curvmem.plan import Plan, PlanError, seeded_config
from curvmem.report.claims import claims_v1 as seed_claims
from curvmem.report.seeds import (
    aggregate,
    aggregate_costs,
    cost_tables,
    interval,
    load_run,
    t975,
    tables,
)
from test_plan import ROOT, config
from test_readme import synthetic_summary

CLI = [sys.executable, "-c", "import sys; from curvmem.cli import main; sys.exit(main())"]

# --------------------------------------------------------------------------- the plan


def test_seed_zero_keeps_every_key_and_only_moves_the_outdir():
    cfg = config("paper")
    single = {k: v for k, v in cfg.items() if k != "seeds"}
    one, study = Plan(single), Plan(cfg)
    assert study.out == "results/paper/seed-0"
    assert study.edits == one.edits and study.model_key("lm") == one.model_key("lm")
    assert study.factor_sets == one.factor_sets


def test_another_seed_offsets_every_seed_and_nothing_else():
    cfg = config("paper")
    s0, s2 = seeded_config(cfg), seeded_config({**cfg, "seed": 2})
    assert s2["outdir"] == "results/paper/seed-2"
    assert s2["lm"]["model"]["seed"] == s0["lm"]["model"]["seed"] + 2  # world and training
    assert s2["lm"]["factors"]["seed"] == s0["lm"]["factors"]["seed"] + 2
    assert s2["lm"]["control_factors"]["seed"] == s0["lm"]["control_factors"]["seed"] + 2
    assert s2["vit"]["model"]["seed"] == s0["vit"]["model"]["seed"] + 2
    for name, sweep in s2["lm"]["edits"].items():
        before = s0["lm"]["edits"][name]
        random = sweep["method"] == "bsn" or sweep.get("keep") in ("random", "random-mass",
                                                                    "random-basis")
        if random:
            assert sweep["seed"] == before.get("seed", 0) + 2, name
        else:
            assert sweep == before, name
    assert s2["lm"]["factors"]["tokens"] == s0["lm"]["factors"]["tokens"]
    p0, p2 = Plan(cfg), Plan({**cfg, "seed": 2})
    assert p0.model_key("lm") != p2.model_key("lm")
    assert set(p0.edits["lm"]).isdisjoint(p2.edits["lm"])  # new content keys: nothing shared


def test_seed_config_errors():
    cfg = config("paper")
    with pytest.raises(PlanError, match="not one of seeds"):
        Plan({**cfg, "seed": 7})
    with pytest.raises(PlanError, match="each seed once"):
        seeded_config({**cfg, "seeds": [0, 0]})
    single = {k: v for k, v in cfg.items() if k != "seeds"}
    with pytest.raises(PlanError, match="does not list"):
        Plan({**single, "seed": 1})
    bad = {**cfg, "seeds": [0, -1]}
    with pytest.raises(Exception, match="minimum"):
        validate(bad, str(ROOT / "workflow/schemas/config.schema.yaml"))


def test_interval_is_the_student_t_interval():
    vals = [0.1, 0.4, 0.25]
    iv = interval(vals + [None])
    half = 4.303 * statistics.stdev(vals) / math.sqrt(3)
    assert iv["n"] == 3 and iv["mean"] == pytest.approx(0.25) and iv["half_width"] == pytest.approx(half)
    assert interval([0.5])["half_width"] is None and interval([None])["mean"] is None
    assert t975(1) == 12.706 and t975(40) == 1.96
    assert t975(11) == pytest.approx((2.228 + 2.179) / 2)
    with pytest.raises(ValueError):
        t975(0)


def _run(scale_quotes: float, ppl_shift: float, old_format: bool = False) -> dict:
    """One seed's run; its edits' costs (10 s each) in `lm_costs` (lm_summary.cost.json), or with
    `old_format` inside the summary's models, as an older report-lm wrote them."""
    s = synthetic_summary()
    s["selection"] = {"kfac": {"selected": "kfac-L1+2-rho0.6", "reads": ["memorization_forget"]},
                      "svd": {"selected": "svd", "reads": ["memorization_forget"]},
                      "bsn": {"selected": "bsn", "reads": ["memorization_forget"]}}
    for m in s["models"].values():
        m["forget_validation"] = dict(m["forget"])
        m["untargeted"]["strict"] *= scale_quotes
        m["perplexity"] += ppl_shift
        if old_format:
            m["seconds"] = 10.0
    costs = {} if old_format else {n: {"seconds": 10.0} for n in s["models"] if n != "base"}
    return {"lm": s, "lm_costs": costs, "factor_seconds": 40.0}


def test_aggregate_gives_means_intervals_and_claim_counts():
    runs = {0: _run(1.0, 0.0), 1: _run(1.0, 1.0), 3: _run(1.0, 2.0)}
    agg = aggregate(runs)
    assert agg["seeds"] == [0, 1, 3]
    assert agg["selected"]["kfac"] == {"0": "kfac-L1+2-rho0.6", "1": "kfac-L1+2-rho0.6",
                                       "3": "kfac-L1+2-rho0.6"}
    ppl = agg["base"]["perplexity"]
    assert ppl["mean"] == pytest.approx(21.0) and ppl["half_width"] == pytest.approx(4.303 / math.sqrt(3))
    rises = [21.5 / 20 - 1, 22.5 / 21 - 1, 23.5 / 22 - 1]
    assert agg["methods"]["kfac"]["ppl_rise"]["values"] == pytest.approx(rises)
    assert agg["methods"]["kfac"]["edits"] == 4
    assert "per_edit_seconds" not in json.dumps(agg)  # a cost: never in the summary
    # K-FAC: 4 edits share 40 s of factors: 10 s per edit + 10 s; the same from an older summary
    for old in (False, True):
        costs = aggregate_costs({0: _run(1.0, 0.0, old), 1: _run(1.0, 1.0, old)})
        assert costs["methods"]["kfac"]["per_edit_seconds"]["mean"] == pytest.approx(20.0)
        assert costs["methods"]["svd"]["per_edit_seconds"]["mean"] == pytest.approx(10.0)
        assert costs["methods"]["kfac"]["per_seed"]["1"]["factor_seconds"] == 40.0
        assert "| **K-FAC** | 20.0 ± 0.0 |" in cost_tables(costs)
    c = agg["claims"]
    # K-FAC's pick recites no quote, BSN's half of them: holds in all three seeds
    assert c["kfac_beats_bsn_quotes"]["holds"] == 3 and c["kfac_beats_bsn_quotes"]["tested"] == 3
    # no ablation controls, no analyses, no ViT in these runs: untested, not "fails"
    assert c["ablate_top_hurts_most"]["tested"] == 0 and c["vit_table2"]["tested"] == 0
    # the picked edit keeps 0.9 of every skill: no split of skills in any seed
    assert c["skill_split"]["holds"] == 0 and c["skill_split"]["tested"] == 3
    text = tables(agg)
    assert "| selected K-FAC recites fewer quotes than selected BSN (Table 1) | 3 of 3 seeds |" in text
    assert f"{21.0:.2f} ± {4.303 / math.sqrt(3):.2f}" in text


def test_claims_follow_their_rules_per_seed():
    run = _run(1.0, 0.0)
    models = run["lm"]["models"]
    models["bsn"]["untargeted"]["strict"] = 0.0  # BSN now as good on quotes: no longer fewer
    assert seed_claims(run)["kfac_beats_bsn_quotes"] is False
    base = models["base"]
    ref = dict(models["kfac-L1+2-rho0.6"])
    models["kfac-L1+2-rho0.7"] = {**ref, "forget_validation": {**ref["forget_validation"],
                                                               "strict": 0.1}}
    for band, ppl in (("top", 60.0), ("middle", 21.0), ("bottom", 20.1)):
        models[f"kfac-ablate-{band}-L1+2-rho0.7"] = {**base, "method": f"kfac-ablate-{band}",
                                                     "perplexity": ppl}
    models["kfac-random-mass-L1+2-rho0.7"] = {
        **base, "method": "kfac-random-mass",
        "forget_validation": {**base["forget"], "strict": 0.4}}
    claims = seed_claims(run)
    assert claims["ablate_top_hurts_most"] is True and claims["top_beats_random_mass"] is True
    models["kfac-ablate-bottom-L1+2-rho0.7"]["perplexity"] = 80.0
    assert seed_claims(run)["ablate_top_hurts_most"] is False
    run["vit"] = {"selected": {"kfac": "k"},
                  "models": {"base": {"memorized": 0.8, "val_acc": 0.7},
                             "k": {"memorized": 0.1, "val_acc": 0.71}}}
    assert seed_claims(run)["vit_table2"] is True
    run["vit"]["models"]["k"]["memorized"] = 0.2  # 4x fewer, not 5x
    assert seed_claims(run)["vit_table2"] is False


def test_report_seeds_command_reads_run_directories(tmp_path):
    for seed in (0, 1):
        d = tmp_path / f"seed-{seed}"
        (d / "benchmarks/lm/collect/main-abc").mkdir(parents=True)
        (d / "benchmarks/lm/collect/main-abc/layer_1.tsv").write_text("s\tmax_rss\n12.5\t100\n")
        (d / "benchmarks/lm/collect/control-abc").mkdir(parents=True)  # a control's: not K-FAC's
        (d / "benchmarks/lm/collect/control-abc/layer_1.tsv").write_text("s\tmax_rss\n99\t100\n")
        run = _run(1.0, seed)
        (d / "lm_summary.json").write_text(json.dumps(run["lm"]))
        (d / "lm_summary.json.cost.json").write_text(json.dumps({"models": run["lm_costs"]}))
        (d / "analysis").mkdir()  # an analysis' cost file is not an analysis
        (d / "analysis/stress.json.cost.json").write_text(json.dumps({"seconds": 1.0}))
    out = subprocess.run([*CLI, "report-seeds",
                          "--seed-dir", f"0={tmp_path / 'seed-0'}", "--seed-dir", f"1={tmp_path / 'seed-1'}",
                          "--out", str(tmp_path / "s.json"), "--tables", str(tmp_path / "t.md"),
                          "--figure", str(tmp_path / "f.png")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    agg = json.loads((tmp_path / "s.json").read_text())
    assert "per_edit_seconds" not in agg["methods"]["kfac"]
    assert "analyses" not in load_run(tmp_path / "seed-0")  # its cost file is not an analysis
    costs = json.loads((tmp_path / "s.json.cost.json").read_text())
    assert costs["methods"]["kfac"]["per_edit_seconds"]["mean"] == pytest.approx(10 + 12.5 / 4)
    assert (tmp_path / "t.md").read_text().startswith("Seeds 0, 1 (n = 2)")
    assert "per edit" not in (tmp_path / "t.md").read_text()
    assert "| **K-FAC** | 13.1 ± " in (tmp_path / "t_costs.md").read_text()
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    bad = subprocess.run([*CLI, "report-seeds", "--seed-dir",
                          f"0={tmp_path / 'nothing'}", "--out", str(tmp_path / "x.json"),
                          "--tables", str(tmp_path / "x.md")], capture_output=True, text=True)
    assert bad.returncode != 0 and "no lm_summary.json" in bad.stderr
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "x.md").exists()
    assert not (tmp_path / "x_costs.md").exists() and not (tmp_path / "x.json.cost.json").exists()


def test_paper_config_is_a_three_seed_study():
    cfg = yaml.safe_load((ROOT / "workflow/config/paper.yaml").read_text())
    assert len(cfg["seeds"]) >= 3


def test_band_claims_read_the_module_means():
    def ratio(top, bottom):
        return {"kfac_pairs": [top, 1.0, 1.0, bottom], "kfac_mass": [1.0] * 4, "svd": [1.0] * 4}

    labels = ["top 10 %", "10–25 %", "25–50 %", "bottom 50 %"]
    run = _run(1.0, 0.0)
    # two modules: the mean of (0.7, 1.2) < 1 at the top, of (1.5, 0.9) > 1 at the bottom
    run["analyses"] = {
        "activation_ratio": {"band_labels": labels, "modules": [
            {"ratio": {"all": ratio(0.7, 1.5)}}, {"ratio": {"all": ratio(1.2, 0.9)}}]},
        "vit_activation_ratio": {"band_labels": labels, "modules": [
            {"ratio": {"noisy_train/clean_train": ratio(1.1, 1.3)}}]}}
    claims = seed_claims(run)
    assert claims["bottom_band_memorized"] is True
    assert claims["vit_bottom_band_memorized"] is False  # the top band is not below 1
    agg = aggregate({0: run, 1: run})
    assert agg["analyses"]["activation_ratio"]["kfac_pairs"][0]["mean"] == pytest.approx(-0.05)
    assert "ViT activation ratio" in tables(agg)


def test_a_study_under_the_current_rules_reports_genre_wilson_and_log_ratios():
    """Version-2 summaries: the seeds' Wilson spans beside the t-intervals, perplexity as log
    ratios (an interval never below −100 %), the genre table, the paper-depth row, the
    bootstrap verdicts with their intervals."""
    from curvmem.report.claims import CLAIMS_VERSION
    from curvmem.report.lm import wilson
    from curvmem.report.seeds import ratio_cell
    from test_claims import summary_v2

    runs = {}
    for seed, shift in ((0, 0.0), (1, 2.0)):
        s = summary_v2()
        s["models"]["kfac-L2+3-rho0.7"]["perplexity"] += shift
        runs[seed] = {"lm": s}
    agg = aggregate(runs)
    assert agg["claims_version"] == CLAIMS_VERSION and "bootstrap" in agg["claims_rules"]
    kfac = agg["methods"]["kfac"]
    assert kfac["wilson"]["forget_validation"] == wilson(0, 120)
    assert kfac["log_ppl_ratio"]["values"] == pytest.approx([math.log(21 / 20), math.log(23 / 20)])
    assert agg["paper_depth"]["0"]["name"] == "kfac-L2+3-rho0.7"
    assert agg["base"]["gap_forget_validation"]["mean"] == pytest.approx(3.9)
    text = tables(agg)
    assert "| **K-FAC**: kfac-L2+3-rho0.7 (2) | 0.0 ± 0.0 [0.0–3.1] |" in text
    assert "K-FAC nearest the paper's depth: kfac-L2+3-rho0.7 (2)" in text
    assert "Memorization against genre" in text and "per seed: estimate" in text
    assert "| selected K-FAC removes memorization of forget-validation" in text
    wide = interval([math.log(0.5), math.log(2.0), math.log(5.0)])  # a +442 ± 843 % spread
    lo = float(ratio_cell(wide).split("(")[1].split(" to ")[0])
    assert -100 < lo < 0


def test_the_study_edits_at_the_papers_depth_with_equal_budgets_and_every_control():
    """paper.yaml: K-FAC and SVD each edit L2, L3 and L2+3 (the paper's relative depth in four
    layers), the same number of settings per method; random-mass spans a front of >= 4 rho at the
    controls' setting; the band ablations are of equal mass; the controls' reference is an edit
    of the K-FAC sweep."""
    from curvmem.plan import method_tag
    from curvmem.report.claims import MIN_FRONT_POINTS, PAPER_RELATIVE_DEPTH, relative_depth

    plan = Plan(config("paper"))
    edits = list(plan.edits["lm"].values())
    counts = {}
    for s in edits:
        counts[method_tag(s)] = counts.get(method_tag(s), 0) + 1
    assert counts["kfac"] == counts["svd"] == counts["bsn"] >= 8
    for method in ("kfac", "svd"):
        layer_sets = {tuple(s["layers"]) for s in edits if method_tag(s) == method}
        assert {(2,), (3,), (2, 3)} <= layer_sets, method
    assert abs(relative_depth((2, 3), 4) - PAPER_RELATIVE_DEPTH) < 0.05
    controls = [s for s in edits if method_tag(s).startswith("kfac-")]
    def setting(s):
        return json.dumps([s["layers"], s["modules"], s["rho"]])

    ref_settings = {setting(s) for s in edits if method_tag(s) == "kfac"}
    rm = [s for s in controls if method_tag(s) == "kfac-random-mass"]
    assert len({s["rho"] for s in rm}) >= MIN_FRONT_POINTS
    assert len({json.dumps([s["layers"], s["modules"]]) for s in rm}) == 1
    others = [s for s in controls if method_tag(s) != "kfac-random-mass"]
    assert len({setting(s) for s in others}) == 1 and {setting(s) for s in others} <= ref_settings
    tags = {method_tag(s) for s in controls}
    assert {"kfac-ablate-mass-top", "kfac-ablate-mass-middle"} <= tags
    assert not any(t.startswith("kfac-ablate-") and "mass" not in t for t in tags)
