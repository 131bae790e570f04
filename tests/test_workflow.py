"""The Snakemake workflow: config validation, the DAG each config expands to, content-keyed
outputs, the 7B dry run on the SLURM profile (offline), and a rerun with nothing to do."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess

import pytest
import yaml

from slurm_cluster import SMOKE, copy_repo, dry_run_jobs, smoke_run, snakemake


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return copy_repo(tmp_path_factory.mktemp("wf") / "repo")


def load(repo, name):
    return yaml.safe_load((repo / f"workflow/config/{name}.yaml").read_text())


def write_config(repo, name, cfg, outdir=None):
    """cfg as repo/NAME.yaml, under an outdir of its own (default results/test-NAME): an outdir
    whose index names another config file is refused (tests/test_config_files.py)."""
    path = repo / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**cfg, "outdir": outdir or f"results/test-{name}"}))
    return f"--configfile={path}"


def dry_run_outputs(repo, *args) -> set[str]:
    out = snakemake(repo, "-n", *args).stdout
    return {f for line in out.splitlines() if line.strip().startswith("output:")
            for f in line.split(":", 1)[1].replace(",", " ").split()}


def nothing_written(repo) -> bool:
    """Only what git ships is under results/: each config's index.json."""
    return all(p.name == "index.json" for p in (repo / "results").rglob("*") if p.is_file())


def n_edits(sweeps, method=None):
    n = 0
    for s in sweeps.values():
        if method and s["method"] != method:
            continue
        axes = [s["ratio"]] if s["method"] == "bsn" else [
            s["layers"], s["rho"] if s["method"] == "kfac" else s["svd_drop"]]
        n += len(list(itertools.product(*axes)))
    return n


def test_bad_config_fails_before_anything_runs_with_a_clear_message(repo):
    cfg = load(repo, "smoke")
    cfg["lm"]["edits"]["kfac"]["rho"] = [1.5]
    proc = snakemake(repo, "-n", write_config(repo, "bad", cfg), check=False)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "invalid workflow config" in text and "1.5" in text
    assert nothing_written(repo)


def test_missing_report_evaluation_is_refused(repo):
    cfg = load(repo, "smoke")
    del cfg["lm"]["evaluations"]["perplexity"]
    proc = snakemake(repo, "-n", write_config(repo, "noeval", cfg), check=False)
    assert proc.returncode != 0 and "lacks ['perplexity']" in proc.stdout + proc.stderr


@pytest.mark.parametrize("name", ["default", "adamw"])
def test_embedded_dag_runs_every_stage_and_its_sweeps(repo, name):
    # no --configfile: the embedded default
    args = () if name == "default" else (f"--configfile=workflow/config/{name}.yaml",)
    jobs = dry_run_jobs(repo, *args)
    cfg = load(repo, name)
    for rule in ("world", "tokenizer", "train_lm", "vision_data", "train_vit", "report_lm",
                 "report_vit", "compare", "report_html"):
        assert jobs[rule] == 1, rule
    # one job per K-FAC or SVD edit makes it and runs all its evaluations (curvmem edit ...
    # --then evaluate ...); BalancedSubnet trains in its own job and is evaluated in another
    n_bsn = n_edits(cfg["lm"]["edits"], "bsn")
    assert jobs["edit_evaluate_lm"] == n_edits(cfg["lm"]["edits"]) - n_bsn
    assert jobs["edit_evaluate_vit"] == n_edits(cfg["vit"]["edits"])
    assert jobs["bsn"] == jobs["evaluate_lm"] == n_bsn
    assert jobs["evaluate_lm_base"] == jobs["evaluate_vit"] == 1
    assert "edit" not in jobs
    assert jobs["readme_tables"] == 1
    # the analyses: one job per group of analyses (curvmem analyze batch), see analysis.smk
    groups = ["lm_model", "lm_sweep", "lm_stability"] * ("analysis" in cfg["lm"]) + \
        ["vit"] * ("analysis" in cfg["vit"])
    assert sorted(r for r in jobs if r.startswith("analysis_")) == sorted(
        f"analysis_{g}" for g in groups)
    assert all(jobs[f"analysis_{g}"] == 1 for g in groups)
    # one collection (and eigen) job per (factor set, layer) the K-FAC edits use
    layers = {(d, s.get("factors", "main"), layer) for d in ("lm", "vit")
              for s in cfg[d]["edits"].values() if s["method"] == "kfac"
              for ls in s["layers"] for layer in ls}
    assert jobs["collect"] == jobs["eigen"] == len(layers)
    # the config's preset is what trains, and every edit stays inside its layers
    shell = snakemake(repo, "-n", "-p", *args).stdout
    assert re.search(rf"curvmem train-lm .*--preset {name}\b", shell)
    n_layers = {"default": 4, "adamw": 8}[name]
    lm_layers = {layer for domain, _, layer in layers if domain == "lm"}
    assert max(lm_layers) < n_layers and (name != "default" or lm_layers == {0, 2, 3})  # L0, and the paper's depth


