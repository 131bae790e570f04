"""Config files the workflow refuses before anything runs, and the index it writes from them.

The index (OUTDIR/index.json, committed) is rewritten exactly when its text, the plan, changes:
never because of file times, which a checkout sets in its own order. A config file with a
duplicated key, an unknown key anywhere (controls, variants and resources included), an empty
sweep, an empty or root outdir, or a name that would leave the outdir fails the dry run with one
error; so does a second config file on an outdir whose index names another.
"""

from __future__ import annotations

import json
import os

import pytest
import yaml
from snakemake.utils import validate

from curvmem.plan import Plan, PlanError, check_config_file
from slurm_cluster import REPO, SMOKE, copy_repo, dry_run_jobs, snakemake

SCHEMA = str(REPO / "workflow/schemas/config.schema.yaml")
SMOKE_INDEX = "results/smoke/index.json"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return copy_repo(tmp_path_factory.mktemp("configs") / "repo")


def smoke() -> dict:
    return yaml.safe_load((REPO / SMOKE).read_text())


def set_times(repo, configs_newer: bool) -> None:
    """Every config file newer than every committed index.json, or the other way round."""
    configs = list((repo / "workflow/config").rglob("*.yaml"))
    indexes = list((repo / "results").rglob("index.json"))
    old, new = 1_600_000_000, 1_700_000_000
    for f in configs:
        os.utime(f, (new, new) if configs_newer else (old, old))
    for f in indexes:
        os.utime(f, (old, old) if configs_newer else (new, new))


def refused(repo, *args) -> str:
    """The dry run fails: its output (stdout and stderr)."""
    proc = snakemake(repo, "-n", *args, check=False)
    assert proc.returncode != 0, proc.stdout[-2000:]
    return proc.stdout + proc.stderr


# --------------------------------------------------------------------------- the index


@pytest.mark.parametrize("args", [
    ("--configfile=workflow/config/smoke.yaml",),
    ("--configfile=workflow/config/vit-study.yaml",),
    ("--configfile=workflow/config/paper.yaml", "--config", "seed=1"),
    (),  # the embedded default
])
def test_no_file_time_plans_the_index(repo, args):
    """A fresh clone (either checkout order) plans no index job: its committed text is the
    plan's."""
    for configs_newer in (True, False):
        set_times(repo, configs_newer)
        assert "index" not in dry_run_jobs(repo, *args), configs_newer


