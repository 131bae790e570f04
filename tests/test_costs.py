"""Costs (measured seconds and memory) live in cost files beside the outputs, never in a result:
a result is byte-identical however often the command that made it ran, and the reports read the
costs from the cost files, or from the fields older summaries carried them in."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import smoke_lm
from curvmem.cli import main
from curvmem.io import cost_path, read_cost, write_json
from curvmem.report.costs import cost_table_path, is_cost_file, model_costs

COST_KEYS = ("seconds", "peak_rss_mb", "cost")


def _no_cost_keys(obj, where=""):
    """Fail on any key of a result that holds a measurement."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert not any(c in k for c in COST_KEYS), f"{where}: '{k}' is a cost"
            _no_cost_keys(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for v in obj:
            _no_cost_keys(v, where)


def test_cost_file_and_table_names():
    assert cost_path("r/lm_summary.json") == Path("r/lm_summary.json.cost.json")
    assert cost_path("r/factors/") == Path("r/factors.cost.json")  # a directory: beside it
    assert cost_table_path("r/lm_table.md") == Path("r/lm_costs.md")
    assert cost_table_path("r/compare.md") == Path("r/compare_costs.md")
    assert cost_table_path("r/readme_tables.md") == Path("r/readme_costs.md")
    assert is_cost_file("r/lm_costs.md") and is_cost_file("r/x.nc.cost.json")
    assert not is_cost_file("r/lm_table.md") and not is_cost_file("r/cost.json")


# --------------------------------------------------------------------------- the commands


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("costs")
    return (root, *smoke_lm(root, steps=2))


def _pipeline(m, w, out: Path) -> None:
    """collect (two shards) -> merge -> eigen -> K-FAC edit -> evaluate perplexity, into out."""
    collect = ["collect", "--model", m, "--data", w / "curvature.jsonl", "--layers", "1",
               "--modules", "mlp.gate_proj,mlp.up_proj", "--tokens", 256, "--seq-len", 32,
               "--batch-size", 4, "--device", "cpu"]
    for k in (0, 1):
        assert main([*collect, "--shard", f"{k}/2", "--out", out / f"s{k}"]) == 0
    assert main(["merge", out / "s0/layer_1.nc", out / "s1/layer_1.nc",
                 "--out", out / "f/layer_1.nc"]) == 0
    assert main(["eigen", "--factors", out / "f/layer_1.nc", "--device", "cpu",
                 "--out", out / "e/layer_1.nc"]) == 0
    assert main(["edit", "--model", m, "--eigen", out / "e", "--layers", "1", "--modules",
                 "mlp.gate_proj,mlp.up_proj", "--rho", "0.6", "--out", out / "k.safetensors"]) == 0
    assert main(["evaluate", "perplexity", "--model", m, "--edit", out / "k.safetensors",
                 "--data", w / "heldout.jsonl", "--out", out / "ppl/perplexity.json"]) == 0


def _results(out: Path) -> dict[str, bytes]:
    """Every result file's bytes (the safetensors weights as tensors: safetensors writes its
    header's metadata in a per-process order)."""
    from safetensors.numpy import load_file

    found = {}
    for p in sorted(out.rglob("*")):
        rel = str(p.relative_to(out))
        if not p.is_file() or is_cost_file(p) or p.name.startswith("."):
            continue
        if p.suffix == ".safetensors":
            found[rel] = b"".join(k.encode() + v.tobytes() for k, v in sorted(load_file(p).items()))
        elif not rel.endswith(".safetensors.sha256"):
            found[rel] = p.read_bytes()
    return found


def test_results_are_byte_identical_between_runs_and_costs_are_beside_them(smoke, tmp_path):
    from curvmem.schema import edit_sidecar, read_layer

    root, w, _, m = smoke
    out = tmp_path / "run"
    _pipeline(m, w, out)
    first = _results(out)
    costs = {p: read_cost(out / p) for p in first}
    shutil.rmtree(out)
    _pipeline(m, w, out)  # the same commands again, as a job rerun after a kill would
    again = _results(out)
    assert sorted(again) == sorted(first)
    differ = [p for p in first if again[p] != first[p]]
    assert not differ, f"results that differ between two runs: {differ}"

    for kind, path in (("factors", out / "s0/layer_1.nc"), ("factors", out / "f/layer_1.nc"),
                       ("eigen", out / "e/layer_1.nc")):
        attrs = read_layer(path, kind).attrs
        assert not [k for k in attrs if k.startswith("cost")], (path, attrs)
    shards = [costs[f"s{k}/layer_1.nc"] for k in (0, 1)]
    merged, eigen = costs["f/layer_1.nc"], costs["e/layer_1.nc"]
    assert all(c["seconds"] > 0 and c["peak_rss_mb"] > 0 for c in shards)
    assert merged["seconds"] == pytest.approx(sum(c["seconds"] for c in shards), abs=2e-3)
    assert eigen["seconds"] == pytest.approx(merged["seconds"] + eigen["eigen_seconds"], abs=2e-3)
    edit = costs["k.safetensors"]
    assert edit["upstream_seconds"] == pytest.approx(eigen["seconds"], abs=2e-3)
    assert edit["seconds"] == pytest.approx(edit["upstream_seconds"] + edit["edit_seconds"],
                                            abs=2e-3)
    _no_cost_keys(json.loads(edit_sidecar(out / "k.safetensors").read_text()), "sidecar")
    ppl = json.loads((out / "ppl/perplexity.json").read_text())
    _no_cost_keys(ppl, "perplexity.json")
    evaluation = costs["ppl/perplexity.json"]
    assert evaluation["seconds"] > 0 and evaluation["edit"]["seconds"] == edit["seconds"]


def test_world_tokenizer_and_training_keep_their_seconds_beside_their_directories(smoke):
    root, w, tok, m = smoke
    _no_cost_keys(json.loads((w / "world.json").read_text()), "world.json")
    _no_cost_keys(json.loads((m / "train_log.json").read_text()), "train_log.json")
    for d in (w, tok, m):
        assert read_cost(d)["seconds"] > 0, d
        assert not (d / cost_path(d).name).exists()  # beside the directory, not inside it


# --------------------------------------------------------------------------- the reports


def _mem(strict):
    kinds = {"random": {"n": 1, "strict": strict, "loose": strict, "avg_distance": 1 - strict}}
    return {"strict": strict, "loose": strict, "avg_distance": 1 - strict, "by_kind": kinds}


def _entry(root: Path, name: str, method=None, old_format: bool = False) -> str:
    """An entry's evaluation files; an edit's cost (12.5 s, 345 MB) in the perplexity
    evaluation's cost file or, with `old_format`, inside its "edit" record."""
    d = root / name
    edit = {"method": method, "spec": {"1": {"mlp.up_proj": 0.6}}} if method else None
    if edit and old_format:
        edit.update(seconds=12.5, peak_rss_mb=345.0)
    for split in ("forget", "untargeted"):
        write_json(d / f"memorization_{split}.json", _mem(0.5 if method else 1.0))
    write_json(d / "perplexity.json", {"perplexity": 10.0, "perplexity_batch_mean": 10.0,
                                       "edit": edit})
    if edit and not old_format:
        write_json(cost_path(d / "perplexity.json"),
                   {"seconds": 3.0, "edit": {"seconds": 12.5, "peak_rss_mb": 345.0}})
    return f"{name}={d}"


@pytest.mark.parametrize("old_format", [False, True])
def test_report_lm_and_compare_write_costs_apart_from_results(tmp_path, old_format):
    entries = [_entry(tmp_path, "base"), _entry(tmp_path, "k", "kfac", old_format)]
    out, table = tmp_path / "lm_summary.json", tmp_path / "lm_table.md"
    assert main(["report-lm", *[a for e in entries for a in ("--entry", e)], "--out", out,
                 "--table", table]) == 0
    summary = json.loads(out.read_text())
    _no_cost_keys(summary, "lm_summary.json")
    assert "seconds" not in table.read_text() and "RSS" not in table.read_text()
    assert read_cost(out) == {"models": {"k": {"seconds": 12.5, "peak_rss_mb": 345.0}}}
    assert "| k | kfac | `{\"1\":{\"mlp.up_proj\":0.6}}` | 12.5 | 345 |" in \
        cost_table_path(table).read_text()

    cmp = tmp_path / "compare.md"
    assert main(["compare", "--summary", out, "--table", cmp,
                 "--figure", tmp_path / "compare.png"]) == 0
    assert "edit s" not in cmp.read_text() and "peak MB" not in cmp.read_text()
    assert "| k | kfac | rho=0.6 | 12.5 | 345 |" in cost_table_path(cmp).read_text()


def test_compare_reads_the_costs_an_older_summary_carried():
    old = {"models": {"base": {"seconds": None}, "k": {"method": "kfac", "seconds": 2.0,
                                                       "peak_rss_mb": 9.0}}}
    assert model_costs(old) == {"k": {"seconds": 2.0, "peak_rss_mb": 9.0}}
    assert model_costs({"models": {"k": {"method": "kfac"}}}) == {}


def test_the_readme_shows_a_snapshot_cost_table_after_its_tables(tmp_path, monkeypatch):
    """The committed snapshot has its costs as a column of readme_tables.md; one written since
    has them in readme_costs.md, which the README shows right after the tables."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("readme_results",
                                                  root / "benchmarks/readme_results.py")
    readme_results = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(readme_results)
    monkeypatch.setattr(readme_results, "SNAPSHOT", tmp_path)
    (tmp_path / "readme_tables.md").write_text("| tables |\n")
    assert readme_results.readme_tables() == "| tables |\n"
    (tmp_path / "readme_costs.md").write_text("| costs |\n")
    assert readme_results.readme_tables() == "| tables |\n\n| costs |\n"
