"""curvmem.plan: the workflow's keys, sweeps, checks and flags, without Snakemake or torch.

tests/data/plan_keys.json was recorded from workflow/rules/common.smk before the plan moved into
the package (commit 54b2284): every shipped config must still give the same content keys, paths
and flags, so an existing results/ directory is reused, not recomputed.
"""

from __future__ import annotations

import copy
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from curvmem.plan import Plan, PlanError, digest, flags, method_tag, one_of, sweep_specs

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = json.loads((Path(__file__).parent / "data/plan_keys.json").read_text())
CONFIGS = sorted(p.stem for p in (ROOT / "workflow/config").glob("*.yaml"))


def config(name: str) -> dict:
    cfg = yaml.safe_load((ROOT / f"workflow/config/{name}.yaml").read_text())
    validate(cfg, str(ROOT / "workflow/schemas/config.schema.yaml"))  # fills the defaults
    return cfg


def record(plan: Plan) -> dict:
    """What tests/data/plan_keys.json holds for one config."""
    rec = {"outdir": plan.out, "domains": plan.domains}
    for d in plan.domains:
        rec[d] = {
            "model_key": plan.model_key(d), "base": plan.base[d], "model_arg": plan.model_arg(d),
            "factor_sets": plan.factor_sets[d], "edits": plan.edits[d],
            "collect_flags": {k: plan.collect_flags(d, k) for k in plan.factor_sets[d]},
            "edit_paths": {k: plan.edit_path(d, k) for k in plan.edits[d]},
            "report_entries": plan.report_entries(d),
        }
        flags_, inputs = {}, {}
        for k, s in plan.edits[d].items():
            if s["method"] == "bsn":
                flags_[k] = plan.bsn_flags(k)
            else:
                flags_[k] = plan.edit_flags(d, k)
                inputs[k] = plan.edit_inputs(d, k)
        rec[d]["edit_flags"] = flags_
        if inputs:
            rec[d]["edit_inputs"] = inputs
        if d == "lm":
            rec[d]["eval_files"] = {k: plan.lm_eval_files(k) for k in plan.eval_keys("lm")}
    if plan.study():  # the ViT study came after the move (a config with only `vit_study`)
        rec["vit_study"] = {"models": plan.study_models(), "data": plan.study_data_flags(),
                            "cell": plan.study_cell_flags(),
                            "train": {k: plan.study_train_flags(k) for k in plan.study_models()}}
    # the analyses' outputs and the README tables came after the move; the rest is as before
    rec["final_targets"] = [t for t in plan.final_targets()
                            if t not in plan.analysis_targets() + [plan.readme_tables()]]
    return json.loads(json.dumps(rec))


def test_golden_file_covers_every_shipped_config():
    assert sorted(GOLDEN) == CONFIGS


@pytest.mark.parametrize("name", CONFIGS)
def test_keys_paths_and_flags_are_those_recorded_before_the_move(name):
    assert record(Plan(config(name))) == GOLDEN[name]


def test_plan_is_torch_free():
    code = "import sys, curvmem.plan; print(sorted(m for m in ('torch', 'numpy', 'snakemake') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


def test_flags_quote_join_lists_and_drop_none():
    assert flags(("--a", 1), ("--b", None), ("--c", [1, 2]), ("--d", "x y")) == \
        "--a 1 --c 1,2 --d 'x y'"
    assert flags() == ""


def test_one_of_escapes_and_matches_nothing_when_empty():
    import re

    assert re.fullmatch(one_of(["a.b", "c"]), "a.b") and not re.fullmatch(one_of(["a.b"]), "axb")
    assert not re.fullmatch(one_of([]), "")


def test_digest_ignores_key_order():
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert len(digest({}, n=6)) == 6


