"""curvmem.plan: the workflow's keys, sweeps, checks and flags, without Snakemake or torch.

tests/data/plan_keys.json was recorded from workflow/rules/common.smk before the plan moved into
the package (commit 54b2284), and tests/data/make_plan_keys.py writes it: every shipped config
must still give the same content keys, paths and flags, so an existing results/ directory is
reused, not recomputed.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from curvmem.plan import (
    ANALYSES,
    ANALYSIS_DATA,
    ANALYSIS_JOBS,
    VIT_ANALYSES,
    Layout,
    Plan,
    PlanError,
    digest,
    flags,
    method_tag,
    one_of,
    seed_outdirs,
    sweep_specs,
)

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_plan_keys",
                                               ROOT / "tests/data/make_plan_keys.py")
make_plan_keys = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_plan_keys)
GOLDEN = json.loads(make_plan_keys.GOLDEN.read_text())
CONFIGS = make_plan_keys.CONFIGS
config = make_plan_keys.config
record = make_plan_keys.record


def test_golden_file_covers_every_shipped_config():
    assert sorted(GOLDEN) == CONFIGS


def test_the_generator_writes_the_golden_file_byte_for_byte(tmp_path, monkeypatch):
    assert make_plan_keys.render() == make_plan_keys.GOLDEN.read_text()
    assert make_plan_keys.main(["--check"]) == 0
    changed = tmp_path / "plan_keys.json"  # a stale file: --check fails, a rewrite restores it
    changed.write_text(make_plan_keys.GOLDEN.read_text().replace('"smoke"', '"smoky"', 1))
    monkeypatch.setattr(make_plan_keys, "GOLDEN", changed)
    assert make_plan_keys.main(["--check"]) == 1
    assert make_plan_keys.main([]) == 0 and make_plan_keys.main(["--check"]) == 0


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
    # several values to one flag (evaluate batch --run KIND DATA OUT), each one word
    assert flags(("--run", "tasks", "a b.jsonl", None, "$(x).json"), ("--e", None, None)) == \
        "--run tasks 'a b.jsonl' '$(x).json'"
    assert shlex.split(flags(("--x", "it's `a`; $(b)"))) == ["--x", "it's `a`; $(b)"]


def test_the_plan_has_one_quoting_helper():
    """Every flag string of the plan is built by `flags` (shlex.quote is called nowhere else),
    and the rules' glue calls no quoting of its own."""
    plan_source = "".join(p.read_text() for p in (ROOT / "src/curvmem/plan").glob("*.py"))
    assert plan_source.count("shlex.quote(") == 1
    for path in [ROOT / "Snakefile", *(ROOT / "workflow/rules").glob("*.smk")]:
        assert "shlex" not in path.read_text(), path


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
    del cfg["lm"]["evaluations"]["perplexity"]
    with pytest.raises(PlanError, match=r"lacks \['perplexity'\]"):
        Plan(cfg)
    cfg = copy.deepcopy(smoke)  # skills scored by the harness only
    del cfg["lm"]["evaluations"]["tasks"]
    assert "tasks" not in Plan(cfg).lm_evaluations(Plan(cfg).base["lm"])
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


def test_factor_variants_and_the_curvature_corpus():
    """Factors come from the curvature corpus; a factor variant on another slice collects the
    next `tokens` positions; every collection counts the memorized positions of all
    memorization sets."""
    plan = Plan(config("paper"))
    main, other = (plan.factor_key("lm", f) for f in ("main", "other-slice"))
    assert plan.domain_data("lm").endswith("/world/curvature.jsonl")
    main_flags, other_flags = (shlex.split(plan.collect_flags("lm", k)) for k in (main, other))
    assert main_flags[main_flags.index("--tokens") + 1] == "100000" and "--shard" not in main_flags
    assert other_flags[other_flags.index("--tokens") + 1] == "200000"
    assert other_flags[other_flags.index("--shard") + 1] == "1/2"
    memorized = main_flags[main_flags.index("--memorized") + 1].split(",")
    assert sorted(p.rsplit("/", 1)[1] for p in memorized) == sorted(
        ["canaries_forget.jsonl", "canaries_forget_validation.jsonl", "quotes.jsonl",
         "quotes_long.jsonl", "canaries_control.jsonl", "quotes_control.jsonl"])
    tags = {s["label"]: method_tag(s) for s in plan.edits["lm"].values()}
    for tag in ("kfac-other-slice", "kfac-ablate-mass-middle", "kfac-shard"):  # any depth
        named = [label for label in tags if label.startswith(f"{tag}-L")]
        assert named and all(tags[label] == tag for label in named), tag
    cfg = config("paper")
    cfg["lm"]["edits"]["kfac-shard"]["factors"] = "nope"
    with pytest.raises(PlanError, match="not main, control or a key of lm.factor_variants"):
        Plan(cfg)
    cfg = config("paper")
    cfg["lm"]["factor_variants"]["other-slice"]["shards"] = 2
    with pytest.raises(PlanError, match="slice and shards"):
        Plan(cfg)


