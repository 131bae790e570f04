"""Write dvc.yaml: one DVC stage per (config under workflow/config/, artifact kind).

    python workflow/scripts/dvc_stages.py           # rewrite dvc.yaml
    python workflow/scripts/dvc_stages.py --check   # exit 1 if dvc.yaml is not what this writes

Each stage `<config>-<kind>` runs `snakemake all_<kind>` for its config and tracks that kind's
paths (`curvmem.plan.Plan.shared_outputs`): summaries are DVC metrics, figures DVC (image)
plots. Its dependencies are narrowed to what the kind is computed from: the upstream kinds'
outputs, the config keys it reads (DVC params of the config file), the rule files of its rules,
and the curvmem modules its commands import (the static import closure of the modules named in
SOURCES). So adding a rho leaves the factors and eigen stages up to date, and a change to the
report code leaves everything but the summaries and the report up to date.
tests/test_dvc.py keeps dvc.yaml in sync with this script.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

import yaml
from snakemake.utils import validate

from curvmem.plan import KINDS, Plan

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
SCHEMA = "workflow/schemas/config.schema.yaml"
DEFAULT = "default"  # the embedded default: run without --configfile, as the README does

# Every stage: the Snakefile, the glue, the planner (it names every path and flag) and the schema.
COMMON = ["Snakefile", "workflow/rules/common.smk", "workflow/rules/share.smk", SCHEMA,
          *sorted(p.relative_to(ROOT).as_posix() for p in (SRC / "curvmem/plan").glob("*.py"))]
RULES = {
    "models": ["world.smk", "train.smk", "vision.smk"],
    "factors": ["factors.smk"],
    "eigen": ["eigen.smk"],
    "edits": ["edit.smk", "baselines.smk"],
    "evaluations": ["evaluate.smk", "edit.smk"],  # an edit's job evaluates it
    "summaries": ["report.smk", "baselines.smk"],
    "analyses": ["analysis.smk"],
    "report": ["report.smk"],
}
EXTRA = {"report": ["workflow/report"]}  # the report's captions
# The curvmem modules the kind's commands run, per domain ("*": both). A cli module counts with
# its module-level imports only (its commands import the library lazily, per command); a library
# module with everything it imports.
SOURCES = {
    ("models", "lm"): ["curvmem.cli.lm", "curvmem.world.lm", "curvmem.model.lm"],
    ("models", "vit"): ["curvmem.cli.vision", "curvmem.world.images", "curvmem.model.vit"],
    ("factors", "*"): ["curvmem.cli.core", "curvmem.factors"],
    ("eigen", "*"): ["curvmem.cli.core", "curvmem.eigen"],
    ("edits", "*"): ["curvmem.cli.core", "curvmem.edit", "curvmem.schema"],
    # the job that makes a K-FAC or SVD edit evaluates it (edit.smk)
    ("edits", "lm"): ["curvmem.cli.lm", "curvmem.evaluate.lm"],
    ("edits", "vit"): ["curvmem.cli.vision", "curvmem.evaluate.vit"],
    ("edits", "bsn"): ["curvmem.cli.baselines", "curvmem.edit.bsn"],
    ("evaluations", "lm"): ["curvmem.cli.lm", "curvmem.evaluate.lm", "curvmem.edit"],
    ("evaluations", "vit"): ["curvmem.cli.vision", "curvmem.evaluate.vit"],
    ("summaries", "lm"): ["curvmem.cli.lm", "curvmem.report.lm", "curvmem.report.figures",
                          "curvmem.cli.baselines", "curvmem.report.compare"],
    ("summaries", "vit"): ["curvmem.cli.vision", "curvmem.report.vit"],
    ("analyses", "lm"): ["curvmem.cli.analyze", "curvmem.cli.core", "curvmem.factors",
                         "curvmem.eigen", "curvmem.report.lm"]
    + [f"curvmem.analysis.{m}" for m in ("activation_ratio", "task_interaction", "spectra",
                                         "per_example", "stability", "stress")],
    ("report", "*"): ["curvmem.cli.lm", "curvmem.report.readme"],
}
# The config keys (DVC params of the config file) each kind reads, per domain
PARAMS = {
    "models": ["model", "data"],
    "factors": ["model", "data", "factors", "control_factors"],
    "eigen": [],
    "edits": ["model", "data", "edits", "evaluations"],
    "evaluations": ["model", "data", "edits", "evaluations"],
    "summaries": ["edits", "evaluations"],
    "analyses": ["analysis"],
    "report": [],
}
# The kinds whose outputs a kind reads
UPSTREAM = {
    "models": [],
    "factors": ["models"],
    "eigen": ["factors"],
    "edits": ["models", "eigen"],
    "evaluations": ["models", "edits"],
    "summaries": ["evaluations"],
    "analyses": ["models", "eigen", "edits", "summaries"],
    "report": ["summaries", "analyses"],
}


def module_file(name: str) -> Path | None:
    """src/curvmem/a/b.py or src/curvmem/a/b/__init__.py for curvmem.a.b (None: not a module)."""
    base = SRC.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported(path: Path, module_level: bool) -> set[str]:
    """The curvmem modules a file imports (also `from curvmem.x import submodule`)."""
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in (tree.body if module_level else ast.walk(tree)):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.split(".")[0] == "curvmem"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "curvmem":
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names
                      if module_file(f"{node.module}.{a.name}")}
    return names


def source_closure(roots: list[str]) -> list[str]:
    """The files of these modules, their packages' __init__ files and, transitively, of what
    they import (cli modules: module-level imports only), relative to the repository root."""
    seen, todo, files = set(), list(roots), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        if path is None:
            raise SystemExit(f"dvc_stages.py: {name} is no module under src/ (see SOURCES)")
        files.add(path.relative_to(ROOT).as_posix())
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # packages run __init__
        if name != "curvmem.cli":  # the dispatcher imports every command group to register it
            todo += sorted(imported(path, module_level=name.startswith("curvmem.cli.")))
    return sorted(files)


def load_config(path: Path) -> tuple[dict, dict]:
    """(the file as written, the config with the schema's defaults filled in)."""
    raw = yaml.safe_load(path.read_text())
    full = yaml.safe_load(path.read_text())
    validate(full, str(ROOT / SCHEMA))
    return raw, full


def user_files(plan: Plan, kind: str) -> list[str]:
    """Inputs of a pretrained model's kind that are the user's files, not artifacts."""
    files = []
    for d in plan.domains:
        if plan.embedded(d):
            continue
        if kind == "factors" and plan.factor_sets[d]:
            files.append(plan.domain_data(d))
        if kind == "edits" and d == "lm" and plan.edit_keys("lm", ["bsn"]):
            files += [plan.lm_data("forget"), plan.lm_data("retain")]
        if kind in ("edits", "evaluations"):  # an edit's job evaluates it (edit.smk)
            files += (plan.lm_eval_inputs(plan.base["lm"]) if d == "lm" else [plan.vit_data()])
    return list(dict.fromkeys(files))


def stages_of(path: Path) -> dict:
    """The stages of one config; of a multi-seed study (`seeds`), those of each seed's run."""
    raw, config = load_config(path)
    if "seeds" not in config:
        return run_stages(path, raw, config, path.stem, "")
    stages = {}
    for seed in config["seeds"]:
        stages.update(run_stages(path, raw, {**config, "seed": seed}, f"{path.stem}-seed{seed}",
                                 f" --config seed={seed}"))
    return stages


def run_stages(path: Path, raw: dict, config: dict, name: str, seed_arg: str) -> dict:
    plan = Plan(config)
    tracked = plan.shared_outputs()
    config_arg = "" if path.stem == DEFAULT else f" --configfile={path.relative_to(ROOT).as_posix()}"
    has_bsn = "lm" in plan.domains and bool(plan.edit_keys("lm", ["bsn"]))
    stages = {}
    for kind in KINDS:
        if kind not in tracked:
            continue
        keys = [f"{d}.{key}" for d in plan.domains for key in PARAMS[kind]
                if key in (raw.get(d) or {})]
        roots = [m for (k, d), mods in SOURCES.items() if k == kind
                 and (d == "*" or d in plan.domains or (d == "bsn" and has_bsn)) for m in mods]
        upstream = [p for k in UPSTREAM[kind] for p in tracked.get(k, [])]
        stage = {
            "cmd": f"snakemake --cores all{config_arg} all_{kind}{seed_arg}",
            "deps": COMMON + [f"workflow/rules/{r}" for r in RULES[kind]] + EXTRA.get(kind, [])
            + source_closure(roots) + user_files(plan, kind) + upstream,
        }
        if keys:
            stage["params"] = [{path.relative_to(ROOT).as_posix(): keys}]
        # persist: DVC must not delete the outputs before the command runs; snakemake decides
        # what is up to date (and keeps content-keyed old results)
        outs = [p for p in tracked[kind] if not p.endswith((".json", ".png"))
                or kind != "summaries"]
        stage["outs"] = [{p: {"persist": True}} for p in outs]
        if kind == "summaries":
            stage["metrics"] = [{p: {"persist": True}} for p in tracked[kind]
                                if p.endswith(".json")]
            stage["plots"] = [{p: {"persist": True}} for p in tracked[kind] if p.endswith(".png")]
        stages[f"{name}-{kind}"] = stage
    return stages


HEADER = """\
# Generated by workflow/scripts/dvc_stages.py from workflow/config/*.yaml and curvmem.plan; do not
# edit (tests/test_dvc.py checks it is in sync). One stage per (config, artifact kind); each runs
# `snakemake all_<kind>` for its config. docs/workflow.md, "Sharing with DVC":
#     dvc repro smoke-report && dvc push -d smoke-report      # produce and share a whole config
#     dvc pull -d smoke-report && snakemake --touch --cores 1 --configfile=workflow/config/smoke.yaml
#     dvc pull results/smoke/lm/eigen/<key>/layer_2.nc          # one layer (results/smoke/index.json)
"""


def render() -> str:
    stages = {}
    for path in sorted((ROOT / "workflow/config").glob("*.yaml")):
        stages.update(stages_of(path))
    return HEADER + yaml.safe_dump({"stages": stages}, sort_keys=False, width=100)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="only compare: exit 1 when dvc.yaml differs from what would be written")
    args = parser.parse_args(argv)
    text, target = render(), ROOT / "dvc.yaml"
    if args.check:
        if target.read_text() != text:
            print("dvc.yaml is out of date: run python workflow/scripts/dvc_stages.py",
                  file=sys.stderr)
            return 1
        return 0
    target.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
