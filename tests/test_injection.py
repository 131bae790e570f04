"""Config values never run as shell code: every value a rule's command gets is one literal word.

A config whose every string that can hold one (outdir, data paths, `hf:` specs and URLs, model
directories, hub ids and revisions, module names, sweep, evaluation, data and factor-variant
names, report labels, harness tasks) holds a space, both quotes, `;`, `$()` and backticks: the
dry run prints every job's command (`snakemake -n -p`), and each command must hold no `$` or
backtick a shell would expand, and split (as sh splits it) into words in which each hostile value
is whole. The rules quote plain values with `:q`; pre-rendered flag strings come from the plan's
one quoting helper (curvmem.plan.flags). A real smoke run under such an outdir is the slow test.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from pathlib import Path

import pytest
import yaml

from curvmem.plan import REPORT_LM_NEEDS
from slurm_cluster import REPO, SMOKE, copy_repo, dry_run_jobs, snakemake

# the flag strings a rule may put in its command unquoted: each is built by curvmem.plan.flags
PRE_RENDERED = {"params.args", "params.runs", "params.edit", "params.load", "params.entries",
                "params.columns", "params.config",
                "params.command"}  # a curvmem command name and its plan-quoted flags (ViT study)


def hostile(tag: str) -> str:
    """A value that runs `touch pwned-TAG` twice if a shell ever reads it unquoted, and that
    splits into several words if a command leaves it unquoted. No '/' nor braces (a name of the
    config may hold neither: the plan refuses them)."""
    return f"{tag} a'b\"c;d $(touch pwned-{tag})e`touch pwned-{tag}`f"


def shell_expansions(command: str) -> list[int]:
    """Offsets of each `$` and backtick a POSIX shell would expand: outside single quotes."""
    found, single, double, i = [], False, False, 0
    while i < len(command):
        c = command[i]
        if single:
            single = c != "'"
        elif c == "\\":
            i += 1
        elif c == "'" and not double:
            single = True
        elif c == '"':
            double = not double
        elif c in "$`":
            found.append(i)
        i += 1
    return found


def words_of(command: str) -> list[str]:
    """The command's words as sh splits them, with each `analyze batch --run` string replaced
    by its own words (curvmem splits those itself, with shlex) and each `edit --spec` by its
    module names (a JSON {layer: {module: value}})."""
    words, out = shlex.split(command), []
    for prev, w in zip([""] + words, words):
        if prev == "--run" and w.split()[0] not in ("memorization", "perplexity", "tasks",
                                                    "coherence"):
            out += words_of(w)
        elif prev == "--spec":
            out += [module for layer in json.loads(w).values() for module in layer]
        else:
            out.append(w)
    return out


def hostile_config(root: Path) -> dict:
    """The smoke config with every string value hostile: a pretrained LM in a local directory
    on data files of the user's (made here), public sources, a ViT from the hub, a multi-seed
    study with analyses, the harness and the ViT study."""
    cfg = yaml.safe_load((REPO / SMOKE).read_text())
    data = root / f"data {hostile('datadir')}"
    data.mkdir(parents=True)
    lm = cfg["lm"]
    lm["model"] = {"source": "pretrained", "id": str(root / f"model {hostile('lmmodel')}")}
    for name in list(lm["data"]):
        path = data / f"{name}-{hostile('data')}.jsonl"
        path.write_text("{}\n")
        lm["data"][name] = str(path)
    del lm["data"]["curvature"]  # factors on the corpus, which is pre-tokenized from the hub
    lm["data"]["corpus"] = f"hf:someone/{hostile('corpus')}"
    lm["data"]["forget_validation"] = f"hf:someone/{hostile('hfspec')}:train#text"
    lm["data"]["control_quotes"] = {"url": f"file:///srv/{hostile('url')}.jsonl",
                                    "sha256": "0" * 64}
    lm["data"][hostile("datakey")] = lm["data"].pop("untargeted_long")
    lm["evaluations"]["memorization_untargeted_long"]["data"] = hostile("datakey")
    lm["evaluations"][hostile("evaluation")] = {"kind": "memorization", "data": "forget"}
    module = f"mlp.{hostile('module')}"
    lm["factors"]["modules"] = ["mlp.gate_proj", module]
    lm["factor_variants"] = {hostile("variant"): {"seed": 5}}
    sweep = {"method": "kfac", "layers": [[2]], "modules": ["mlp.gate_proj", module],
             "rho": [0.6, {module: 0.5, "mlp.gate_proj": 0.9}]}
    lm["edits"] = {hostile("sweep"): sweep,
                   "variant": {**sweep, "rho": [0.7], "factors": hostile("variant")},
                   "svd": {"method": "svd", "layers": [[2]], "modules": [module],
                           "svd_drop": [0.5]},
                   "bsn": lm["edits"]["bsn"]}
    lm["report"] = {"labels": {"forget": hostile("label")}}
    label = f"{hostile('sweep')}-L2-rho0.6"
    lm["harness"] = {"tasks": [hostile("task")], "local_tasks": "tasks", "edits": [label]}
    lm["analysis"] = {"layers": [2], "modules": [module],
                      "stability": {"layer": 2, "sizes": [8], "rho": 0.5},
                      "stress": {"max_per_kind": 1, "t": 2}}
    vit = cfg["vit"]
    vit["model"] = {"source": "pretrained", "id": f"someone/{hostile('hubid')}",
                    "revision": hostile("revision")}
    vit_data = data / f"vit-{hostile('vitdata')}.safetensors"
    vit_data.write_bytes(b"")
    vit["data"] = str(vit_data)
    vit["factors"]["modules"] = [f"mlp.{hostile('vitmodule')}"]
    for s in vit["edits"].values():
        s["modules"] = vit["factors"]["modules"]
    cfg["vit_study"] = {"data": {"seed": 0}, "grid": {"g": {"seed": [0]}},
                        "cell": {"images": ["train"], "kfac_layers": [[0]], "rho": [0.5],
                                 "svd_layers": [[0]], "svd_drop": [0.5],
                                 "modules": [f"mlp.{hostile('cellmodule')}"]}}
    cfg["outdir"] = f"results/{hostile('outdir')}"
    cfg["seeds"] = [0, 1]  # seed 1's files are there: the target `seeds` writes their report
    seed1 = Path(root / cfg["outdir"] / "seed-1")
    for name in ["lm_summary.json", "vit_summary.json",
                 *(f"analysis/{n}.json" for n in ("activation_ratio", "task_interaction",
                                                  "spectra", "per_example", "stability",
                                                  "stress"))]:
        (seed1 / name).parent.mkdir(parents=True, exist_ok=True)
        (seed1 / name).write_text("{}\n")
    return cfg


def embedded_config() -> dict:
    """The smoke config as it is (embedded models: world, tokenizer, training, sharded factors)
    with a hostile outdir, sweep names, evaluation names and report labels."""
    cfg = yaml.safe_load((REPO / SMOKE).read_text())
    cfg["outdir"] = f"results/{hostile('outdir')}"
    for d in ("lm", "vit"):
        cfg[d]["edits"] = {f"{hostile('sweep')}-{k}": s for k, s in cfg[d]["edits"].items()}
    cfg["lm"]["evaluations"][hostile("evaluation")] = {"kind": "perplexity", "data": "heldout"}
    cfg["lm"]["report"] = {"labels": {"control": hostile("label")}}
    return cfg


TAGS = ["datadir", "lmmodel", "data", "corpus", "hfspec", "url", "evaluation", "module", "variant",
        "sweep", "label", "task", "vitdata", "vitmodule", "cellmodule", "outdir", "hubid",
        "revision"]
SLUGGED = ["datakey"]  # a data key reaches paths only as a slug (`-` for each other character)


@pytest.fixture(scope="module", params=["pretrained", "embedded"])
def commands(request, tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("inject") / "repo")
    cfg = hostile_config(repo) if request.param == "pretrained" else embedded_config()
    (repo / "hostile.yaml").write_text(yaml.safe_dump(cfg))
    targets = ["all", "seeds"] if request.param == "pretrained" else []
    out = snakemake(repo, "-n", "-p", "--configfile=hostile.yaml", *targets).stdout
    rules = re.findall(r"^(?:local)?rule (\w+):", out, flags=re.M)
    lines = [line.removeprefix("Shell command: ") for line in out.splitlines()
             if line.startswith("Shell command: ") and line != "Shell command: None"]
    return repo, rules, lines, request.param


def check_every_kind_of_rule_is_planned(rules, lines, kind):
    """The hostile config reaches every rule that runs a command (so every command is checked)."""
    want = {"collect", "eigen", "edit_evaluate_lm", "edit_evaluate_vit", "bsn", "evaluate_lm",
            "evaluate_lm_base", "evaluate_vit", "report_lm", "report_vit", "compare",
            "readme_tables", "report_html"}
    want |= {"download_model", "tokenize_corpus", "fetch_texts", "fetch_file", "seeds_report",
             "export_edit", "harness_tasks", "harness", "analysis_lm_model", "analysis_lm_sweep",
             "analysis_lm_stability", "vit_study_data", "vit_study_train", "vit_study_cell",
             "report_vit_study"} if kind == "pretrained" else {
        "world", "tokenizer", "train_lm", "vision_data", "train_vit", "collect_shard", "merge"}
    assert want <= set(rules), sorted(want - set(rules))
    assert len(lines) >= len(want)


def test_no_command_holds_anything_a_shell_would_expand(commands):
    _, _, lines, _ = commands
    for line in lines:
        assert shell_expansions(line) == [], line


def test_each_hostile_value_is_whole_in_one_word(commands):
    repo, rules, lines, kind = commands
    check_every_kind_of_rule_is_planned(rules, lines, kind)
    assert list(repo.rglob("pwned*")) + list(Path.cwd().glob("pwned*")) == []
    words = [w for line in lines for w in words_of(line)]
    tags = TAGS if kind == "pretrained" else ["outdir", "sweep", "evaluation", "label"]
    for tag in tags + SLUGGED:
        h, payload = hostile(tag), f"$(touch pwned-{tag})"
        for w in words:  # a word holding a piece of the value holds all of it
            assert w.count(payload) == w.count(f"`touch pwned-{tag}`") == w.count(h), (tag, w)
        if tag in tags:
            assert any(h in w for w in words), f"{tag} reaches no command"
    if kind == "embedded":
        assert any(w.startswith(f"control={hostile('label')}") for w in words)
        return
    # plain values arrive as exactly one word: the model directory, the data files, a label
    cfg_words = set(words)
    assert any(w.endswith(f"model {hostile('lmmodel')}") for w in cfg_words)
    assert any(w.startswith(f"forget={hostile('label')}") for w in cfg_words)
    assert f"mlp.gate_proj,mlp.{hostile('module')}" in cfg_words


def test_every_rule_quotes_its_plain_values():
    """Each `{...}` in a rule's shell command is `:q` quoted, or a flag string of the plan."""
    unquoted = []
    for path in sorted((REPO / "workflow/rules").glob("*.smk")):
        lines, shell, indent = path.read_text().splitlines(), False, 0
        for n, line in enumerate(lines, 1):
            text = line.strip()
            if text == "shell:":
                shell, indent = True, len(line) - len(line.lstrip())
                continue
            if shell and text.startswith('"') and len(line) - len(line.lstrip()) > indent:
                unquoted += [f"{path.name}:{n}: {{{f}}}" for f in re.findall(r"\{([^{}]+)\}", text)
                             if not f.endswith(":q") and f not in PRE_RENDERED]
            else:
                shell = False
    assert unquoted == []