def test_equal_budgets_in_the_study():
    """paper.yaml gives K-FAC, SVD and BSN at least 8 settings each (issue 17)."""
    plan = Plan(config("paper"))
    counts = {}
    for s in plan.edits["lm"].values():
        counts[method_tag(s)] = counts.get(method_tag(s), 0) + 1
    assert counts["kfac"] >= 8 and counts["svd"] >= 8 and counts["bsn"] >= 8


def test_model_flags_resources_and_evaluations():
    plan = Plan(config("smoke"))
    assert plan.model_flags("vit", ("source", "data_source"), "seed", "noise", "image_size") == \
        "--seed 0 --noise 0.1"
    assert plan.model_flags("lm", "preset", "seed", "steps") == "--preset smoke --seed 0"
    decayed = config("smoke")
    decayed["lm"]["model"]["weight_decay"] = 0.1  # a new model key, and the flag to train it
    decayed_plan = Plan(decayed)
    assert decayed_plan.model_flags("lm", "preset", "weight_decay") == \
        "--preset smoke --weight-decay 0.1"
    assert decayed_plan.model_key("lm") != plan.model_key("lm")
    assert plan.res("train", "lm") == {"mem_mb": 1000, "runtime": 10, "gpu": 1, "threads": 1}
    assert plan.lm_evaluations(plan.base["lm"]) == [
        "memorization_forget", "memorization_forget_validation", "memorization_untargeted",
        "memorization_untargeted_long", "memorization_control", "memorization_control_quotes",
        "perplexity", "perplexity_selection", "tasks",
        "tasks_validation"]  # no coherence for the base model
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
    assert not plan.made_with_evaluation("lm", key)  # BalancedSubnet trains in its own job
    # a K-FAC edit is made by its evaluation job: that job reads the edit's eigenbases, not it
    kfac = plan.edit_keys("lm", ["kfac"])[0]
    assert plan.made_with_evaluation("lm", kfac) and not plan.made_with_evaluation(
        "lm", plan.base["lm"])
    inputs = plan.lm_eval_inputs(kfac)
    assert plan.edit_path("lm", kfac) not in inputs and len(inputs) == len(set(inputs))
    assert set(plan.edit_inputs("lm", kfac)) <= set(inputs)
    assert any("/eigen/" in f for f in inputs)
    vit_edit = next(iter(plan.edits["vit"]))
    assert set(plan.vit_eval_inputs(vit_edit)) == {plan.vit_data(), *plan.edit_inputs(
        "vit", vit_edit)}
    assert plan.shard_files("lm", plan.fkeys(sharded=True)[0], 2)[1].endswith(
        "/shard-1-of-2/layer_2.nc")


