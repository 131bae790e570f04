"""Public sources without the network: a hub model snapshot from a local hub cache
(`curvmem download`), and the plan's revision and snapshot paths."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from curvmem.model.hub import NOTE_FILE, download_snapshot

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(home: Path, repo_id: str, files_dir: Path, commit: str = COMMIT,
              refs=("main",)) -> Path:
    """Lay out `files_dir` as the hub cache's snapshot of `repo_id` at `commit` (HF_HOME=home),
    with branch/tag `refs` pointing at it: what snapshot_download finds offline."""
    repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    shutil.copytree(files_dir, snap)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)
    return snap


@pytest.fixture
def offline_home(tmp_path, monkeypatch):
    """HF_HOME in tmp with the hub off; huggingface_hub reads both when a call is made."""
    import huggingface_hub.constants as c

    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(home / "hub"))
    return home


def test_download_links_the_cached_snapshot_and_loads(offline_home, tmp_path):
    from transformers import AutoModelForCausalLM

    from conftest import tiny_olmo2

    src = tmp_path / "src"
    tiny_olmo2().save_pretrained(src)
    hub_cache(offline_home, "someone/tiny-olmo2", src, refs=("main", "v1"))
    out = tmp_path / "run" / "hub" / "snap"
    note = download_snapshot("someone/tiny-olmo2", out, "v1")
    assert note["commit"] == COMMIT and note["revision"] == "v1"
    assert json.loads((out / NOTE_FILE).read_text())["commit"] == COMMIT
    assert sorted(note["files"]) == sorted(p.name for p in src.iterdir())
    # hard links on the same file system: no second copy of the weights
    st = (out / "model.safetensors").stat()
    assert st.st_nlink == 2 or (out / "model.safetensors").is_symlink()
    AutoModelForCausalLM.from_pretrained(out)  # a plain directory: loads with the hub off
    # the same by commit, and copied
    note = download_snapshot("someone/tiny-olmo2", tmp_path / "copy", COMMIT, copy=True)
    assert (tmp_path / "copy" / "model.safetensors").stat().st_nlink == 1


def test_download_refuses_what_is_not_there(offline_home, tmp_path):
    with pytest.raises(ValueError, match="not in the hub cache"):
        download_snapshot("someone/absent", tmp_path / "x", "main")
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="local path"):
        download_snapshot(str(tmp_path), tmp_path / "y")
    assert not os.path.exists(tmp_path / "y")


def test_fetch_url_checks_the_sha256_and_writes_nothing_else(tmp_path):
    import hashlib

    from curvmem.world.sources import fetch_url

    src = tmp_path / "mirror" / "data" / "val.jsonl"
    src.parent.mkdir(parents=True)
    src.write_text('{"prefix_ids": [1, 2], "suffix_ids": [3]}\n')
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    note = fetch_url(src.as_uri(), sha, tmp_path / "out" / "val.jsonl")
    assert note["bytes"] == src.stat().st_size
    assert (tmp_path / "out" / "val.jsonl").read_bytes() == src.read_bytes()
    with pytest.raises(ValueError, match="is not the expected"):
        fetch_url(src.as_uri(), "0" * 64, tmp_path / "out" / "bad.jsonl")
    with pytest.raises(ValueError, match="cannot fetch"):
        fetch_url((tmp_path / "absent").as_uri(), sha, tmp_path / "out" / "absent.jsonl")
    with pytest.raises(ValueError, match="64 hex"):
        fetch_url(src.as_uri(), "abc", tmp_path / "out" / "x.jsonl")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["val.jsonl"]


@pytest.mark.slow
def test_the_7b_configs_released_files_come_from_a_file_mirror(tmp_path):
    """The fetch_file rules of the 7B config, pointed at a local file:// mirror of the paper's
    repository layout: each file lands where the evaluations read it, checked; a wrong sha256
    fails the job and leaves no file."""
    import hashlib

    import yaml

    from curvmem.plan import Plan
    from slurm_cluster import copy_repo, snakemake

    repo = copy_repo(tmp_path / "repo")
    cfg = yaml.safe_load((repo / "workflow/config/olmo2-7b.yaml").read_text())
    mirror = tmp_path / "mirror"
    for name in ("forget", "validation", "quotes"):
        entry = cfg["lm"]["data"][name]
        path = mirror / entry["url"].split("/memorization_kfac/", 1)[1]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"prefix": f"{name} ", "target_suffix": "text"}) + "\n")
        entry.update(url=path.as_uri(), sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    (repo / "mirror.yaml").write_text(yaml.safe_dump(cfg))
    plan = Plan(cfg)
    targets = [plan.lm_data(n) for n in ("forget", "validation", "quotes")]
    snakemake(repo, "--cores", "1", "--configfile=mirror.yaml", *targets)
    for name, target in zip(("forget", "validation", "quotes"), targets):
        assert json.loads((repo / target).read_text())["prefix"] == f"{name} "
    cfg["lm"]["data"]["quotes"]["sha256"] = "f" * 64
    (repo / "wrong.yaml").write_text(yaml.safe_dump(cfg))
    target = Plan(cfg).lm_data("quotes")
    proc = snakemake(repo, "--cores", "1", "--configfile=wrong.yaml", target, check=False)
    assert proc.returncode != 0 and not (repo / target).exists()
    logs = (repo / plan.out / "logs/hub/fetch_file").glob("quotes-f*")
    assert any("is not the expected" in log.read_text() for log in logs)


@pytest.mark.slow
def test_your_own_model_dag_runs_offline_end_to_end(tmp_path):
    """The 7B config's DAG shape on public-source stand-ins, with the hub off: a tiny OLMo-2 in a
    local hub cache (id + revision), a local parquet dataset as the `hf:` corpus (pre-tokenized)
    and held-out texts, memorized windows fetched from a file:// URL and
    checked, edits exported as checkpoints and scored by the harness (when lm_eval is installed)."""
    import hashlib

    import yaml
    from datasets import Dataset
    from transformers import AutoTokenizer

    from conftest import tiny_olmo2
    from curvmem.model import lm as lm_model
    from slurm_cluster import copy_repo, dry_run_jobs, snakemake

    try:
        import lm_eval  # noqa: F401
        harness = True
    except ImportError:
        harness = False
    words = ["river", "mill", "stone", "bridge", "field", "seven", "north", "lamp", "old", "ran"]
    texts = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(12 + i % 9))
             for i in range(300)]
    src = tmp_path / "src"
    src.mkdir()
    (src / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    lm_model.train_tokenizer(src / "c.jsonl", src / "model", 300)
    tok = AutoTokenizer.from_pretrained(src / "model")
    tiny_olmo2(vocab=len(tok)).save_pretrained(src / "model")
    home = tmp_path / "hf_home"
    hub_cache(home, "someone/tiny-olmo2", src / "model", refs=("main", "v1"))
    (tmp_path / "ds").mkdir()
    Dataset.from_dict({"text": texts}).to_parquet(str(tmp_path / "ds" / "train.parquet"))
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    mem = tmp_path / "mirror" / "mem.jsonl"
    mem.parent.mkdir()
    mem.write_text("".join(json.dumps({"prefix_ids": i[:8], "suffix_ids": i[8:12]}) + "\n"
                           for i in ids[:12]))
    quotes = tmp_path / "quotes.jsonl"
    quotes.write_text("".join(json.dumps({"prefix": t[:30], "target_suffix": t[30:50]}) + "\n"
                              for t in texts[12:20]))
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"category": ("closed_book", "logic")[i % 2],
                                         "prompt": " ".join(t.split()[:5]),
                                         "answer": t.split()[5]}) + "\n"
                             for i, t in enumerate(texts[20:40])))
    repo = copy_repo(tmp_path / "repo")
    cfg = {
        "outdir": "results/own", "threads": 1,
        "lm": {
            "model": {"source": "pretrained", "id": "someone/tiny-olmo2", "revision": "v1"},
            "data": {"corpus": f"hf:{tmp_path / 'ds'}",
                     "heldout": {"hf": f"hf:{tmp_path / 'ds'}", "rows": 40},
                     "forget": {"url": mem.as_uri(),
                                "sha256": hashlib.sha256(mem.read_bytes()).hexdigest()},
                     "quotes": str(quotes), "validation": str(mem), "tasks": str(tasks)},
            "factors": {"modules": ["mlp.gate_proj", "mlp.up_proj"], "tokens": 1024,
                        "seq_len": 16, "batch_size": 8},
            "edits": {"kfac": {"method": "kfac", "layers": [[1]],
                               "modules": ["mlp.gate_proj", "mlp.up_proj"], "rho": [0.6]}},
            "report": {"labels": {"control": "validation half"}, "paper_dolma": "control"},
            "evaluations": {
                "memorization_forget": {"kind": "memorization", "data": "forget"},
                "memorization_untargeted": {"kind": "memorization", "data": "quotes"},
                "memorization_control": {"kind": "memorization", "data": "validation"},
                "perplexity": {"kind": "perplexity", "data": "heldout"},
                "tasks": {"kind": "tasks", "data": "tasks"},
                "coherence": {"kind": "coherence", "data": "heldout"}},
        }}
    if harness:
        cfg["lm"]["harness"] = {"tasks": ["curvmem_closed_book", "curvmem_logic"],
                                "local_tasks": "tasks"}
    (repo / "own.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("CURVMEM_USER_HF_HUB_OFFLINE", None)
    out = repo / "results/own"
    # every job but the summary's figures and HTML report (each job starts a process: seconds)
    plan = yaml.safe_load((repo / "own.yaml").read_text())
    from snakemake.utils import validate

    from curvmem.plan import Plan
    validate(plan, str(repo / "workflow/schemas/config.schema.yaml"))
    targets = ["results/own/lm_summary.json"] + Plan(plan).harness_targets()
    snakemake(repo, "--cores", "1", "--configfile=own.yaml", *targets, env=env, timeout=1800)
    snap = out / "hub/someone--tiny-olmo2@v1"
    assert json.loads((snap / NOTE_FILE).read_text())["commit"] == COMMIT
    summary = json.loads((out / "lm_summary.json").read_text())
    assert set(summary["models"]) == {"base", "kfac-L1-rho0.6"}
    assert summary["columns"]["labels"]["control"] == "validation half"
    npy = next((out / "lm/data").glob("corpus-*.npy"))
    assert np.load(npy).size == 1024
    factors = next((out / "lm/factors").glob("main-*/layer_1.nc"))
    from curvmem import schema
    assert schema.read_layer(factors, "factors").attrs["n_tokens"] == 1024 // 16 * 15  # next tokens
    if harness:
        results = [json.loads(p.read_text()) for p in (out / "lm/harness").glob("*.json")]
        assert len(results) == 2 and all("curvmem_logic" in r["results"] for r in results)
        exported = list((out / "lm/export").iterdir())
        assert len(exported) == 1 and all((d / "config.json").is_file() for d in exported)
    assert dry_run_jobs(repo, "--configfile=own.yaml", *targets, env=env) == {}


def test_a_seq_len_beyond_a_cached_hub_models_positions_is_refused(offline_home, tmp_path,
                                                                    capsys):
    """`--model OWNER/NAME`: its config.json is read from the hub cache, offline, before the
    weights load (a model directory's own config.json likewise: tests/test_bad_inputs.py)."""
    from conftest import tiny_olmo2
    from curvmem.cli import main

    src = tmp_path / "src"
    tiny_olmo2().save_pretrained(src)  # 64 positions
    hub_cache(offline_home, "someone/tiny-olmo2", src)
    tokens = tmp_path / "tokens.npy"
    np.save(tokens, np.arange(200) % 61)
    out = tmp_path / "f"
    capsys.readouterr()
    assert main(["collect", "--model", "someone/tiny-olmo2", "--data", str(tokens), "--layers",
                 "1", "--tokens", "130", "--seq-len", "65", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--seq-len 65: beyond the model's maximum positions (max_position_embeddings = 64" \
        in err and "models--someone--tiny-olmo2" in err, err
    assert not out.exists()
