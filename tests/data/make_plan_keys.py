"""Write tests/data/plan_keys.json: every shipped config's content keys, paths and flags.

    python tests/data/make_plan_keys.py           # rewrite plan_keys.json
    python tests/data/make_plan_keys.py --check   # exit 1 if plan_keys.json is not what this writes

The file pins what the planner (curvmem.plan) gives each config under workflow/config/ (its
defaults filled in by the workflow's schema): tests/test_plan.py checks the planner against it,
and that this script writes it byte for byte. Rewrite it only for a change that should give
users other keys or paths (say so in the commit): an unchanged file is what proves that a
refactoring changed nothing, so an existing results/ directory is reused, not recomputed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml
from snakemake.utils import validate

from curvmem.plan import Plan

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).with_name("plan_keys.json")
CONFIGS = sorted(p.stem for p in (ROOT / "workflow/config").glob("*.yaml"))


def config(name: str) -> dict:
    """A shipped config as the workflow sees it (the schema's defaults filled in).

    Args:
        name: its file name under workflow/config/, without `.yaml`.

    Returns:
        The config.
    """
    cfg = yaml.safe_load((ROOT / f"workflow/config/{name}.yaml").read_text())
    validate(cfg, str(ROOT / "workflow/schemas/config.schema.yaml"))  # fills the defaults
    return cfg


def record(plan: Plan) -> dict:
    """What plan_keys.json holds for one config.

    Args:
        plan: the config's plan.

    Returns:
        Its outdir, domains, per domain the model and factor keys, edits, flags, paths and
        evaluation files, the ViT study's models and flags, and the final targets (JSON-able).
    """
    rec = {"outdir": plan.out, "domains": plan.domains}
    for d in plan.domains:
        rec[d] = {
            "model_key": plan.model_key(d), "base": plan.base[d], "model_arg": plan.model_arg(d),
            "factor_sets": plan.factor_sets[d], "edits": plan.edits[d],
            "collect_flags": {k: plan.collect_flags(d, k) for k in plan.factor_sets[d]},
            "edit_paths": {k: plan.edit_path(d, k) for k in plan.edits[d]},
            "report_entries": plan.report_entries(d),
        }
        flags_, inputs = {}, {}
        for k, s in plan.edits[d].items():
            if s["method"] == "bsn":
                flags_[k] = plan.bsn_flags(k)
            else:
                flags_[k] = plan.edit_flags(d, k)
                inputs[k] = plan.edit_inputs(d, k)
        rec[d]["edit_flags"] = flags_
        if inputs:
            rec[d]["edit_inputs"] = inputs
        if d == "lm":
            rec[d]["eval_files"] = {k: plan.lm_eval_files(k) for k in plan.eval_keys("lm")}
    if plan.study():  # the ViT study came after the file was first recorded
        rec["vit_study"] = {"models": plan.study_models(), "data": plan.study_data_flags(),
                            "cell": plan.study_cell_flags(),
                            "train": {k: plan.study_train_flags(k) for k in plan.study_models()}}
    # the analyses' outputs, the README tables and the index came after it too; the rest is as
    # first recorded
    later = plan.analysis_targets() + [plan.readme_tables(), plan.index_file()]
    rec["final_targets"] = [t for t in plan.final_targets() if t not in later]
    return json.loads(json.dumps(rec))


def render() -> str:
    """plan_keys.json's text: every shipped config's record, keys sorted."""
    gold = {name: record(Plan(config(name))) for name in CONFIGS}
    return json.dumps(gold, indent=1, sort_keys=True) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="only compare: exit 1 when plan_keys.json differs from what would "
                             "be written")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if GOLDEN.read_text() != text:
            print(f"{GOLDEN} differs from what the planner gives: run python "
                  "tests/data/make_plan_keys.py if the change is meant", file=sys.stderr)
            return 1
        return 0
    GOLDEN.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