def test_analysis_plan_slices_and_checks():
    plan = Plan(config("default"))
    a = plan.analysis()
    assert plan.analysis_targets()[:12] == [f"results/analysis/{n}.{x}" for n in (
        "activation_ratio", "task_interaction", "spectra", "per_example", "stability", "stress")
        for x in ("json", "png")]
    assert set(plan.analysis_targets()) <= set(plan.summaries())  # shown in the HTML report
    sets = plan.stability_sets()
    sizes = a["stability"]["sizes"]
    assert len(sets) == 2 * len(sizes) + 1  # two disjoint slices per size, one more label seed
    args = shlex.split(plan.stability_flags())
    slices = dict(args[i + 1].split("=") for i, a_ in enumerate(args) if a_ == "--slice")
    named = dict(args[i + 1].split("=") for i, a_ in enumerate(args) if a_ == "--set")
    for name, (size, k, seed) in sets.items():  # collect --tokens 2N --shard k/2 --seed s
        assert slices[name] == f"{2 * size},{k}/2,{seed}"
        assert named[name] == plan.stability_eigen_dir(name)
    f = plan.factor_config("lm", "main")
    assert args[args.index("--seq-len") + 1] == str(f["seq_len"])
    assert args[args.index("--batch-size") + 1] == str(f["batch_size"])
    assert sorted((s, k) for s, k, seed in sets.values() if seed == 0) == sorted(
        (s, k) for s in sizes for k in (0, 1))
    other_model = config("default")
    other_model["lm"]["model"]["seed"] = 1  # another model: other slices, never reused
    assert set(Plan(other_model).stability_sets()).isdisjoint(sets)
    stress = shlex.split(plan.stress_flags())
    labels = {stress[i + 1].split("=")[0] for i, a_ in enumerate(stress) if a_ == "--edit"}
    assert {e["label"] for e in plan.edits["lm"].values() if e["method"] in ("svd", "bsn")} \
        <= labels and not any("bottom" in x or "random" in x for x in labels)
    assert all(lb.startswith(("kfac-", "svd-", "bsn")) for lb in labels)
    assert Plan(config("smoke")).analysis() is None and not Plan(config("smoke")).analysis_targets()
    # the jobs: each analysis in exactly one, every batch run writes its own outputs
    jobs = plan.analysis_jobs()
    assert jobs == list(ANALYSIS_JOBS) and sorted(n for j in jobs for n in ANALYSIS_JOBS[j]) == \
        sorted(ANALYSES + VIT_ANALYSES)
    for job in jobs:
        runs = [shlex.split(r) for r in shlex.split(plan.analysis_batch_flags(job))[1::2]]
        outs = [r[r.index("--out") + 1] for r in runs]
        assert outs == [plan.analysis_outputs(n)["json"] for n in ANALYSIS_JOBS[job]]
        named = plan.analysis_job_outputs(job)  # the rule's named outputs
        assert outs == [named[f"{n}_json"] for n in ANALYSIS_JOBS[job]]
        assert ("slices" in named) == (job in ("lm_stability", "vit"))
    # the same-kind contrast: memorized documents and quotes beside never-trained ones of the
    # same kinds, content-keyed world files, inputs of the job that reads them
    world = {k: plan.lm_data(k) for k in ANALYSIS_DATA}
    assert all(f.startswith(f"{plan.model_dir('lm')}/world/") for f in world.values())
    for name in ("activation_ratio", "per_example"):
        run = shlex.split(plan.analysis_run(name))
        got = {flag: run[run.index(flag) + 1] for flag in
               ("--memorized", "--control", "--quotes", "--control-quotes", "--clean")}
        assert got == {"--memorized": world["forget"], "--control": world["control"],
                       "--quotes": world["untargeted"],
                       "--control-quotes": world["control_quotes"], "--clean": world["heldout"]}
    inputs = plan.analysis_job_inputs("lm_model")
    assert {inputs[k] for k in ("memorized", "control", "quotes", "control_quotes", "clean")} == {
        world[k] for k in ("forget", "control", "untargeted", "control_quotes", "heldout")}
    # stress: every forget-validation item (never the forget set the selection reads)
    stress_run = shlex.split(plan.analysis_run("stress"))
    assert stress_run[stress_run.index("--memorized") + 1] == world["forget_validation"]
    assert "--max-items" not in stress_run and "--max-per-kind" not in stress_run
    assert plan.analysis_job_inputs("lm_sweep")["memorized"] == world["forget_validation"]
    capped = config("default")
    capped["lm"]["analysis"]["stress"] = {"t": 20, "max_per_kind": 7}
    assert "--max-per-kind 7" in Plan(capped).stress_flags()
    # task interaction: quotes as the memorized reference (their retention: untargeted)
    ti_run = shlex.split(plan.analysis_run("task_interaction"))
    assert ti_run[ti_run.index("--memorized") + 1] == world["untargeted"]
    vit = plan.analysis_run("vit_stability")
    assert "--seq-len" not in vit and "--slice" in vit and plan.vit_data() in vit
    assert plan.stability_eigen_files("vit")[0].startswith("results/vit/analysis/stability/")
    assert plan.analysis_targets()[-8:] == [f"results/analysis/{n}.{x}" for n in VIT_ANALYSES
                                            for x in ("json", "png")]


