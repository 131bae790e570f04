"""The rules take every path and every resource from the planner.

Each artifact path template is written once, in curvmem.plan.layout; the Snakefile and
workflow/rules/*.smk call it (`PATHS.layer_file("eigen")`, `PATHS.log(...)`), so a rule that
spells a path itself (`f"{OUT}/.../layer_{{layer}}.nc"`, a planner value joined with a path
component) is found here. And a rule's `threads:` honours the config's per-domain override
(`lm.resources.RULE.threads`) exactly as its `resources:` do (`resources_of`).
"""

from __future__ import annotations

import io
import re
import tokenize

import pytest
import yaml

from slurm_cluster import REPO, copy_repo, snakemake

RULE_FILES = [REPO / "Snakefile", *sorted((REPO / "workflow/rules").glob("*.smk"))]
# an artifact's suffix, a layer file, or the outdir's name: no rule spells one
ARTIFACT = re.compile(r"\.(nc|jsonl?|npy|safetensors|sha256|png|md|html|tsv|log|written)\b"
                      r"|layer_|\bOUT\b")
# a value joined with a path component inside an f-string: f"{x}/world", f"a/{x}"
JOINED = re.compile(r"\}/|/\{")
# files of the repository, not of the outdir (captions, environments, configs, docs)
REPOSITORY_FILE = re.compile(r"(\.\./|docs/|workflow/)[\w./-]+")
# directives whose strings are no path: a shell command (tests/test_injection.py checks it)
NOT_PATHS = {"shell"}


def _string_tokens(text: str):
    """(line, token text, directive, standalone) of each string literal; an f-string is one
    token (on Python 3.12 and later too); `standalone`: a statement of its own (a docstring)."""
    tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    fstring_start = getattr(tokenize, "FSTRING_START", None)
    fstring_end = getattr(tokenize, "FSTRING_END", None)
    breaks = {tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT,
              tokenize.ENCODING, tokenize.COMMENT}
    directive, i = None, 0
    while i < len(tokens):
        tok = tokens[i]
        before = next((t for t in reversed(tokens[:i]) if t.type not in (tokenize.COMMENT,)), None)
        at_line_start = before is None or before.type in breaks
        if tok.type == tokenize.NAME and at_line_start and i + 1 < len(tokens) \
                and tokens[i + 1].string == ":":
            directive = tok.string
        if tok.type == tokenize.STRING or tok.type == fstring_start:
            j = i
            if tok.type == fstring_start:
                while tokens[j].type != fstring_end:
                    j += 1
            literal = text.splitlines()[tok.start[0] - 1:tokens[j].end[0]]
            if len(literal) == 1:
                literal = [literal[0][tok.start[1]:tokens[j].end[1]]]
            after = tokens[j + 1] if j + 1 < len(tokens) else None
            standalone = at_line_start and (after is None or after.type in breaks)
            yield tok.start[0], "\n".join(literal), directive, standalone
            i = j
        if tok.type == tokenize.NAME and tok.string == "OUT":
            yield tok.start[0], "OUT", directive, False
        if tok.type == tokenize.NAME and tok.string == "join" and i >= 2 \
                and tokens[i - 2].string == "path":
            yield tok.start[0], "os.path.join", directive, False
        i += 1


def hand_written_paths(text: str) -> list[tuple[int, str]]:
    """(line, literal) of each path a rules file spells by hand.

    Args:
        text: a Snakefile or .smk file.

    Returns:
        Every string literal (outside docstrings and shell commands) that holds an artifact's
        suffix, `layer_` or `OUT`, every f-string joining a value with a path component, every
        literal starting with `/`, and each use of the name OUT or of os.path.join.
    """
    found = []
    for line, literal, directive, standalone in _string_tokens(text):
        if literal in ("OUT", "os.path.join"):
            found.append((line, literal))
            continue
        quotes = literal.lstrip("rRbBuUfF")
        if directive in NOT_PATHS or (standalone and quotes.startswith(('"""', "'''"))):
            continue
        body = REPOSITORY_FILE.sub("", quotes.strip("\"'"))
        is_fstring = "f" in literal[:len(literal) - len(quotes)].lower()
        if ARTIFACT.search(body) or (is_fstring and JOINED.search(body)) or body.startswith("/"):
            found.append((line, literal))
    return found


def test_no_rule_spells_a_path():
    found = {path.name: hand_written_paths(path.read_text()) for path in RULE_FILES}
    assert {name: hits for name, hits in found.items() if hits} == {}