def test_edit_outputs_are_keyed_by_content(repo):
    """Adding a rho adds that edit and its evaluations; every other path stays the same."""
    cfg = load(repo, "smoke")
    before = dry_run_outputs(repo, write_config(repo, "a", cfg, outdir="results/keyed"))
    cfg["lm"]["edits"]["kfac"]["rho"] = [0.6, 0.8]
    after = dry_run_outputs(repo, write_config(repo, "b", cfg, outdir="results/keyed"))
    assert before < after
    new_edit_files = {f for f in after - before if "/edits/" in f or "/eval/" in f}
    assert new_edit_files and all("rho0.8-" in f for f in new_edit_files)
    assert after - before - new_edit_files == set()


def test_new_preset_defaults_in_curvmem_give_a_new_model_key(repo, tmp_path):
    """Upgrading curvmem with other embedded defaults must rebuild the model, not reuse it."""
    args = write_config(repo, "smoke_cfg", load(repo, "smoke"))
    before = dry_run_outputs(repo, args)
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import dataclasses\nfrom curvmem import presets\n"
        "presets.TRAIN_PRESETS['smoke'] = dataclasses.replace(presets.TRAIN_PRESETS['smoke'], "
        "steps=13)\n")
    env = {**os.environ, "PYTHONPATH": f"{shim}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    after = {f for line in snakemake(repo, "-n", args, env=env).stdout.splitlines()
             if line.strip().startswith("output:")
             for f in line.split(":", 1)[1].replace(",", " ").split()}

    def lm_models(paths):
        return {re.search(r"lm/models/(\w+)", f).group(1) for f in paths if "lm/models/" in f}

    def vit_models(paths):
        return {re.search(r"vit/models/(\w+)", f).group(1) for f in paths if "vit/models/" in f}

    assert len(lm_models(before)) == len(lm_models(after)) == 1
    assert lm_models(before) != lm_models(after)
    assert vit_models(before) and vit_models(before) == vit_models(after)  # ViT preset unchanged