def test_analyses_without_same_kind_controls_are_refused():
    cfg = config("default")
    del cfg["lm"]["data"]["control_quotes"]
    with pytest.raises(PlanError, match=r"needs lm.data entries \['control_quotes'\]"):
        Plan(cfg)
    del cfg["lm"]["analysis"]  # no analyses: nothing needs the controls
    Plan(cfg)


@pytest.mark.parametrize("change, message", [
    ({"layers": [0, 9]}, r"\[9\] have no eigenbasis"),
    ({"modules": ["mlp.o_proj"]}, "not in lm.factors.modules"),
    ({"stability": {"layer": 1, "sizes": [100], "rho": 0.6}}, "stability.layer 1 is not"),
])
def test_bad_analysis_configs_are_refused(change, message):
    cfg = config("default")
    cfg["lm"]["analysis"].update(change)
    with pytest.raises(PlanError, match=message):
        Plan(cfg)
    cfg = config("default")
    cfg["vit"]["analysis"].update({k: [x.replace("down_proj", "fc3") for x in v]
                                   if k == "modules" else v for k, v in change.items()})
    with pytest.raises(PlanError, match=message.replace("lm.", "vit.")):
        Plan(cfg)



def test_revision_keys_and_snapshot_paths():
    cfg = config("olmo2-7b")
    plan = Plan(cfg)
    assert plan.hub_model("lm") == ("allenai/OLMo-2-1124-7B", None)
    snap = "results/olmo2-7b/hub/allenai--OLMo-2-1124-7B@main"
    assert plan.model_arg("lm") == plan.model_input("lm")[0] == snap
    assert plan.snapshots() == {snap: ("allenai/OLMo-2-1124-7B", None)} and plan.uses_hub()
    pinned = copy.deepcopy(cfg)
    pinned["lm"]["model"]["revision"] = "stage1-step928646-tokens3896B"
    other = Plan(pinned)  # a revision is part of the content key, and of the snapshot's path
    assert other.model_key("lm") != plan.model_key("lm")
    assert set(other.edits["lm"]).isdisjoint(plan.edits["lm"])
    assert other.model_arg("lm").endswith("@stage1-step928646-tokens3896B")
    local = copy.deepcopy(cfg)  # a directory is loaded where it is, and takes no revision
    local["lm"]["model"]["id"] = "./models/mine"
    assert Plan(local).model_arg("lm") == "./models/mine" and not Plan(local).snapshots()
    local["lm"]["model"]["revision"] = "main"
    with pytest.raises(PlanError, match="revision needs a hub id"):
        Plan(local).model_arg("lm")
    assert not Plan(config("smoke")).uses_hub()
    vit = config("smoke")  # a ViT directory from a hub repository, pinned
    vit["vit"]["model"] = {"source": "pretrained", "id": "someone/vit-digits", "revision": "abc"}
    vit["vit"]["data"] = "data/digits.safetensors"
    plan = Plan(vit)
    assert plan.model_arg("vit") == "results/smoke/hub/someone--vit-digits@abc"
    assert plan.snapshots()[plan.model_arg("vit")] == ("someone/vit-digits", "abc")


def test_jobs_run_with_the_hub_off_and_downloads_with_the_users_setting():
    """The plan says which environment the jobs need; it changes none (the glue sets it)."""
    env = {"HF_HUB_OFFLINE": "0"}
    hub_off = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "CURVMEM_USER_HF_HUB_OFFLINE": "0"}
    assert Plan(config("olmo2-7b")).hub_environment(env) == (hub_off, "0")
    assert env == {"HF_HUB_OFFLINE": "0"}
    env.update(hub_off)  # parsed again inside a cluster job: the user's setting is kept
    assert Plan(config("olmo2-7b")).hub_environment(env) == (hub_off, "0")
    assert Plan(config("smoke")).hub_environment({}) == ({}, "0")
    assert Plan(config("smoke")).hub_environment({"HF_HUB_OFFLINE": "1"}) == ({}, "1")