def test_sweep_expansion_labels_and_specs():
    sweep = {"method": "kfac", "layers": [[3, 2], [4]], "modules": ["mlp.gate_proj"],
             "rho": [0.6, {"mlp.gate_proj": 0.5}], "keep": "random", "seed": 3}
    got = sweep_specs("lm", "k", sweep)
    assert [label for label, _ in got] == ["k-L2+3-rho0.6", "k-L2+3-rhogate0.5", "k-L4-rho0.6",
                                          "k-L4-rhogate0.5"]
    assert got[0][1] == {"name": "k", "method": "kfac", "layers": [2, 3],
                         "modules": ["mlp.gate_proj"], "rho": 0.6, "keep": "random",
                         "factors": "main", "seed": 3}
    assert method_tag(got[0][1]) == "kfac-random"
    bsn = sweep_specs("lm", "b", {"method": "bsn", "ratio": [0.01, 0.02], "epochs": 2})
    assert bsn == [("b-ratio0.01", {"name": "b", "method": "bsn", "ratio": 0.01, "epochs": 2}),
                   ("b-ratio0.02", {"name": "b", "method": "bsn", "ratio": 0.02, "epochs": 2})]


@pytest.mark.parametrize("sweep, message", [
    ({"method": "svd", "layers": [[1]], "modules": ["mlp.fc1"]}, "needs ['svd_drop']"),
    ({"method": "bsn", "ratio": [0.1]}, "bsn is a language-model baseline"),
    ({"method": "kfac", "layers": [[1]], "modules": ["mlp.fc1"], "rho": [{"mlp.fc2": 0.5}]},
     "names modules ['mlp.fc2'] not in `modules`"),
])
def test_bad_sweeps_are_refused(sweep, message):
    with pytest.raises(PlanError, match=message.replace("[", r"\[").replace("]", r"\]")):
        sweep_specs("vit", "s", sweep)


def test_checks_beyond_the_schema():
    smoke = config("smoke")
    cfg = copy.deepcopy(smoke)
    del cfg["lm"]["evaluations"]["tasks"]
    with pytest.raises(PlanError, match=r"lacks \['tasks'\]"):
        Plan(cfg)
    cfg = copy.deepcopy(smoke)
    cfg["lm"]["edits"]["kfac"]["modules"] = ["mlp.down_proj"]
    with pytest.raises(PlanError, match="are not in lm.factors.modules"):
        Plan(cfg)
    cfg = copy.deepcopy(smoke)
    cfg["lm"]["edits"]["again"] = dict(cfg["lm"]["edits"]["kfac"])
    cfg["lm"]["edits"]["again"]["rho"] = [0.6]
    assert len(Plan(cfg).edits["lm"]) == 3  # another sweep name: another label
    with pytest.raises(PlanError, match="neither an `lm` nor a `vit`"):
        Plan({"outdir": "r", "threads": 1}).final_targets()


def test_model_flags_resources_and_evaluations():
    plan = Plan(config("smoke"))
    assert plan.model_flags("vit", ("source", "data_source"), "seed", "noise", "image_size") == \
        "--seed 0 --noise 0.1"
    assert plan.model_flags("lm", "preset", "seed", "steps") == "--preset smoke --seed 0"
    assert plan.res("train", "lm") == {"mem_mb": 1000, "runtime": 10, "gpu": 1, "threads": 1}
    assert plan.lm_evaluations(plan.base["lm"]) == [
        "memorization_forget", "memorization_untargeted", "memorization_control", "perplexity",
        "tasks"]  # no coherence for the base model
    key = plan.edit_keys("lm", ["bsn"])[0]
    inputs = plan.lm_eval_inputs(key)  # one job per edit: the model, each data file once, the edit
    assert inputs[-1] == plan.edit_path("lm", key) and len(inputs) == len(set(inputs))
    assert set(inputs[1:-1]) == {plan.lm_data(plan.evaluation(n)["data"])
                                 for n in plan.lm_evaluations(key)}
    runs = shlex.split(plan.lm_eval_runs(key))
    assert runs[::4] == ["--run"] * len(plan.lm_evaluations(key))
    assert [tuple(runs[i + 1:i + 4]) for i in range(0, len(runs), 4)] == [
        (plan.evaluation(n)["kind"], plan.lm_data(plan.evaluation(n)["data"]),
         f"results/smoke/lm/eval/{key}/{n}.json") for n in sorted(plan.lm_evaluations(key))]
    assert "coherence" not in plan.lm_eval_runs(plan.base["lm"])
    shuffled = config("smoke")  # a config written back in another key order runs nothing new
    shuffled["lm"]["evaluations"] = dict(reversed(list(shuffled["lm"]["evaluations"].items())))
    assert Plan(shuffled).lm_eval_runs(key) == plan.lm_eval_runs(key)
    assert Plan(shuffled).lm_eval_inputs(key) == plan.lm_eval_inputs(key)
    assert plan.edit_path("lm", key).startswith("results/smoke/lm/bsn/")
    assert plan.shard_files("lm", plan.fkeys(sharded=True)[0], 2)[1].endswith(
        "/shard-1-of-2/layer_2.nc")


