"""The workflow on a real SLURM scheduler: a one-node cluster on this machine (one fake GPU),
the smoke DAG's LM path run with `--profile slurm`, checked against a local run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from safetensors.numpy import load_file

from slurm_cluster import SMOKE, copy_repo, install_slurm, slurm_cluster, smoke_run, snakemake

GPU_RULES = {"train_lm", "collect_shard", "eigen"}


def same_json(a, b, path=""):
    """Equal up to timing and memory fields (which differ from run to run)."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = {k for k in a.keys() | b.keys()
                if not any(w in k for w in ("seconds", "rss", "time", "path", "model"))}
        return all(same_json(a.get(k), b.get(k), f"{path}.{k}") for k in keys)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y, path) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return bool(np.isclose(a, b, rtol=1e-5, atol=1e-8))
    return a == b


def same_layer_file(a, b):
    ta, tb = xr.open_datatree(a, engine="h5netcdf"), xr.open_datatree(b, engine="h5netcdf")
    try:
        groups = sorted(g for g in ta.groups if g != "/")
        assert groups and groups == sorted(g for g in tb.groups if g != "/")
        return all(np.allclose(ta[g][v].values, tb[g][v].values, rtol=1e-5, atol=1e-7)
                   for g in groups for v in ta[g].data_vars)
    finally:
        ta.close()
        tb.close()


@pytest.mark.slow
@pytest.mark.xdist_group("smoke-and-slurm")
def test_smoke_lm_path_on_slurm_matches_a_local_run(tmp_path):
    install_slurm()
    local = smoke_run()
    kfac_edit = next((local / "results/smoke/lm/edits").glob("kfac-*.safetensors"))
    key = kfac_edit.stem
    rel = {
        "eigen": next((local / "results/smoke/lm/eigen").glob("*/layer_2.nc")),
        "edit": kfac_edit,
        "eval": local / f"results/smoke/lm/eval/{key}/memorization_forget.json",
    }
    rel = {k: p.relative_to(local) for k, p in rel.items()}
    work = copy_repo(tmp_path / "repo")
    with slurm_cluster(tmp_path / "cluster") as cluster:
        proc = snakemake(
            work, "--profile", "slurm", f"--configfile={SMOKE}",
            # partition (and account) come from the command line, not from the profile
            "--default-resources", "slurm_partition=gpu",
            # no accounting database here: poll with squeue, quickly
            "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
            str(rel["eval"]), env=cluster.env, timeout=1200)
        jobs = cluster.jobs()

    # every job went through sbatch, in the partition given on the command line, under one name
    by_rule = {}
    for job in jobs:
        rule = job.get("Comment", "").removeprefix("rule_").split("_wildcards_")[0]
        by_rule.setdefault(rule, []).append(job)
    assert set(by_rule) == GPU_RULES | {"world", "tokenizer", "merge", "edit_evaluate_lm"}
    assert all(j["JobState"] == "COMPLETED" and j["Partition"] == "gpu" for j in jobs)
    assert len({j["JobName"] for j in jobs}) == 1 and jobs[0]["JobName"].startswith("curvmem_")
    # collection, eigen and training asked for the GPU; nothing else did
    for rule, rule_jobs in by_rule.items():
        for job in rule_jobs:
            asks_gpu = "gpu" in job.get("TresPerJob", "") + job.get("TresPerNode", "")
            assert asks_gpu == (rule in GPU_RULES), (rule, job.get("TresPerJob"))
    assert len(by_rule["collect_shard"]) == 2  # smoke config: 2 shards of layer 2
    assert "SLURM run ID: curvmem_" in proc.stdout + proc.stderr

    # the same numbers as the local run
    assert same_layer_file(local / rel["eigen"], work / rel["eigen"])
    a, b = load_file(local / rel["edit"]), load_file(work / rel["edit"])
    assert a.keys() == b.keys() and all(np.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert same_json(json.loads((local / rel["eval"]).read_text()),
                     json.loads((work / rel["eval"]).read_text()))
    # per-job SLURM logs were kept
    assert list((work / "logs/slurm").rglob("*.log"))