def test_parsing_the_dag_never_imports_torch(repo, tmp_path):
    """Every parse (and every SLURM job step re-parses) would otherwise pay for `import torch`."""
    shim = tmp_path / "no_torch"
    shim.mkdir()
    (shim / "torch.py").write_text("raise ImportError('torch imported while parsing the DAG')\n")
    env = {**os.environ, "PYTHONPATH": f"{shim}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    jobs = dry_run_jobs(repo, env=env)  # the embedded default: both preset keys are computed
    assert jobs["train_lm"] == jobs["train_vit"] == 1


def test_7b_dry_run_on_slurm_lists_one_gpu_collection_job_per_layer_offline(tmp_path):
    """A fresh copy, no file prepared by hand, no network: the whole run is planned, public
    sources included (model snapshot, released files, the streamed corpus pre-tokenized)."""
    repo = copy_repo(tmp_path / "repo")
    cfg = load(repo, "olmo2-7b")
    cmd = ["snakemake", "-n", "-p", "--profile", "slurm",
           "--configfile=workflow/config/olmo2-7b.yaml"]
    offline = subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False).returncode == 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run((["unshare", "-n"] if offline else []) + cmd, cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    blocks = re.split(r"\n(?=\S)", proc.stdout)
    collect = [b for b in blocks if b.startswith("rule collect:")]
    layers = sorted(int(re.search(r"layer=(\d+)", b).group(1)) for b in collect)
    wanted = sorted({layer for s in cfg["lm"]["edits"].values() if s["method"] == "kfac"
                     for ls in s["layers"] for layer in ls})
    assert layers == wanted == [23, 24, 25]
    assert all(re.search(r"\bgpu=1\b", b) for b in collect)
    assert all(re.search(r"\bmem_mb=128000\b", b) for b in collect)
    # an edit's job evaluates it too: the evaluation's GPU, memory for either step, both runtimes
    evaluations = [b for b in blocks if b.startswith("rule edit_evaluate_lm:")]
    assert evaluations and all(re.search(r"\bgpu=1\b", b) and re.search(r"\bmem_mb=64000\b", b)
                               and re.search(r"\bruntime=540\b", b) for b in evaluations)
    edit_commands = [line for line in proc.stdout.splitlines()
                     if line.startswith("Shell command: curvmem edit ")]
    assert edit_commands and all("--dtype bfloat16" in c.split(" --then ")[0]  # half the RAM
                                 for c in edit_commands)
    fetches = {rule: sum(b.startswith(f"rule {rule}:") for b in blocks)
               for rule in ("download_model", "fetch_file", "tokenize_corpus", "fetch_texts")}
    assert fetches == {"download_model": 1, "fetch_file": 3, "tokenize_corpus": 1,
                       "fetch_texts": 2}
    assert "results/olmo2-7b/hub/allenai--OLMo-2-1124-7B@main" in " ".join(collect)
    assert nothing_written(repo)


@pytest.mark.slow
@pytest.mark.xdist_group("smoke-and-slurm")
def test_smoke_dag_completes_and_a_second_run_has_nothing_to_do():
    work = smoke_run()
    out = work / "results/smoke"
    for name in ("lm_summary.json", "vit_summary.json", "compare.png", "report.html"):
        assert (out / name).stat().st_size > 0, name
    html = (out / "report.html").read_text(errors="replace")
    assert "lm_figure.png" in html and "vit_table.md" in html
    assert dry_run_jobs(work, f"--configfile={SMOKE}") == {}


@pytest.mark.slow
@pytest.mark.xdist_group("smoke-and-slurm")
def test_a_finished_run_moved_to_another_checkout_has_nothing_to_do(tmp_path):
    """Shared artifacts (DVC pull, a copied results/ tree) must not rerun for a different path."""
    moved = tmp_path / "elsewhere"
    shutil.copytree(smoke_run(), moved, symlinks=True)
    assert dry_run_jobs(moved, f"--configfile={SMOKE}") == {}


@pytest.mark.slow
@pytest.mark.xdist_group("smoke-and-slurm")
def test_adding_one_rho_runs_only_that_edit_and_its_evaluations(tmp_path):
    work = tmp_path / "work"  # the config edited in place: the outdir's index names its file
    shutil.copytree(smoke_run(), work, symlinks=True)
    cfg = yaml.safe_load((work / SMOKE).read_text())
    cfg["lm"]["edits"]["kfac"]["rho"].append(0.7)
    (work / SMOKE).write_text(yaml.safe_dump(cfg))
    jobs = dry_run_jobs(work, f"--configfile={SMOKE}")
    assert jobs == {"edit_evaluate_lm": 1, "report_lm": 1, "compare": 1,
                    "readme_tables": 1, "report_html": 1, "index": 1, "all": 1}
