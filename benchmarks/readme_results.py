"""Write the generated parts of README.md and docs/: the embedded study's results from the
committed multi-seed snapshot (docs/results/paper/), and the default DAG's figures from its
committed runs (docs/results/default*/).

    python benchmarks/readme_results.py          # rewrite every generated block
    python benchmarks/readme_results.py --check  # exit 1 if a file is not what this writes

Three blocks, each between its markers: the README's summary of the study (the headline table and
the claims), docs/results.md's whole study (every table, the fronts, the claims and what was
measured beside them) and docs/benchmarks.md's default-DAG timings. The tables are
docs/results/paper/readme_tables.md as `curvmem report-seeds` wrote them; the sentences name each
claim with the number of seeds it holds in and quote the tables' own cells
(curvmem.report.seeds.cell), so no number of a generated block is typed by hand.
tests/test_readme.py checks every number of the study's blocks against the snapshot.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from pathlib import Path

from curvmem import io
from curvmem.report.seeds import cell, rate_cell, ratio_cell, verdict_text

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = ROOT / "docs" / "results" / "paper"
WEIGHT_DECAY = ROOT / "docs" / "results" / "lm-weight-decay" / "lm_weight_decay.json"
README = ROOT / "README.md"
STUDY_DOC = ROOT / "docs" / "results.md"
BENCHMARKS_DOC = ROOT / "docs" / "benchmarks.md"
SUMMARY_BEGIN = ("<!-- study-summary: written by benchmarks/readme_results.py from "
                 "docs/results/paper/ -->")
SUMMARY_END = "<!-- /study-summary -->"
STUDY_BEGIN = "<!-- study: written by benchmarks/readme_results.py from docs/results/paper/ -->"
STUDY_END = "<!-- /study -->"
FRONTS = "![Each seed's Pareto fronts](docs/results/paper/fronts.png)"
CLAIMS_INTRO = "The paper's claims, each with the number of seeds it holds in:"
# the default DAG's runs (benchmarks/bench_default.py --snapshot), in the order the table shows
DEFAULT_RUNS = [ROOT / "docs" / "results" / name for name in ("default", "default-avx2")]
DAG_BEGIN = "<!-- default-dag: written by benchmarks/readme_results.py from docs/results/default*/run.json -->"
DAG_END = "<!-- /default-dag -->"
# the rules the per-rule table names; the rest are summed in one row
DAG_RULES_SHOWN = 8
ANALYSIS_RULE_PREFIX = "analysis_"
DAG_BUDGET_S, DAG_TARGET_S, DAG_MEMORY_MB = 15 * 60, 12 * 60, 6 * 1024


def _claim(agg: dict, name: str) -> str:
    c = agg["claims"][name]
    return f"{c['holds']} of {c['tested']} seeds"


def weight_decay_bullet() -> str:
    """The language model at weight decay 0.1 and 0.3 (docs/results/lm-weight-decay/)."""
    wd = json.loads(WEIGHT_DECAY.read_text())
    c = wd["counts"]
    decayed = [str(w) for w in wd["weight_decays"] if w > 0]
    runs = {w: {int(s): r for s, r in per.items()} for w, per in wd["runs"].items()}
    gap = {w: {s: r["activation"]["gap"] for s, r in per.items()} for w, per in runs.items()}
    undecayed = " and ".join(f"{g:+.2f}" for g in gap["0.0"].values())
    lo = min(g for w in decayed for g in gap[w].values())
    hi = max(g for w in decayed for g in gap[w].values())
    seed_spread = max(gap["0.0"].values()) - min(gap["0.0"].values())
    decay_shift = max(abs(g - gap["0.0"][s]) for w in decayed for s, g in gap[w].items())
    memorize = all(r["base"]["forget"] == 1 and r["base"]["untargeted"] == 1
                   for per in runs.values() for r in per.values())
    every = all(v["holds"] == v["tested"] for v in c.values())
    holds = sorted({(v["holds"], v["tested"]) for v in c.values()})
    counts = (f"each hold in {holds[0][0]} of {holds[0][1]}" if len(holds) == 1 else
              "hold in " + ", ".join(f"{v['holds']} of {v['tested']}" for v in c.values()))
    seeds = sorted({s for w in decayed for s in runs[w]})
    noise = (f": the undecayed runs' own activation gaps ({undecayed}) differ more between seeds "
             f"than the decayed ones ({lo:+.2f} to {hi:+.2f}) differ from them"
             if seed_spread > decay_shift else
             f" (activation gaps {undecayed} undecayed, {lo:+.2f} to {hi:+.2f} decayed)")
    return f"""- **Weight decay {'sharpens' if every else 'does not consistently sharpen'} the language
  model's separation** (the paper's App. H.1, for ViTs: more decay, more drastic): trained at
  weight decay {' and '.join(decayed)} (seeds {', '.join(map(str, seeds))}), the LM
  {'still recites every memorized document and quote' if memorize else 'memorizes less'}, and
  H.1's three predictions (a wider activation gap between the bottom-50 % and top-10 % bands, a
  complement control that keeps more of forget-validation, a better trade-off for the selected
  edit) {counts} decayed runs against the undecayed run of their seed{noise}
  (`docs/results/lm-weight-decay/`, [docs/lm.md](docs/lm.md)); the default stays undecayed."""


def readme_tables(snapshot: Path | None = None) -> str:
    """The snapshot's tables as report-seeds wrote them, then its cost table (readme_costs.md)
    where it has one: an older report-seeds wrote the costs as a column of the tables."""
    snapshot = SNAPSHOT if snapshot is None else snapshot
    tables = (snapshot / "readme_tables.md").read_text()
    costs = snapshot / "readme_costs.md"
    return tables + "\n" + costs.read_text() if costs.is_file() else tables


def _study(snapshot: Path | None) -> tuple[dict, str, dict, dict]:
    """(seeds_summary.json, the tables, each seed's run.json, the sentences) of a snapshot; the
    sentences by the claim rules' version that judged it (`claims_version`; none: version 1)."""
    snapshot = SNAPSHOT if snapshot is None else snapshot
    agg = json.loads((snapshot / "seeds_summary.json").read_text())
    runs = {s: json.loads((snapshot / f"seed-{s}" / "run.json").read_text())
            for s in agg["seeds"]}
    write = _sentences_v1 if agg.get("claims_version", 1) == 1 else _sentences_v2
    return agg, readme_tables(snapshot), runs, write(agg, runs)


def _flow(text: str) -> str:
    """Each blank-line-separated block of `text` at 100 columns (tables and images as they are)."""
    return "\n".join(reflow(block.strip("\n")) for block in text.strip("\n").split("\n\n"))


def section(snapshot: Path | None = None) -> str:
    """The whole study (docs/results.md): how it was run, every table as report-seeds wrote
    it, the fronts, the claims and what was measured beside them."""
    _, tables, _, text = _study(snapshot)
    parts = [_flow(text["head"]), tables, FRONTS + "\n", _flow(CLAIMS_INTRO + "\n" + text["claims"])]
    if text["beside"]:
        parts.append(_flow(text["beside"]))
    # the page lives in docs/: its links are relative to it
    text = re.sub(r"\[docs/([^\]]*)\]\(docs/", r"[\1](", "\n".join(parts))
    return re.sub(r"\]\(docs/", "](", text)


def headline_table(tables: str) -> str:
    """The first table of report-seeds' tables with its caption: each method's selected edit
    beside the base and the paper's rows."""
    caption, table = tables.split("\n\n")[:2]
    return caption + "\n\n" + table.rstrip("\n") + "\n"


def summary(snapshot: Path | None = None) -> str:
    """The README's summary of the study: where it comes from, the headline table, the claims."""
    agg, tables, runs, text = _study(snapshot)
    first = next(iter(runs.values()))
    commits = ", ".join(sorted({r["commit"] for r in runs.values()}))
    version = agg.get("claims_version", 1)
    rules = (f"version {version}: the point-estimate rules of a study made before the covered "
             "world, kept in `curvmem.report.claims` to report it as it was judged; a study under "
             "the current rules (paired item bootstraps against margins and same-kind controls) "
             "replaces it" if version == 1 else agg["claims_rules"])
    intro = f"""The study: {len(agg['seeds'])} seeds of `workflow/config/paper.yaml` (the default's
world and model in each seed, equal budgets for every method, every control), run at commit
{commits} ({first['machine']}; {first['cpu']}). Every number here is generated from the committed
snapshot `docs/results/paper/` by `benchmarks/readme_results.py`; `tests/test_readme.py` fails on
any number the snapshot does not hold. Cells are means ± 95 % Student-t intervals across the seeds;
each claim says in how many seeds it holds, by the claim rules of {rules}. Every table, the Pareto
fronts, the world and what was measured beside the claims: [docs/results.md](docs/results.md)."""
    return "\n".join([_flow(intro), headline_table(tables),
                      _flow(CLAIMS_INTRO + "\n" + text["claims"])])


def _runs_sentence(runs: dict) -> str:
    first = next(iter(runs.values()))
    walls = ", ".join(f"seed {s}: {r['wall_seconds']} s wall, {r['jobs']} jobs, LM training "
                      f"{r['lm_training_seconds']} s" for s, r in runs.items())
    commits = sorted({r["commit"] for r in runs.values()})
    return (f"The runs, at commit {', '.join(commits)} on this project's machine "
            f"({first['machine']}; {first['cpu']}; Muon's iterations in "
            f"{first['lm_muon_ns_dtype']}), one after another: {walls}.")


def _sentences_v1(agg: dict, runs: dict) -> dict[str, str]:
    """The sentences of a study judged by the version-1 rules (the point-estimate rules of the
    study made before the covered world), as they were, labelled so: {"head": how it was run,
    "claims": the claims' bullets, "beside": what was measured beside them}."""
    n = len(agg["seeds"])
    m, ctl, an, vit = agg["methods"], agg["controls"], agg["analyses"], agg["vit"]
    first = runs[agg["seeds"][0]]
    walls = ", ".join(f"seed {s}: {r['wall_seconds']} s wall, {r['jobs']} jobs, LM training "
                      f"{r['lm_training_seconds']} s" for s, r in runs.items())
    commits = sorted({r["commit"] for r in runs.values()})

    def ctl_row(prefix):
        return next((v for k, v in ctl.items() if k.startswith(prefix)), None)

    ref = next(iter(ctl.values()))
    bottom, random_mass = ctl_row("kfac-bottom-"), ctl_row("kfac-random-mass-")
    middle, basis = ctl_row("kfac-ablate-middle-"), ctl_row("kfac-random-basis-")
    shard, slice_ = ctl_row("kfac-shard-"), ctl_row("kfac-other-slice-")
    head = f"""Every number on this page is generated, not typed: the tables are
`docs/results/paper/readme_tables.md` as `curvmem report-seeds` wrote them from {n} seeds' runs
of `workflow/config/paper.yaml` committed under `docs/results/paper/seed-N/` (each seed's
summaries, analyses, tables and `run.json`: commit, machine, versions, per-rule times), and the
sentences are written by `benchmarks/readme_results.py` from `seeds_summary.json`;
`tests/test_readme.py` fails on any number here that the snapshot does not hold. Each seed has
its own world, model, factors, BSN and random draws (docs/workflow.md, "A multi-seed study"), and
its own selection. Every cell is a mean ± 95 % Student-t interval across the seeds; every claim
says in how many seeds it holds, by the rules of version {agg.get('claims_version', 1)}: the
point-estimate rules then in `curvmem.report.seeds`, fixed before the runs (kept unchanged in
`curvmem.report.claims` to report this study as it was judged; `seeds_summary.json` records the
version). This study was made before the covered world and before the rules that test each claim
by a paired item bootstrap against a margin and against never-trained controls of the same kinds;
a study under those rules replaces it.

The world ([docs/lm.md](docs/lm.md#the-world)): memorized documents of four kinds (menus, number
tables, licences, random words), trained as **forget** (what BSN trains on and the selection
reads) and **forget-validation** (the paper's held-out half: read by nothing); **quotes** of
another kind, trained at another rate, read by no method and no selection; never-trained
controls; validation and test splits per skill; two held-out texts. Factors are collected on a
**curvature corpus** that holds none of what is memorized. The study: **8 settings per method**
(K-FAC: layers × ρ, with and without down_proj and the paper's per-module ρ; SVD: layers × drop,
and the paper's recipe; BSN: ratio × epochs × lr), one selection rule for all three (validation
data only: forget recitation, the selection held-out text's perplexity within +10 %, the
validation tasks), and every control
([docs/baselines.md](docs/baselines.md#controls-that-isolate-curvature)). The runs, at commit
{', '.join(commits)} on this project's machine ({first['machine']}; {first['cpu']}; Muon's
iterations in {first['lm_muon_ns_dtype']}), one after another, sharing the 2 cores with the
test suite for part of the time: {walls}.
"""
    claims = f"""- **K-FAC removes memorization it never saw** ({_claim(agg, 'kfac_suppresses_forget_validation')}:
  at most half the base's forget-validation recited). The selected K-FAC edit recites
  {cell(m['kfac']['forget_validation'], 100)} % of forget-validation (paper 3.4 %) and
  {cell(m['kfac']['untargeted'], 100)} % of the quotes, another kind that no method and no
  selection reads (paper 16.1 %), at {cell(m['kfac']['ppl_rise'], 100, sign=True)} % perplexity.
- **K-FAC beats BSN on untargeted memorization** ({_claim(agg, 'kfac_beats_bsn_quotes')}: the
  selected edits; K-FAC's front below BSN's on quotes in {_claim(agg, 'kfac_front_below_bsn_quotes')},
  below SVD's in {_claim(agg, 'kfac_front_below_svd_quotes')}). The selected BSN recites
  {cell(m['bsn']['forget_validation'], 100)} % of forget-validation (paper 6.0 %) and
  {cell(m['bsn']['untargeted'], 100)} % of the quotes (paper 60.0 %); SVD's pick
  {cell(m['svd']['forget_validation'], 100)} % and {cell(m['svd']['untargeted'], 100)} %.
  On forget-validation itself K-FAC's front lies below BSN's in
  {_claim(agg, 'kfac_front_below_bsn_forget_validation')}: BSN trains on the forget set's own
  kind and erases its held-out half at no perplexity cost.
- **Which pairs are kept matters, not how much curvature** ({_claim(agg, 'top_beats_random_mass')}:
  the top-ρ set recites less forget-validation than random pairs of the same mass). The top-ρ
  edit of the controls' setting recites {cell(ref['forget_validation'], 100)} % at
  {cell(ref['ppl_rise'], 100, sign=True)} % perplexity, mass-matched random pairs
  {cell(random_mass['forget_validation'], 100)} % at
  {cell(random_mass['ppl_rise'], 100, sign=True)} %.
- **The top of the curvature order carries the shared mechanisms**
  ({_claim(agg, 'ablate_top_hurts_most')}: removing the top band costs more perplexity than an
  equal-count middle or bottom band): {cell(bottom['ppl_rise'], 100, sign=True)} % against
  {cell(middle['ppl_rise'], 100, sign=True)} % for the middle band; keeping only the complement of
  the top set leaves {cell(bottom['forget_validation'], 100)} % of forget-validation recited.
- **Memorized inputs lean on the low-curvature bands** (the paper's Figure 2;
  {_claim(agg, 'bottom_band_memorized')}): the bottom 50 % of K-FAC components carry
  {cell(an['activation_ratio']['kfac_pairs'][-1], 100, sign=True)} % more on memorized than on
  clean positions (paper +23.1 %), the top 10 %
  {cell(an['activation_ratio']['kfac_pairs'][0], 100, sign=True)} % (paper −26.0 %); SVD bands
  show no such order. The ViT's noisy-label images do so in
  {_claim(agg, 'vit_bottom_band_memorized')}, far more weakly.
- **The edit spares open-book and logic, hurts closed-book and arithmetic** (the paper's Figure 3;
  {_claim(agg, 'skill_split')} for the selected K-FAC edit): it keeps
  {cell(m['kfac']['open_book'], 100)} % of open-book and {cell(m['kfac']['logic'], 100)} % of
  logic, {cell(m['kfac']['closed_book'], 100)} % of closed-book and
  {cell(m['kfac']['arithmetic'], 100)} % of arithmetic (paper 93–99, 95–106, 74–86 and 66–74 %).
  Our arithmetic is recall of trained tables (the tiny model does not learn held-out sums): a
  memorized fact in this world, and the edit removes it as one.
- **Vision, Table 2** ({_claim(agg, 'vit_table2')}: ≥ 5× fewer memorized labels, validation no
  lower): the selected K-FAC ViT edit leaves {cell(vit['kfac']['memorized'], 100)} % of the
  noisy labels memorized (base {cell(vit['base']['memorized'], 100)} %) with validation
  {cell(vit['kfac']['val_acc'], 100)} % (base {cell(vit['base']['val_acc'], 100)} %), a
  {cell(vit['kfac']['reduction'], digits=2)}× reduction against the paper's 23×; no setting of
  the DAG-run ViT study (weight decay, width, tokens per image, the Fisher's images:
  `workflow/config/vit-study.yaml`, `docs/results/vit-study/`, [docs/vision.md](docs/vision.md))
  reaches it either.
{weight_decay_bullet()}
"""
    beside = f"""Measured beside the claims:
- **Shifted prompts** (the paper's Table 6): the selected K-FAC edit goes from
  {cell(an['stress']['kfac']['original'], digits=2)} to
  {cell(an['stress']['kfac']['perturbed'], digits=2)} exact-match tokens when the prompt is
  shifted (paper 6.64 → 13.27), BSN from {cell(an['stress']['bsn']['original'], digits=2)} to
  {cell(an['stress']['bsn']['perturbed'], digits=2)}.
- **A memorized sequence's own gradient lies in low aggregate curvature** (the paper's account:
  each memorized example is sharp only along its own directions): along its own gradient it sees
  κ = {cell(an['per_example']['kappa_memorized'], digits=5)} against
  {cell(an['per_example']['kappa_clean'], digits=5)} for clean text, and puts
  {cell(an['per_example']['bottom_share_memorized'], 100)} % of its squared gradient in the
  bottom-50 % band against {cell(an['per_example']['bottom_share_clean'], 100)} %.
- **Tasks that lean on the bottom band are the ones the edit hurts** (the paper's Figure 4): across
  task categories, the Spearman correlation between a category's activation ratio in the bottom-50 %
  band and its retention under the selected edit is
  {cell(an['task_interaction']['kfac_pairs'][-1], digits=2)}, in the top-10 % band
  {cell(an['task_interaction']['kfac_pairs'][0], digits=2)}.
- **The eigenbasis across data and label seeds**: the same L1+2 edit from factors of another
  label-sampling seed or of the next slice of the curvature corpus costs
  {cell(shard['ppl_rise'], 100, sign=True)} % and {cell(slice_['ppl_rise'], 100, sign=True)} %
  perplexity against {cell(ref['ppl_rise'], 100, sign=True)} % from the main factors; the kept
  pair sets of disjoint slices overlap {cell(an['stability']['data'], digits=3)}, of two label
  seeds {cell(an['stability']['seed'], digits=3)}. The same edit in a random orthonormal basis
  with the same spectra wrecks the model ({cell(basis['ppl_rise'], 100, sign=True)} %).
"""
    return {"head": head, "claims": claims, "beside": beside}


def _sentences_v2(agg: dict, runs: dict) -> dict[str, str]:
    """The sentences of a study judged by the current rules (curvmem.report.claims): each claim
    with its k of n seeds and the tables' own cells, each seed's verdict as the claims table
    writes it."""
    n = len(agg["seeds"])
    m, an, c = agg["methods"], agg["analyses"], agg["claims"]

    def holds(name):
        return f"{c[name]['holds']} of {c[name]['tested']} seeds"

    def per_seed(name):
        return "; ".join(f"seed {s}: {verdict_text(v)}" for s, v in c[name]["detail"].items())

    def rates(r):
        return (f"{rate_cell(r['forget_validation'], r['wilson']['forget_validation'])} % of "
                f"forget-validation and {rate_cell(r['untargeted'], r['wilson']['untargeted'])} % "
                f"of the quotes at {ratio_cell(r['log_ppl_ratio'])} perplexity, the never-trained "
                f"documents' suffix loss {cell(r['genre_control'], digits=3, sign=True)} nats/token")

    depth = agg["paper_depth_row"]
    bullets = [f"""- **Removing memorization, not the genre** (an edit removes a set only if it recites
  under half of what the base recites while the suffix loss of never-trained items of the same
  kinds rises less than log 1.10): the selected K-FAC edit does so for forget-validation in
  {holds('removes_memorization_forget_validation_kfac')} and for the quotes in
  {holds('removes_memorization_quotes_kfac')}; SVD in
  {holds('removes_memorization_forget_validation_svd')} and
  {holds('removes_memorization_quotes_svd')}; BSN in
  {holds('removes_memorization_forget_validation_bsn')} and
  {holds('removes_memorization_quotes_bsn')}. K-FAC recites {rates(m['kfac'])}; BSN
  {rates(m['bsn'])}.""",
               f"""- **K-FAC beats BSN on untargeted memorization** (Table 1; by more than 5 points:
  {holds('kfac_beats_bsn_quotes')}; K-FAC's front more than 5 points below BSN's on quotes in
  {holds('kfac_front_below_bsn_quotes')}, on forget-validation in
  {holds('kfac_front_below_bsn_forget_validation')}, below SVD's on quotes in
  {holds('kfac_front_below_svd_quotes')}).""",
               f"""- **The edit spares open-book and logic, hurts closed-book and arithmetic**
  (Figure 3, by more than 5 points of retention): for the selected K-FAC edit in
  {holds('skill_split')} ({per_seed('skill_split')}); for the edit nearest the paper's depth in
  {holds('skill_split_paper_depth')}, which keeps {cell(depth['open_book'], 100)} % of
  open-book, {cell(depth['logic'], 100)} % of logic, {cell(depth['closed_book'], 100)} % of
  closed-book and {cell(depth['arithmetic'], 100)} % of arithmetic (paper 93–99, 95–106, 74–86
  and 66–74 %).""",
               f"""- **Which pairs are kept matters, not how much curvature** (the top-curvature
  edit recites more than 5 points less forget-validation than the front of random pairs of equal
  mass at its perplexity): {holds('top_beats_random_mass')}
  ({per_seed('top_beats_random_mass')}).""",
               f"""- **The top of the curvature order carries the shared mechanisms** (removing
  the top band of the mass costs more than 5 % more perplexity than an equal-mass middle or
  bottom band): {holds('ablate_top_hurts_most')} ({per_seed('ablate_top_hurts_most')}).""",
               f"""- **Memorized documents lean on the low-curvature bands** (Figure 2, against
  never-trained documents of the same kinds, by more than 5 %): {holds('bottom_band_memorized')};
  beyond the full output's norm ratio {holds('bottom_band_beyond_norm')}. Their median κ along
  their own gradient lies more than 10 % below the same-kind controls' in
  {holds('memorized_low_kappa')}.""",
               f"""- **Vision**: noisy-label images lean on the bottom band in
  {holds('vit_bottom_band_memorized')}; Table 2 (under 1/5 of the memorized labels, validation
  at most 1 point lower) in {holds('vit_table2')}."""]
    if "activation_same_kind" in an:
        ar = an["activation_same_kind"]
        bullets.append(f"""- Measured beside them: memorized ÷ same-kind documents, the bottom-50 %
  K-FAC band {cell(ar['kfac_pairs'][-1], 100, sign=True)} %, the top-10 %
  {cell(ar['kfac_pairs'][0], 100, sign=True)} %, the full output
  {cell(ar['full'], 100, sign=True)} % (paper, against clean text: +23.1 % and −26.0 %).""")
    head = f"""Every number on this page is generated, not typed: the tables are
`docs/results/paper/readme_tables.md` as `curvmem report-seeds` wrote them from {n} seeds' runs
of `workflow/config/paper.yaml` committed under `docs/results/paper/seed-N/`, and the sentences
are written by `benchmarks/readme_results.py` from `seeds_summary.json`; `tests/test_readme.py`
fails on any number here that the snapshot does not hold. Each seed has its own world, model,
factors, BSN and random draws, and its own selection (the paper's rule: forget recitation within
+10 % of the selection held-out text's perplexity; validation data only). Cells are a mean ± 95 %
Student-t interval across the seeds, with the seeds' own Wilson intervals in brackets. Every
claim was tested in each seed by the rules of {agg['claims_rules']}; each is a paired item
bootstrap with a stated margin, reported as the number of seeds it holds in (a claim with too few
items to be sure does not hold; one whose inputs are missing is not tested).
{_runs_sentence(runs)}
"""
    return {"head": head, "claims": "\n".join(bullets) + "\n", "beside": ""}


def _minutes(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s"


def _cpu_label(run: dict) -> str:
    env = run.get("environment") or {}
    capped = env.get("ATEN_CPU_CAPABILITY") == "avx2"
    return run["cpu"] + (", run as AVX2-only (`--isa avx2`)" if capped else "")


def default_dag_block() -> str:
    """The default DAG's end-to-end figures and where its time goes, one table row per run."""
    runs = [(d, json.loads((d / "run.json").read_text())) for d in DEFAULT_RUNS
            if (d / "run.json").is_file()]
    out = [DAG_BEGIN, "",
           "| CPU (2 cores) | commit | Muon iterations | wall | jobs | LM training | "
           "analyses (job time) | peak memory above idle |", "|---|---|---|---|---|---|---|---|"]
    for _, r in runs:
        analyses = sum(v["wall"] for k, v in r["rules"].items()
                       if k.startswith(ANALYSIS_RULE_PREFIX))
        out.append(f"| {_cpu_label(r)} | {r['commit']} | {r['lm_muon_ns_dtype']} | "
                   f"{_minutes(r['wall_seconds'])} | {r['jobs']} | "
                   f"{r['lm_training_seconds']:.0f} s ({r['lm_training_steps']} steps) | "
                   f"{analyses:.0f} s | {r['peak_memory_above_idle_mb']} MB |")
    verdicts = []
    for _, r in runs:
        wall = r["wall_seconds"]
        verdicts.append(
            f"{_cpu_label(r)}: {_minutes(wall)}, "
            + ("within" if wall <= DAG_TARGET_S else "over")
            + " the 12-minute target and "
            + ("within" if wall <= DAG_BUDGET_S else "over")
            + " the 15-minute budget, "
            + ("within" if r["peak_memory_above_idle_mb"] <= DAG_MEMORY_MB else "over")
            + " the 6 GB memory budget")
    out += ["", "Against the targets (`snakemake --cores all` on a fresh clone): "
            + "; ".join(verdicts) + "."]
    for d, r in runs:
        rules = sorted(r["rules"].items(), key=lambda kv: -kv[1]["wall"])
        shown, rest = rules[:DAG_RULES_SHOWN], rules[DAG_RULES_SHOWN:]
        out += ["", f"Where the time goes, {_cpu_label(r)} (`{d.relative_to(ROOT)}/run.json`; sums "
                "over jobs; start-up = interpreter, imports and model load, from each job's "
                "`curvmem timing:` line):", "",
                "| rule | jobs | wall s | start-up s | compute s |", "|---|---|---|---|---|"]
        for name, v in shown:
            out.append(f"| {name} | {v['jobs']} | {v['wall']:.0f} | {v['startup']:.0f} | "
                       f"{v['compute']:.0f} |")
        totals = {label: {k: sum(v[k] for _, v in part)
                          for k in ("jobs", "wall", "startup", "compute")}
                  for label, part in (("every other rule", rest), ("all jobs", rules))}
        for label, tot in totals.items():
            out.append(f"| {label} | {tot['jobs']} | {tot['wall']:.0f} | {tot['startup']:.0f} | "
                       f"{tot['compute']:.0f} |")
        tot = totals["all jobs"]
        train = r["rules"].get("train_lm", {}).get("wall", 0.0)
        out += ["", f"Process start-up is {tot['startup']:.0f} s of the {tot['wall']:.0f} s summed "
                f"over jobs ({100 * tot['startup'] / tot['wall']:.0f} %); LM training (on both cores) "
                f"is {train:.0f} s of the {r['wall_seconds']:.0f} s "
                "of wall time."]
    out += ["", DAG_END]
    return _flow_blocks(out)


def _flow_blocks(lines: list[str]) -> str:
    """Paragraphs at 100 columns; tables and markers as they are."""
    blocks = "\n".join(lines).split("\n\n")
    return "\n\n".join(reflow(b).rstrip("\n") for b in blocks)


def reflow(block: str) -> str:
    """A paragraph or list at 100 columns (the f-strings above break lines where the code does);
    tables, headings and images as they are."""
    lines = block.split("\n")
    if any(line.startswith(("|", "#", "![", "<!--")) for line in lines):
        return block + "\n"
    items, out = [], []
    for line in lines:
        if line.startswith("- ") or not items:
            items.append(line)
        else:
            items[-1] += " " + line.strip()
    for item in items:
        bullet = item.startswith("- ")
        # a cell (mean ± half-width) and its unit stay on one line
        glued = item.replace(" ± ", "\xa0±\xa0").replace(" %", "\xa0%")
        out += [line.replace("\xa0", " ") for line in textwrap.wrap(
            glued, 100, subsequent_indent="  " if bullet else "", break_long_words=False,
            break_on_hyphens=False)]
    return "\n".join(out) + "\n"


def _block(begin: str, end: str, body: str) -> str:
    return f"{begin}\n\n{body.rstrip()}\n\n{end}"


def blocks() -> dict[Path, list[tuple[str, str, str]]]:
    """{file: [(begin marker, end marker, the block with its markers), ...]}."""
    return {README: [(SUMMARY_BEGIN, SUMMARY_END, _block(SUMMARY_BEGIN, SUMMARY_END, summary()))],
            STUDY_DOC: [(STUDY_BEGIN, STUDY_END, _block(STUDY_BEGIN, STUDY_END, section()))],
            BENCHMARKS_DOC: [(DAG_BEGIN, DAG_END, default_dag_block())]}


def render(text: str, path: Path, parts: list[tuple[str, str, str]]) -> str:
    """`text` with each generated block between its markers replaced."""
    for begin, end, block in parts:
        start = text.find(begin)
        stop = text.find(end, start)
        if start < 0 or stop < 0:
            raise SystemExit(f"{path.relative_to(ROOT)}: no block between '{begin}' and '{end}'")
        text = text[:start] + block + text[stop + len(end):]
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true",
                    help="exit 1 if a file's generated blocks are not what this writes")
    args = ap.parse_args()
    stale = []
    for path, parts in blocks().items():
        text = path.read_text()
        new = render(text, path, parts)
        if new == text:
            continue
        stale.append(str(path.relative_to(ROOT)))
        if not args.check:
            with io.atomic_output(path) as tmp:
                tmp.write_text(new)
    if args.check and stale:
        print(f"{', '.join(stale)}: the generated blocks are not what "
              "benchmarks/readme_results.py writes (run it)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
