"""curvmem workflow: world -> model -> K-FAC factors -> eigenbases -> edits -> evaluations ->
tables, figures and an HTML report. Rules live in workflow/rules/, one file per stage; each calls
one `curvmem` command (docs/ARCHITECTURE.md, "CLI contract"), except that an edit's job makes
and evaluates it (`curvmem edit ... --then evaluate ...`, one process). See docs/workflow.md.

    snakemake --cores all                                        # the embedded default
    snakemake --cores all --configfile workflow/config/smoke.yaml
    snakemake --profile slurm --configfile workflow/config/olmo2-7b.yaml
"""

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from curvmem.plan import PlanError, check_config_file, schema_problem

min_version("8.20")

# The embedded default is used only when no --configfile is given: a config file replaces it
# entirely (a 7B config must not inherit the embedded sweeps); --config KEY=VALUE still overrides.
if not workflow.config_settings.configfiles:

    configfile: "workflow/config/default.yaml"


# Snakemake's loader keeps the last of two equal keys and says nothing: read each file again
for _file in workflow.configfiles:
    try:
        check_config_file(_file)
    except PlanError as e:
        raise WorkflowError(str(e)) from None

try:
    validate(config, "workflow/schemas/config.schema.yaml")
except WorkflowError as e:
    raise WorkflowError(
        f"invalid workflow config ({', '.join(map(str, workflow.configfiles)) or '--config'}): "
        f"{schema_problem(e)}. The schema is workflow/schemas/config.schema.yaml; docs/workflow.md "
        "explains each key."
    ) from None


include: "workflow/rules/common.smk"


report: "workflow/report/workflow.rst"


wildcard_constraints:
    domain="lm|vit",
    layer=r"\d+",
    key=r"[^/]+",


localrules:
    all,
    download_model,
    tokenize_corpus,
    fetch_texts,
    fetch_file,


rule all:
    input:
        final_targets(),
        index_marks(),  # a stale index's mark (share.smk)


include: "workflow/rules/hub.smk"
include: "workflow/rules/world.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/vision.smk"
include: "workflow/rules/factors.smk"
include: "workflow/rules/eigen.smk"
include: "workflow/rules/edit.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/harness.smk"
include: "workflow/rules/vitstudy.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/share.smk"