@pytest.mark.slow
def test_a_smoke_run_under_a_hostile_outdir_writes_there_and_runs_no_payload(tmp_path):
    """The smoke DAG (language model only: the same commands of the vision half are checked by
    the dry run) under an outdir, and so on data paths, holding a space, a quote, `$(touch
    pwned)` and a backtick: it finishes, every file lands under the literal outdir, no payload
    runs, and a second run has nothing to do."""
    repo = copy_repo(tmp_path / "repo")
    before = {p.name for p in (repo / "results").iterdir()}
    cfg = yaml.safe_load((repo / SMOKE).read_text())
    del cfg["vit"]  # and the smallest language-model DAG: one K-FAC edit, what report-lm reads
    cfg["lm"]["factors"]["shards"] = 1
    del cfg["lm"]["edits"]["bsn"]
    cfg["lm"]["evaluations"] = {n: e for n, e in cfg["lm"]["evaluations"].items()
                                if n in REPORT_LM_NEEDS}
    cfg["outdir"] = "results/smoke it's $(touch pwned) `touch pwned`"
    (repo / "hostile.yaml").write_text(yaml.safe_dump(cfg))
    t0 = time.time()
    snakemake(repo, "--cores", "2", "--configfile=hostile.yaml")
    seconds = time.time() - t0
    out = repo / cfg["outdir"]
    for name in ("lm_summary.json", "compare.png", "report.html", "index.json"):
        assert (out / name).stat().st_size > 0, name
    # nothing beside the outdir (a space once sent a job's output to a stray sibling file)
    assert {p.name for p in (repo / "results").iterdir()} - before == {Path(cfg["outdir"]).name}
    assert list(repo.rglob("pwned")) == [] and not Path("pwned").exists()
    assert dry_run_jobs(repo, "--configfile=hostile.yaml") == {}
    print(f"hostile smoke run: {seconds:.0f} s")
