"""The README's and docs/results.md's study results are generated: rows chosen by rule, and every
number of their generated blocks comes from the committed snapshot of a run (docs/results/)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from curvmem.report.readme import claim_counts, readme_tables, table_rows
from curvmem.report.seeds import aggregate, load_run

ROOT = Path(__file__).resolve().parents[1]


def _model(forget, untargeted, ppl, method=None, layers=None, tasks=(0.9, 0.9, 0.9, 0.9)):
    def split(strict):
        return {"strict": strict, "loose": strict, "avg_distance": 1 - strict,
                "by_kind": {"random": None, "natural": None}}
    m = {"forget": split(forget), "untargeted": split(untargeted), "control": split(0.0),
         "perplexity": ppl, "ndcg10": None if method is None else 0.9,
         "tasks": dict(zip(("closed_book", "open_book", "arithmetic", "logic"), tasks)),
         "tasks_n": {}, "subtasks": {}, "subtasks_n": {}}
    if method:
        m.update(method=method, spec={str(layer): {"mlp.up_proj": 0.6} for layer in layers or []})
    return m


def synthetic_summary():
    models = {
        "base": _model(1.0, 1.0, 20.0),
        "kfac-L1-rho0.6": _model(0.0, 0.0, 21.8, "kfac", [1], (0.5, 0.95, 0.6, 0.99)),
        "kfac-L1-rho0.8": _model(0.2, 0.1, 21.0, "kfac", [1], (0.8, 0.95, 0.9, 0.99)),
        "kfac-L1+2-rho0.6": _model(0.0, 0.0, 21.5, "kfac", [1, 2], (0.9, 0.8, 0.9, 0.8)),
        "kfac-L1+2-rho0.5": _model(0.0, 0.0, 40.0, "kfac", [1, 2]),  # over the budget
        "bottom": _model(0.6, 0.6, 50.0, "kfac-bottom", [1, 2]),
        "svd": _model(0.9, 0.9, 21.0, "svd", [1, 2]),
        "bsn": _model(0.0, 0.5, 19.0, "bsn"),
    }
    return {"models": models, "selected": "kfac-L1+2-rho0.6"}


def test_rows_are_chosen_by_rule_not_by_hand():
    s = synthetic_summary()
    # base, the selected edit (a summary without `selection`: its K-FAC pick), each layer set's
    # pick by the same rule, the controls
    assert table_rows(s) == ["base", "kfac-L1+2-rho0.6", "kfac-L1-rho0.6", "bottom"]
    assert claim_counts(s) == {"kfac_edits": 4, "erase_untargeted": 3,
                               "erase_forget_validation": 0, "split_of_skills": 2}
    s["selection"] = {"kfac": {"selected": "kfac-L1+2-rho0.6"}, "svd": {"selected": "svd"},
                      "bsn": {"selected": None}}
    assert table_rows(s) == ["base", "kfac-L1+2-rho0.6", "svd", "kfac-L1-rho0.6", "bottom"]
    text = readme_tables(s)
    assert "**kfac-L1+2-rho0.6 (selected kfac)**" in text and "kfac-L1+2-rho0.5" not in text
    assert "| *paper 7B K-FAC* | 3.4 / 8.8 / 0.704 | 16.1 / 23.8 / 0.625 | – | – |" in text
    assert "21.50 (+7.5 %)" in text  # perplexity and its rise over base


def _numbers(text: str) -> set[str]:
    """Decimal numbers as written (0.931, 27.81, 4.1, 23), signs and % dropped."""
    return set(re.findall(r"\d+(?:\.\d+)?", text))


def _generated(text: str, begin: str, end: str) -> str:
    """The block of `text` between a generator's markers."""
    start = text.index(begin)
    return text[start + len(begin):text.index(end, start)]


# a link's target, a list's ordinal or a section number is not a result
NOT_RESULTS = r"\]\([^)]*\)|`[^`]*`|\bL\d[\d+]*\b|\b(?:Fig\.|Figure|Table|issue) \d+"


SNAPSHOT = ROOT / "docs" / "results" / "paper"
VALIDATION_ONLY = {"memorization_forget", "perplexity_selection", "tasks_validation"}


def _seed_dirs() -> list[Path]:
    return sorted(SNAPSHOT.glob("seed-*"))


def _snapshot_numbers() -> tuple[set[str], str]:
    """Every number the committed snapshots hold, and the tables as the generator shows them."""
    tables = (SNAPSHOT / "readme_tables.md").read_text()
    known = _numbers(tables) | _numbers((SNAPSHOT / "seeds_summary.json").read_text())
    # a snapshot from a report-seeds that writes its costs apart: its cost table follows
    costs = SNAPSHOT / "readme_costs.md"
    if costs.is_file():
        known |= _numbers(costs.read_text())
        tables += "\n" + costs.read_text()
    for seed_dir in _seed_dirs():
        for path in [seed_dir / "run.json", seed_dir / "lm_summary.json",
                     seed_dir / "vit_summary.json", *sorted((seed_dir / "analysis").glob("*.json"))]:
            known |= _numbers(path.read_text())
    wd = ROOT / "docs" / "results" / "lm-weight-decay"  # the weight-decay study's bullet
    known |= _numbers((wd / "lm_weight_decay.md").read_text())
    known |= _numbers((wd / "lm_weight_decay.json").read_text())
    return known, tables


