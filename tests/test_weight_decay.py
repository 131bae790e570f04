"""The LM at several weight decays (issue 21): each run's numbers and H.1's three predictions per
decayed run, against hand-made run summaries; the command that reads run directories."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from curvmem.report.weight_decay import compare, predictions, run_numbers, table
from test_seeds import _run

CLI = [sys.executable, "-c", "import sys; from curvmem.cli import main; sys.exit(main())"]
LABELS = ["top 10 %", "10–25 %", "25–50 %", "bottom 50 %"]


def decay_run(top_band: float, bottom_band: float, complement_fv: float,
              selected_quotes: float, selected_ppl: float) -> dict:
    """A run whose analyses and controls hold the given numbers (base perplexity 20)."""
    run = _run(1.0, 0.0)
    models = run["lm"]["models"]
    ref = models["kfac-L1+2-rho0.6"]
    models["kfac-L1+2-rho0.7"] = {**ref, "forget_validation": {**ref["forget_validation"],
                                                               "strict": 0.1}}
    models["kfac-bottom-L1+2-rho0.7"] = {
        **models["base"], "method": "kfac-bottom",
        "forget_validation": {**models["base"]["forget"], "strict": complement_fv}}
    pick = models["kfac-L1+2-rho0.6"]
    pick["untargeted"] = {**pick["untargeted"], "strict": selected_quotes}
    pick["perplexity"] = 20.0 * (1 + selected_ppl)
    bands = {"kfac_pairs": [top_band, 1.0, 1.0, bottom_band], "kfac_mass": [1.0] * 4,
             "svd": [1.0] * 4}
    run["analyses"] = {"activation_ratio": {"band_labels": LABELS,
                                            "modules": [{"ratio": {"all": bands}}]}}
    return run


def test_run_numbers_read_controls_bands_and_the_selected_edit():
    n = run_numbers(decay_run(0.6, 1.5, 0.5, 0.2, 0.05))
    assert n["activation"]["gap"] == pytest.approx(0.9)
    assert n["reference"]["name"] == "kfac-L1+2-rho0.7"
    assert n["reference"]["forget_validation"] == 0.1
    assert n["complement"]["name"] == "kfac-bottom-L1+2-rho0.7"
    assert n["complement"]["forget_validation"] == 0.5
    assert n["selected"]["kfac"]["name"] == "kfac-L1+2-rho0.6"
    assert n["selected"]["kfac"]["ppl_rise"] == pytest.approx(0.05)
    assert n["base"]["perplexity"] == 20.0 and n["random_mass"] is None


def test_predictions_compare_each_decayed_run_with_the_undecayed_one():
    undecayed = run_numbers(decay_run(0.6, 1.5, 0.5, 0.2, 0.05))
    sharper = run_numbers(decay_run(0.5, 1.8, 0.7, 0.1, 0.05))
    assert predictions(sharper, undecayed) == {"activation_gap_wider": True,
                                               "complement_gap_wider": True,
                                               "selected_tradeoff_better": True}
    # fewer quotes but at a larger perplexity rise: not a better trade-off
    costlier = run_numbers(decay_run(0.6, 1.4, 0.5, 0.1, 0.08))
    assert predictions(costlier, undecayed) == {"activation_gap_wider": False,
                                                "complement_gap_wider": False,
                                                "selected_tradeoff_better": False}
    blind = decay_run(0.6, 1.4, 0.5, 0.1, 0.08)
    del blind["analyses"]
    assert predictions(run_numbers(blind), undecayed)["activation_gap_wider"] is None


def test_compare_needs_the_undecayed_run_and_counts_predictions():
    runs = {0.0: {0: decay_run(0.6, 1.5, 0.5, 0.2, 0.05), 1: decay_run(0.6, 1.6, 0.5, 0.2, 0.05)},
            0.1: {0: decay_run(0.5, 1.8, 0.7, 0.1, 0.05), 1: decay_run(0.6, 1.5, 0.5, 0.2, 0.05)},
            0.3: {0: decay_run(0.6, 1.4, 0.5, 0.1, 0.08)}}
    result = compare(runs)
    assert result["weight_decays"] == [0.0, 0.1, 0.3]
    assert result["seeds"] == {"0.0": [0, 1], "0.1": [0, 1], "0.3": [0]}
    # each decayed run against the undecayed run of its own seed: 0.1/seed 1 has gap 0.9 < 1.0
    assert result["verdicts"]["0.1"]["1"]["activation_gap_wider"] is False
    assert result["counts"]["activation_gap_wider"] == {"holds": 1, "tested": 3}
    text = table(result)
    assert "| activation gap (bottom-50 % − top-10 %) | +0.90 | +1.00 | +1.30 | +0.90 | +0.80 |" \
        in text
    assert "| 1 of 3 |" in text and "| weight decay, seed | 0.0, seed 0 | 0.0, seed 1 |" in text
    with pytest.raises(ValueError, match="undecayed run"):
        compare({0.1: runs[0.1], 0.3: runs[0.3]})
    with pytest.raises(ValueError, match="at least one decayed"):
        compare({0.0: runs[0.0]})
    with pytest.raises(ValueError, match=r"seeds \[1\] have no undecayed run"):
        compare({0.0: {0: runs[0.0][0]}, 0.1: runs[0.1]})


def _write_run(directory, run):
    (directory / "analysis").mkdir(parents=True)
    (directory / "lm_summary.json").write_text(json.dumps(run["lm"]))
    (directory / "analysis/activation_ratio.json").write_text(
        json.dumps(run["analyses"]["activation_ratio"]))


def test_report_weight_decay_command(tmp_path):
    # the undecayed reference as one run (seed 0), the decayed one as a study's seed-N runs
    _write_run(tmp_path / "wd0", decay_run(0.6, 1.5, 0.5, 0.2, 0.05))
    _write_run(tmp_path / "wd0.1/seed-0", decay_run(0.5, 1.8, 0.7, 0.1, 0.05))
    out = subprocess.run([*CLI, "report-weight-decay", "--decay-dir", f"0={tmp_path / 'wd0'}",
                          "--decay-dir", f"0.1={tmp_path / 'wd0.1'}",
                          "--out", str(tmp_path / "wd.json"), "--table", str(tmp_path / "wd.md")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "wd.json").read_text())
    assert result["verdicts"]["0.1"]["0"]["activation_gap_wider"] is True
    assert (tmp_path / "wd.md").read_text() == out.stdout.split("curvmem timing")[0]
    for bad, message in ((["--decay-dir", f"x={tmp_path / 'wd0'}"], "expected WEIGHT_DECAY=DIR"),
                         ([f"--decay-dir=-1={tmp_path / 'wd0'}"], "expected WEIGHT_DECAY=DIR"),
                         (["--decay-dir", f"0.1={tmp_path / 'wd0.1'}"], "undecayed run"),
                         (["--decay-dir", f"0={tmp_path / 'wd0'}", "--decay-dir",
                           f"0.0={tmp_path / 'wd0'}"], "given twice"),
                         (["--decay-dir", f"0={tmp_path / 'nothing'}"], "no lm_summary.json")):
        r = subprocess.run([*CLI, "report-weight-decay", *bad, "--out", str(tmp_path / "x.json"),
                            "--table", str(tmp_path / "x.md")], capture_output=True, text=True)
        assert r.returncode != 0 and message in r.stderr, (bad, r.stderr)
        assert not (tmp_path / "x.json").exists() and not (tmp_path / "x.md").exists()


@pytest.mark.parametrize("wd", [0, 0.1, 0.3])
def test_overlays_change_only_outdir_seeds_and_weight_decay(wd):
    """workflow/config/lm-weight-decay/wdX.yaml merged over the default (as Snakemake merges the
    files of one --configfile) is a valid config that differs from it in those keys only."""
    import copy

    import yaml
    from snakemake.utils import update_config, validate

    from curvmem.plan import Plan
    from test_plan import ROOT, config

    default = config("default")
    merged = copy.deepcopy(default)
    overlay = yaml.safe_load((ROOT / f"workflow/config/lm-weight-decay/wd{wd}.yaml").read_text())
    update_config(merged, overlay)
    validate(merged, str(ROOT / "workflow/schemas/config.schema.yaml"))
    assert merged["outdir"] == f"results/lm-weight-decay/wd{wd}" and merged["seeds"] == [0, 1]
    assert merged["lm"]["model"].get("weight_decay", 0) == wd
    rest = {k: v for k, v in merged["lm"]["model"].items() if k != "weight_decay"}
    assert rest == default["lm"]["model"]
    assert {k: v for k, v in merged["lm"].items() if k != "model"} == \
        {k: v for k, v in default["lm"].items() if k != "model"}
    plan = Plan(merged)
    assert plan.out == f"results/lm-weight-decay/wd{wd}/seed-0"
    flags = plan.model_flags("lm", "preset", "seed", "steps", "weight_decay")
    assert (f"--weight-decay {wd}" in flags) == (wd > 0)


def _without_seconds(obj):
    if isinstance(obj, dict):
        return {k: _without_seconds(v) for k, v in obj.items() if k != "seconds"}
    return [_without_seconds(v) for v in obj] if isinstance(obj, list) else obj


def test_the_committed_study_is_what_the_command_computes_and_docs_show():
    """docs/results/lm-weight-decay: the comparison recomputed from the committed runs equals the
    committed one, docs/lm.md shows its table as written, and every run is the default's config
    at its weight decay (undecayed seed 0 is the default's own run)."""
    from curvmem.report.seeds import load_run
    from curvmem.report.weight_decay import load_decay_dir
    from test_plan import ROOT

    snap = ROOT / "docs/results/lm-weight-decay"
    runs = {wd: load_decay_dir(snap / f"wd{name}", load_run)
            for wd, name in ((0.0, "0"), (0.1, "0.1"), (0.3, "0.3"))}
    assert all(sorted(r) == [0, 1] for r in runs.values())
    result = compare(runs)
    committed = json.loads((snap / "lm_weight_decay.json").read_text())
    assert "seconds" not in json.dumps(result)  # a measured cost is no part of the comparison
    # the snapshot was written when each edit's numbers carried its measured seconds: all else
    # must match
    assert json.loads(json.dumps(result)) == _without_seconds(committed)
    assert table(result) == (snap / "lm_weight_decay.md").read_text()
    assert table(result) in (ROOT / "docs/lm.md").read_text()
    for name in ("0.1", "0.3"):
        for seed in (0, 1):
            run = json.loads((snap / f"wd{name}/seed-{seed}/run.json").read_text())
            assert run["config"] == f"workflow/config/lm-weight-decay/wd{name}.yaml"
            assert run["outdir"] == f"results/lm-weight-decay/wd{name}/seed-{seed}"
