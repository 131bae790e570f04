"""The workflow's planner: turn a (validated) workflow config into the artifacts to build.

Torch-free (standard library and `curvmem.presets` only), so Snakemake imports it at parse time;
`workflow/rules/common.smk` keeps only the glue (wildcards -> these methods). Nothing here computes
anything about models: it only names files, derives content keys and spells `curvmem` flags.

    layout       where every artifact lies under the outdir: each path template once (`Layout`)
    common       PlanError, content hashes (`digest`), the one quoting helper (`flags`), slugs
    config       the checks the schema cannot make; the seeds of a multi-seed study
    sweeps       a config's sweeps expanded into labelled edit specs
    planner      `Plan`, assembled from one part per concern:
      models       base models, hub snapshots, data files
      edits        factor sets and edits
      evaluations  evaluations, the reports reading them, lm-evaluation-harness
      analyses     the mechanism analyses
      study        the ViT study
      targets      resources, targets, the multi-seed report, artifact kinds, the index

Keys are content hashes: a factor set's key covers the model config and the factor settings; an
edit's key covers its spec, its factor set's key and the model config. A changed spec therefore
lands in a new file (old results stay), and an unchanged one is never recomputed.
tests/data/plan_keys.json pins the keys of every shipped config (tests/data/make_plan_keys.py
writes it).
"""

from curvmem.plan.analyses import ANALYSES, ANALYSIS_DATA, ANALYSIS_JOBS, VIT_ANALYSES
from curvmem.plan.common import NEVER, PlanError, digest, flags, one_of
from curvmem.plan.config import (
    SEEDED_SECTIONS,
    check_config_file,
    check_name,
    check_outdir,
    check_path,
    configfile_names,
    model_layers,
    schema_problem,
    seed_outdirs,
    seeded_config,
)
from curvmem.plan.evaluations import REPORT_LM_NEEDS
from curvmem.plan.layout import LAYER_FILE, Layout, layer_file_name, sidecar_of
from curvmem.plan.planner import Plan
from curvmem.plan.study import STUDY_EXPERIMENTS
from curvmem.plan.sweeps import MADE_WITH_EVALUATION, RANDOM_KEEPS, method_tag, sweep_specs
from curvmem.plan.targets import KINDS

__all__ = [
    "ANALYSES", "ANALYSIS_DATA", "ANALYSIS_JOBS", "KINDS", "LAYER_FILE", "MADE_WITH_EVALUATION",
    "NEVER", "RANDOM_KEEPS", "REPORT_LM_NEEDS", "SEEDED_SECTIONS", "STUDY_EXPERIMENTS",
    "VIT_ANALYSES", "Layout", "Plan", "PlanError", "check_config_file", "check_name",
    "check_outdir", "check_path", "configfile_names", "digest", "flags", "layer_file_name",
    "method_tag", "model_layers", "one_of", "schema_problem", "seed_outdirs", "seeded_config",
    "sidecar_of", "sweep_specs",
]
