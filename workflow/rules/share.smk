"""Sharing: the index of human labels -> content-keyed paths, and one target rule per artifact
kind (`snakemake all_eigen`), which the DVC stages of dvc.yaml run (docs/workflow.md)."""

from curvmem.plan import KINDS

ARTIFACTS = PLAN.artifacts()


# Cheap and local: the index is the plan written out. Git holds it, so a fresh clone has it with
# no Snakemake metadata, and the params trigger alone would never rewrite it: the config files
# are its input (an edited config is newer), its text a param (for --config overrides).
rule index:
    input:
        [os.path.relpath(f) for f in workflow.configfiles],
    output:
        PLAN.index_file(),
    params:
        text=PLAN.index_text(),
    log:
        f"{OUT}/logs/index.log",
    localrule: True
    run:
        write_index(output[0], params.text, log[0])


for _kind in KINDS:

    rule:
        name:
            f"all_{_kind}"
        input:
            ARTIFACTS.get(_kind, []),
        localrule: True