def test_analysis_plan_slices_and_checks():
    plan = Plan(config("default"))
    a = plan.analysis()
    assert plan.analysis_targets() == [f"results/analysis/{n}.{x}" for n in (
        "activation_ratio", "task_interaction", "spectra", "per_example", "stability", "stress")
        for x in ("json", "png")]
    assert set(plan.analysis_targets()) <= set(plan.summaries())  # shown in the HTML report
    sets = plan.stability_sets()
    sizes = a["stability"]["sizes"]
    assert len(sets) == 2 * len(sizes) + 1  # two disjoint slices per size, one more label seed
    for name, (size, k, seed) in sets.items():
        args = shlex.split(plan.stability_collect_flags(name))
        assert args[args.index("--tokens") + 1] == str(2 * size)
        assert args[args.index("--shard") + 1] == f"{k}/2"
        assert args[args.index("--seed") + 1] == str(seed)
    assert sorted((s, k) for s, k, seed in sets.values() if seed == 0) == sorted(
        (s, k) for s in sizes for k in (0, 1))
    other_model = config("default")
    other_model["lm"]["model"]["seed"] = 1  # another model: other slices, never reused
    assert set(Plan(other_model).stability_sets()).isdisjoint(sets)
    stress = shlex.split(plan.stress_flags())
    labels = {stress[i + 1].split("=")[0] for i, a_ in enumerate(stress) if a_ == "--edit"}
    assert {"svd-L1+2-drop0.5"} <= labels and not any("bottom" in x or "random" in x
                                                       for x in labels)
    assert all(lb.startswith(("kfac-", "svd-", "bsn")) for lb in labels)
    assert Plan(config("smoke")).analysis() is None and not Plan(config("smoke")).analysis_targets()


@pytest.mark.parametrize("change, message", [
    ({"layers": [0, 9]}, r"\[9\] have no eigenbasis"),
    ({"modules": ["mlp.down_proj"]}, "not in lm.factors.modules"),
    ({"stability": {"layer": 3, "sizes": [100], "rho": 0.6}}, "stability.layer 3 is not"),
])
def test_bad_analysis_configs_are_refused(change, message):
    cfg = config("default")
    cfg["lm"]["analysis"].update(change)
    with pytest.raises(PlanError, match=message):
        Plan(cfg)



def test_vit_study_grid_trains_each_setting_once_and_spells_its_flags():
    cfg = config("vit-study")
    cfg["vit_study"]["grid"] = {"a": {"weight_decay": [0, 0.3], "seed": [0, 1]},
                                "b": {"weight_decay": [0.3], "seed": [1]},  # in `a` already
                                "c": {"embed_dim": [192], "num_heads": [3], "patch_size": [2],
                                      "weight_decay": [0.3], "seed": [0]}}
    plan = Plan(cfg)
    models = plan.study_models()
    assert len(models) == 5
    wide = next(k for k in models if k.startswith("w192-d6-p2-wd0.3-matrices-s0-"))
    assert shlex.split(plan.study_train_flags(wide)) == [
        "--decay", "matrices", "--embed-dim", "192", "--num-heads", "3", "--patch-size", "2",
        "--preset", "default", "--seed", "0", "--weight-decay", "0.3"]
    assert "--kfac-layers '0;-1;0,-1'" in plan.study_cell_flags()
    assert plan.final_targets()[-1] == f"{plan.out}/report.html"
    other = copy.deepcopy(cfg)
    other["vit_study"]["data"]["seed"] = 1  # another dataset: every model is another model
    assert not set(Plan(other).study_models()) & set(models)
    cfg["vit_study"]["grid"]["d"] = {"preset": ["tiny"]}
    with pytest.raises(PlanError, match="unknown preset"):
        Plan(cfg).study_models()