def test_the_index_is_rewritten_exactly_when_the_plan_changes(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    index = repo / SMOKE_INDEX
    committed = index.read_text()
    cfg = smoke()
    cfg["lm"]["edits"]["kfac"]["rho"].append(0.7)
    (repo / SMOKE).write_text(yaml.safe_dump(cfg))
    set_times(repo, configs_newer=False)  # an older config must not hide the change
    args = (f"--configfile={SMOKE}",)
    assert dry_run_jobs(repo, *args)["index"] == 1
    snakemake(repo, "--cores", "1", *args, "index")
    assert "kfac-L2-rho0.7" in json.loads(index.read_text())["lm"]["edits"]
    for f in (repo / "workflow/config").rglob("*.yaml"):
        os.utime(f)  # newer than the index now: no matter
    written = index.stat().st_mtime_ns
    assert "index" not in dry_run_jobs(repo, *args)
    snakemake(repo, "--cores", "1", *args, "index")  # asked for by name: nothing to rewrite
    assert index.stat().st_mtime_ns == written
    # a value that changes no path (threads) leaves it; the plan changed back rewrites it
    assert "index" not in dry_run_jobs(repo, *args, "--config", "threads=2")
    (repo / SMOKE).write_text((REPO / SMOKE).read_text())
    assert dry_run_jobs(repo, *args)["index"] == 1
    snakemake(repo, "--cores", "1", *args, "index")
    assert index.read_text() == committed
    assert "index" not in dry_run_jobs(repo, *args)


# --------------------------------------------------------------------------- config files


def test_a_duplicated_key_is_refused_naming_the_file_and_the_key(repo, tmp_path):
    text = (REPO / SMOKE).read_text().replace("    tokens: 4096\n",
                                              "    tokens: 4096\n    tokens: 8192\n")
    path = repo / "twice.yaml"
    path.write_text(text)
    out = refused(repo, f"--configfile={path}")
    assert f"config file {path}: key 'tokens' appears twice" in out
    assert not (repo / "results/smoke/lm").exists()
    (tmp_path / "top.yaml").write_text("outdir: a\nthreads: 1\noutdir: b\n")
    with pytest.raises(PlanError, match=r"key 'outdir' appears twice \(lines 1 and 3\)"):
        check_config_file(tmp_path / "top.yaml")
    check_config_file(REPO / SMOKE)  # each shipped config passes
    for path in (REPO / "workflow/config").rglob("*.yaml"):
        check_config_file(path)


@pytest.mark.parametrize("change, where", [
    (lambda c: c["lm"].update(control_factors={"sed": 1}), "lm.control_factors: Additional"),
    (lambda c: c["vit"].update(control_factors={"seed": 1, "tokenz": 8}),
     "vit.control_factors: Additional"),
    (lambda c: c["lm"].update(factor_variants={"other": {"slise": "1/2"}}),
     "lm.factor_variants.other: Additional"),
    (lambda c: c["lm"].update(control_factors={"fisher": "exact"}), "lm.control_factors.fisher"),
    (lambda c: c["resources"].update(colect={"gpu": 1}), "resources: 'colect'"),
    (lambda c: c["lm"].update(resources={"evaluat": {"gpu": 1}}), "lm.resources: 'evaluat'"),
    (lambda c: c["lm"].update(edits={}), "lm.edits: {} should be non-empty"),
])
def test_the_schema_refuses_unknown_keys_everywhere_and_an_empty_sweep(change, where):
    from snakemake.exceptions import WorkflowError

    from curvmem.plan import schema_problem

    cfg = smoke()
    change(cfg)
    with pytest.raises(WorkflowError) as e:
        validate(cfg, SCHEMA)
    assert schema_problem(e.value).startswith(where), schema_problem(e.value)
    # a valid override gets no defaults from the schema (they would override the main set's
    # shards, dtype, ...: other factors, other keys)
    cfg = smoke()
    cfg["lm"].update(control_factors={"seed": 1}, factor_variants={"v": {"slice": "1/2"}})
    validate(cfg, SCHEMA)
    assert cfg["lm"]["control_factors"] == {"seed": 1}
    assert cfg["lm"]["factor_variants"] == {"v": {"slice": "1/2"}}


@pytest.mark.parametrize("outdir, message", [
    ("", "config outdir is empty"),
    ("/", "config outdir '/' is the file system's root"),
    ("results/../..", "config outdir 'results/../..' has a '..' component"),
])
def test_an_empty_root_or_escaping_outdir_fails_the_dry_run(repo, outdir, message):
    cfg = smoke()
    cfg["outdir"] = outdir
    path = repo / "outdir.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = refused(repo, f"--configfile={path}")
    assert message in out and out.count("config outdir") == 1


@pytest.mark.parametrize("change, message", [
    (lambda c: c["lm"]["evaluations"].update({"../../escape": {"kind": "perplexity",
                                                               "data": "heldout"}}),
     "config lm.evaluations.../../escape: '../../escape' holds '/'"),
    (lambda c: c["lm"]["edits"].update({"..": c["lm"]["edits"]["kfac"]}),
     "config lm.edits...: '..' is not a file name"),
    (lambda c: c["vit"]["edits"].update({"a/b": c["vit"]["edits"]["svd"]}),
     "config vit.edits.a/b: 'a/b' holds '/'"),
    (lambda c: c["lm"]["data"].update(corpus="../../../train.jsonl"),
     "config lm.data.corpus: '../../../train.jsonl' holds '/'"),
    (lambda c: c["lm"].update(factor_variants={"x{y}": {"seed": 2}}),
     "config lm.factor_variants.x{y}: 'x{y}' holds '{' '}'"),
    (lambda c: c["vit"].update(data="digits{x}.safetensors"),
     "config vit.data: 'digits{x}.safetensors' holds a brace"),
])
def test_names_that_would_leave_the_outdir_are_refused(repo, change, message):
    cfg = smoke()
    change(cfg)
    with pytest.raises(PlanError) as e:
        Plan(cfg)
    assert str(e.value).startswith(message), str(e.value)
    if "evaluations" in message:  # and the dry run says the same
        path = repo / "names.yaml"
        path.write_text(yaml.safe_dump(cfg))
        assert message in refused(repo, f"--configfile={path}")


# --------------------------------------------------------------------------- a shared outdir


def test_a_second_config_file_on_an_outdir_is_refused_naming_both(repo):
    mine = repo / "mine.yaml"
    mine.write_text((REPO / SMOKE).read_text())
    out = refused(repo, "--configfile=mine.yaml")
    assert (f"outdir results/smoke holds the summaries, report and index of config {SMOKE}"
            in out and "this run's config mine.yaml would overwrite them" in out)
    assert not (repo / "results/smoke/lm").exists()
    # its own outdir (in the file or by --config) is fine, so is a content-keyed target there
    assert dry_run_jobs(repo, "--configfile=mine.yaml", "--config", "outdir=results/mine")
    cfg = smoke()
    validate(cfg, SCHEMA)
    world = Plan(cfg).world_outputs()[0]
    assert dry_run_jobs(repo, "--configfile=mine.yaml", world) == {"world": 1}
    # the owner's own file, with overrides, and each seed of a multi-seed study, are the owner
    assert dry_run_jobs(repo, f"--configfile={SMOKE}", "--config", "threads=2")["all"] == 1
    for seed in (0, 2):
        assert dry_run_jobs(repo, "--configfile=workflow/config/paper.yaml", "--config",
                            f"seed={seed}")["all"] == 1


# --------------------------------------------------------------------------- a multi-seed study


def test_the_seeds_report_is_a_target_of_its_own(repo):
    """A seed's run plans the same jobs whichever other seeds' runs lie on disk (the plan never
    looks); the report across the seeds runs when asked for by name (`seeds`)."""
    paper = "--configfile=workflow/config/paper.yaml"
    alone = dry_run_jobs(repo, paper, "--config", "seed=2")
    cfg = yaml.safe_load((repo / "workflow/config/paper.yaml").read_text())
    validate(cfg, SCHEMA)
    others = [f for f in Plan({**cfg, "seed": 2}).seeds_inputs() if "/seed-2/" not in f]
    assert others and not any((repo / f).exists() for f in others)
    for f in others:
        (repo / f).parent.mkdir(parents=True, exist_ok=True)
        (repo / f).write_text("{}\n")
    try:
        assert dry_run_jobs(repo, paper, "--config", "seed=2") == alone
        assert "seeds_report" not in alone
        asked = dry_run_jobs(repo, paper, "seeds", "--config", "seed=2")
        assert asked["seeds_report"] == asked["seeds"] == 1
    finally:
        for f in others:
            (repo / f).unlink()
