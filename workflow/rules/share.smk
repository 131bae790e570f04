"""Sharing: the index of human labels -> content-keyed paths, and one target rule per artifact
kind (`snakemake all_eigen`), which the DVC stages of dvc.yaml run (docs/workflow.md)."""

from curvmem.plan import KINDS

ARTIFACTS = PLAN.artifacts()


# Cheap and local: the index is the plan written out, and git holds it. It is written exactly
# when its text is not the plan's (Plan.index_stale): no input file, so no file time reruns it
# (a checkout gives files the times of its own order), and its text is no param, so neither can
# Snakemake's metadata (a clone has none; a copy may hold another run's). A stale index adds a
# second output named by the plan's digest, not there yet, which `all` (and the target `index`)
# asks for, so the job runs (write_index). `snakemake index` rewrites a stale index alone.
rule index:
    input:
        owner=outdir_owned,
    output:
        index=PLAN.index_file(),
        written=index_marks(),
    log:
        PATHS.log("index"),
    localrule: True
    run:
        write_index(output.index, output.written, log[0])


for _kind in KINDS:

    rule:
        name:
            f"all_{_kind}"
        input:
            ARTIFACTS.get(_kind, []),
        localrule: True