def test_public_data_sources_are_fetched_files():
    plan = Plan(config("olmo2-7b"))
    npy = plan.lm_data("corpus")
    assert npy.startswith("results/olmo2-7b/lm/data/corpus-") and npy.endswith(".npy")
    assert plan.fetched_data("tokens")[npy] == (
        "--model results/olmo2-7b/hub/allenai--OLMo-2-1124-7B@main "
        "--data hf:allenai/dolmino-mix-1124:train --tokens 20000000")
    val = plan.lm_data("validation")
    assert val == "results/olmo2-7b/lm/data/validation-167ea7f09e.jsonl"
    assert "--sha256 167ea7f09e956e51" in plan.fetched_data("url")[val]
    assert plan.fetched_data("texts")[plan.lm_data("retain")].endswith("--rows 2000")
    assert plan.domain_data("lm") == npy and plan.uses_hub()
    assert "--label 'control=Dolma validation half'" in plan.report_lm_flags()
    assert plan.report_lm_flags().endswith("--paper-dolma control")
    assert Plan(config("smoke")).report_lm_flags() == ""
    more = config("olmo2-7b")  # a larger budget is another pre-tokenized file
    more["lm"]["factors"]["tokens"] = 30_000_000
    assert Plan(more).lm_data("corpus") != npy
    bad = config("olmo2-7b")
    bad["lm"]["data"]["corpus"] = {"hf": "hf:some/corpus", "rows": 10}
    with pytest.raises(PlanError, match="corpus as an 'hf:...' string"):
        Plan(bad).lm_data("corpus")


def test_harness_plan_exports_the_chosen_edits():
    cfg = config("smoke")
    plan = Plan(cfg)
    assert plan.harness() is None and plan.harness_targets() == []
    kfac = next(k for k, s in plan.edits["lm"].items() if s["method"] == "kfac")
    cfg["lm"]["harness"] = {"tasks": ["curvmem_logic"], "local_tasks": "tasks",
                            "edits": ["kfac-L2-rho0.6"], "batch_size": 1}
    plan = Plan(cfg)
    assert plan.harness_keys() == [plan.base["lm"], kfac]
    assert plan.harness_targets() == [f"results/smoke/lm/harness/{k}.json"
                                      for k in (plan.base["lm"], kfac)]
    assert set(plan.harness_targets()) <= set(plan.final_targets())
    assert plan.harness_inputs(kfac)[0] == plan.export_dir(kfac)
    assert plan.harness_inputs(plan.base["lm"])[0] == plan.model_arg("lm")
    assert plan.harness_tasks_dir() in plan.harness_inputs(kfac)
    assert plan.harness_flags(kfac).startswith(f"--model results/smoke/lm/export/{kfac} "
                                               "--tasks curvmem_logic --include-path ")
    cfg["lm"]["harness"]["edits"] = ["kfac-L9-rho0.6"]
    with pytest.raises(PlanError, match="no edit is labelled"):
        Plan(cfg).harness_keys()


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
    assert f"{plan.out}/report.html" in plan.final_targets()
    other = copy.deepcopy(cfg)
    other["vit_study"]["data"]["seed"] = 1  # another dataset: every model is another model
    assert not set(Plan(other).study_models()) & set(models)
    cfg["vit_study"]["grid"]["d"] = {"preset": ["tiny"]}
    with pytest.raises(PlanError, match="unknown preset"):
        Plan(cfg).study_models()


def test_resources_and_threads_take_the_per_domain_override():
    """floor < resources.default < resources.RULE < {domain}.resources.RULE, threads included;
    one job of several steps asks the most of each (and the sum of their runtimes)."""
    cfg = config("smoke")
    cfg["threads"] = 1
    cfg["resources"] = {"default": {"mem_mb": 3000}, "collect": {"threads": 2, "runtime": 40}}
    cfg["lm"]["resources"] = {"collect": {"threads": 6}, "evaluate": {"threads": 3}}
    plan = Plan(cfg)
    assert plan.res("collect") == {"mem_mb": 3000, "runtime": 40, "gpu": 0, "threads": 2}
    assert plan.res("collect", "lm") == {"mem_mb": 3000, "runtime": 40, "gpu": 0, "threads": 6}
    assert plan.res("collect", "vit")["threads"] == 2  # the other domain keeps the rule's
    assert plan.res("eigen", "lm")["threads"] == 1  # the config's `threads`
    assert plan.res_together(("edit", "evaluate"), "lm") == {
        "mem_mb": 3000, "runtime": 60, "gpu": 0, "threads": 3}