def test_every_number_of_the_study_blocks_is_in_the_committed_snapshot():
    """The README's summary shows the snapshot's headline table as report-seeds wrote it,
    docs/results.md all of its tables; no number of either block's sentences is typed."""
    gen = _readme_generator()
    known, tables = _snapshot_numbers()
    summary = _generated((ROOT / "README.md").read_text(), gen.SUMMARY_BEGIN, gen.SUMMARY_END)
    study = _generated(gen.STUDY_DOC.read_text(), gen.STUDY_BEGIN, gen.STUDY_END)
    headline = gen.headline_table(tables)
    assert headline in summary, "the README must show the first table of readme_tables.md as is"
    assert headline.count("\n|") >= 3, "the headline table has a header, a rule and rows"
    assert tables in study, "docs/results.md must show docs/results/paper/readme_tables.md as is"
    assert "[docs/results.md](docs/results.md)" in summary, "the README links the whole study"
    for name, block, shown in (("README.md", summary, headline), ("docs/results.md", study, tables)):
        prose = re.sub(NOT_RESULTS, "", block.replace(shown, ""))
        typed = sorted(_numbers(prose) - known)
        assert not typed, f"numbers in {name}'s study block that no snapshot holds: {typed}"


def test_the_committed_study_has_three_seeds_equal_budgets_and_validation_only_selection():
    """The snapshot the README reports: >= 3 seeds, each with >= 8 settings per method, every
    selection reading validation data only, every control; the tables are report-seeds' output
    of these very seeds."""
    summary = json.loads((SNAPSHOT / "seeds_summary.json").read_text())
    assert len(summary["seeds"]) >= 3
    assert [d.name for d in _seed_dirs()] == [f"seed-{s}" for s in summary["seeds"]]
    for seed_dir in _seed_dirs():
        lm = json.loads((seed_dir / "lm_summary.json").read_text())
        run = json.loads((seed_dir / "run.json").read_text())
        assert run["config"] == "workflow/config/paper.yaml" and run["outdir"].endswith(seed_dir.name)
        for method, sel in lm["selection"].items():
            assert set(sel["reads"]) <= VALIDATION_ONLY, (seed_dir.name, method)
            assert sel["n"] >= 8, (seed_dir.name, method)
        methods = {m.get("method") for m in lm["models"].values()}
        for control in ("kfac-random", "kfac-random-mass", "kfac-ablate-top", "kfac-ablate-middle",
                        "kfac-ablate-bottom", "kfac-random-basis", "kfac-shard",
                        "kfac-other-slice"):
            assert control in methods, (seed_dir.name, control)
    # the claims and picks follow from the seeds' summaries (cost needs the benchmark files,
    # which the snapshot does not keep)
    recomputed = aggregate({int(d.name.removeprefix("seed-")): load_run(d) for d in _seed_dirs()})
    assert recomputed["claims"] == summary["claims"]
    # judged by the rules its runs were made under, and the summary says which
    assert recomputed["claims_version"] == summary["claims_version"]
    assert recomputed["selected"] == summary["selected"]


def test_the_results_prose_is_what_the_generator_writes():
    """Every generated block (README's study summary, docs/results.md's study, docs/benchmarks.md's
    default-DAG timings) is what benchmarks/readme_results.py writes (numbers quoted from the
    tables' cells and run.json files, claims with their k of n seeds), not a hand edit."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "readme_results.py"),
                           "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _readme_generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_results",
                                                  ROOT / "benchmarks" / "readme_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_study_under_the_current_rules_gets_sentences_from_its_own_cells(tmp_path):
    """A synthetic version-2 snapshot: the section quotes the claims' k of n and the tables'
    cells, so every number of its prose is in the snapshot."""
    from curvmem.report.seeds import tables
    from test_claims import summary_v2

    runs = {s: {"lm": summary_v2()} for s in (0, 1, 2)}
    agg = aggregate(runs)
    (tmp_path / "seeds_summary.json").write_text(json.dumps(agg))
    (tmp_path / "readme_tables.md").write_text(tables(agg))
    for s in runs:
        (tmp_path / f"seed-{s}").mkdir()
        (tmp_path / f"seed-{s}" / "run.json").write_text(json.dumps(
            {"commit": "abc1234", "machine": "2 CPU cores", "cpu": "x86", "wall_seconds": 60.5,
             "jobs": 9, "lm_training_seconds": 30.25, "lm_muon_ns_dtype": "bfloat16"}))
    gen = _readme_generator()
    text = gen.section(tmp_path)
    assert (tmp_path / "readme_tables.md").read_text() in text
    assert "version 2: curvmem.report.claims" in text
    c = agg["claims"]["removes_memorization_forget_validation_kfac"]
    assert c["holds"] == 3 and "for forget-validation in 3 of 3 seeds" in " ".join(text.split())
    known = _numbers(text.split("The paper's claims")[0]) | _numbers(
        (tmp_path / "readme_tables.md").read_text()) | _numbers(json.dumps(agg))
    prose = re.sub(NOT_RESULTS, "", text.split("The paper's claims")[1])
    # the paper's own numbers and the rules' stated margins are quoted, not measured
    stated = {"5", "10", "1", "1.10", "23.1", "26.0", "93", "99", "95", "106", "74", "86", "66"}
    assert not sorted(_numbers(prose) - known - stated)
    # the README's summary: the headline table as written, the same claims, a link to the rest
    short = gen.summary(tmp_path)
    assert gen.headline_table(tables(agg)) in short and "Controls" not in short
    assert " ".join(text.split("The paper's claims")[1].split()) in " ".join(short.split())
    assert "version 2: curvmem.report.claims" in short