PLANTED = [
    'f"{OUT}/lm/eval/{{key}}/vit.json",',
    '"results/smoke/lm/factors/main-x/layer_{layer}.nc",',
    "f\"{model_dir('lm')}/world\",",
    'os.path.join(PLAN.out, "tokenizer"),',
    'PLAN.out + "/report.html",',
    'f"{PATHS.study_dir()}/models/{{study_model}}",',
]


@pytest.mark.parametrize("line", PLANTED)
def test_a_planted_path_is_found(line):
    """Each kind of hand-written path, planted in a real rule, is found (the scan can fail)."""
    text = (REPO / "workflow/rules/eigen.smk").read_text()
    assert hand_written_paths(text) == []
    planted = text.replace("        PATHS.layer_file(\"eigen\"),", f"        {line}")
    assert planted != text
    assert [literal for _, literal in hand_written_paths(planted)] != []


def test_what_is_no_path_passes():
    """Docstrings, shell commands, captions and job names are not paths of the outdir."""
    text = '''"""Writes OUT/analysis/x.json and layer_L.nc."""


rule x:
    output:
        report(PATHS.compare()["figure"], caption="../report/compare.rst"),
    log:
        PATHS.log("lm/evaluate/{key}"),
    shell:
        "curvmem collect --shard {wildcards.k:q}/{wildcards.n:q} > {log:q} 2>&1"
'''
    assert hand_written_paths(text) == []


# --------------------------------------------------------------------------- threads


# per-domain threads of each resource rule (distinct, so each job shows whose it took); the
# top level asks 2 of every rule, which a rule ignoring the domain's override would take
DOMAIN_THREADS = {"lm": {"collect": 3, "merge": 4, "eigen": 5, "evaluate": 6, "bsn": 7,
                         "edit": 8, "analysis": 9},
                  "vit": {"collect": 10, "eigen": 11, "evaluate": 12, "edit": 13,
                          "analysis": 14}}
# {workflow rule: (resource rule(s) of its job, its domain: a name, or the `domain` wildcard)}
RULE_RESOURCES = {"collect": ("collect", None), "collect_shard": ("collect", None),
                  "merge": ("merge", None), "eigen": ("eigen", None),
                  "evaluate_lm": ("evaluate", "lm"), "evaluate_lm_base": ("evaluate", "lm"),
                  "evaluate_vit": ("evaluate", "vit"), "bsn": ("bsn", "lm"),
                  "export_edit": ("edit", "lm"), "harness": ("evaluate", "lm"),
                  "edit_evaluate_lm": (("edit", "evaluate"), "lm"),
                  "edit_evaluate_vit": (("edit", "evaluate"), "vit"),
                  "analysis_lm_model": ("analysis", "lm"), "analysis_vit": ("analysis", "vit")}


def test_threads_take_the_per_domain_override(tmp_path):
    """Every job whose resources honour `{domain}.resources.RULE` takes its threads from there
    too (the dry run's `threads:` per job): both domains, sharded factors, the harness and the
    analyses."""
    repo = copy_repo(tmp_path / "repo")
    cfg = yaml.safe_load((repo / "workflow/config/default.yaml").read_text())
    cfg["outdir"] = "results/threads"
    cfg["threads"] = 1
    cfg["resources"] = {rule: {"threads": 2} for d in DOMAIN_THREADS.values() for rule in d}
    for domain, threads in DOMAIN_THREADS.items():
        cfg[domain]["resources"] = {rule: {"threads": n} for rule, n in threads.items()}
    cfg["lm"]["factors"]["shards"] = 2  # collect_shard and merge
    cfg["lm"]["harness"] = {"tasks": ["arc_easy"], "edits": ["kfac-L2-rho0.6"]}
    (repo / "threads.yaml").write_text(yaml.safe_dump(cfg))
    out = snakemake(repo, "-n", "--cores", "64", "--configfile=threads.yaml").stdout
    seen = set()
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        if not rule or rule.group(1) not in RULE_RESOURCES:
            continue
        name = rule.group(1)
        wanted, domain = RULE_RESOURCES[name]
        domain = domain or re.search(r"wildcards: .*domain=(\w+)", block).group(1)
        threads = re.search(r"^\s+threads: (\d+)", block, flags=re.M)
        expected = max(DOMAIN_THREADS[domain][r] for r in (
            wanted if isinstance(wanted, tuple) else (wanted,)))
        assert (int(threads.group(1)) if threads else 1) == expected, (name, domain, block)
        seen.add((name, domain))
    assert {name for name, _ in seen} == set(RULE_RESOURCES)
    assert {d for name, d in seen if name in ("collect", "eigen")} == {"lm", "vit"}