def test_the_rules_templates_are_the_plans_paths():
    """A rule's output template (the layout with its wildcards left in), filled with a job's
    wildcards, is the path the plan names for that job."""
    plan = Plan(config("paper"))
    paths = plan.paths
    assert paths.layer_file("eigen") == f"{plan.out}/{{domain}}/eigen/{{fkey}}/layer_{{layer}}.nc"
    for fkey, fs in plan.factor_sets["lm"].items():
        layer = fs["layers"][0]
        for kind in ("factors", "eigen"):
            assert paths.layer_file(kind).format(domain="lm", fkey=fkey, layer=layer) == \
                plan.layer_files("lm", kind, fkey)[layer]
    sharded = Plan(config("smoke"))
    fkey = sharded.fkeys(sharded=True)[0]
    assert sharded.paths.shard_file().format(domain="lm", fkey=fkey, k=1, n=2, layer=2) == \
        sharded.shard_files("lm", fkey, 2)[1]
    for key, spec in plan.edits["lm"].items():
        assert paths.edit("lm", method=spec["method"]).format(key=key) == plan.edit_path("lm", key)
    edit = next(k for k, s in plan.edits["lm"].items() if s["method"] == "kfac")
    assert [f.format(key=edit) for f in plan.lm_eval_outputs(base=False)] == \
        plan.lm_eval_files(edit)
    base = plan.base["lm"]
    assert [f.format(key=base) for f in plan.lm_eval_outputs(base=True)] == plan.lm_eval_files(base)
    assert plan.vit_eval_output().format(key=plan.base["vit"]) == \
        plan.eval_files("vit", plan.base["vit"])[0]
    assert Layout("o").log(Layout.layer_job("collect", sharded=True)) == \
        "o/logs/{domain}/collect/{fkey}/shard-{k}-of-{n}/layer_{layer}.log"



def test_the_plan_neither_reads_the_outdir_nor_changes_the_environment(tmp_path, monkeypatch):
    """The index's text is handed in (the glue reads the file), and no method of the plan
    changes the environment, hub or not."""
    monkeypatch.chdir(tmp_path)
    environ = dict(os.environ)
    plan = Plan(config("smoke"), configfiles=["workflow/config/smoke.yaml"])
    assert plan.index_stale(None) and not plan.index_stale(plan.index_text())
    assert plan.owner_problem(None) is None and plan.owner_problem(plan.index_text()) is None
    theirs = json.dumps({"configfiles": ["mine.yaml"]})
    assert "this run's config workflow/config/smoke.yaml would overwrite" in \
        plan.owner_problem(theirs)
    for name in ("olmo2-7b", "smoke"):
        plan = Plan(config(name))
        plan.final_targets(), plan.hub_environment(os.environ), plan.index()
    assert dict(os.environ) == environ


def test_a_seeds_run_plans_the_same_targets_whatever_lies_on_disk(tmp_path, monkeypatch):
    """With the other seeds' summaries on disk, a seed's run plans what it plans without them:
    the report across the seeds is the explicit target `seeds` (report.smk), never in `all`."""
    monkeypatch.chdir(tmp_path)
    cfg = {**config("paper"), "seed": 2}
    alone = Plan(cfg)
    outs = alone.seeds_outputs()
    assert outs == {"summary": "results/paper/seeds/seeds_summary.json",
                    "tables": "results/paper/seeds/readme_tables.md",
                    "figure": "results/paper/seeds/fronts.png"}
    for s, out in seed_outdirs(cfg).items():
        if s != 2:
            (tmp_path / out).mkdir(parents=True)
            (tmp_path / out / "lm_summary.json").write_text("{}")
    plan = Plan(cfg)
    assert plan.final_targets() == alone.final_targets()
    assert not set(outs.values()) & set(plan.final_targets())
    assert "results/paper/seed-1/analysis/stress.json" in plan.seeds_inputs()
    assert plan.seeds_flags() == ("--seed-dir 0=results/paper/seed-0 --seed-dir 1=results/paper/seed-1 "
                                  "--seed-dir 2=results/paper/seed-2")
    assert Plan({k: v for k, v in cfg.items() if k not in ("seeds", "seed")}).seeds_outputs() == {}
