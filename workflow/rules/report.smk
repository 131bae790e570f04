"""Tables, figures and the HTML report (`snakemake --report`, run as the DAG's last job)."""

if "lm" in DOMAINS:

    rule report_lm:
        input:
            PLAN.report_inputs("lm"),
            owner=outdir_owned,
        output:
            summary=report(PATHS.lm_report()["summary"], caption="../report/lm_summary.rst",
                           category="Language model", subcategory="Summary"),
            table=report(PATHS.lm_report()["table"], caption="../report/lm_table.rst",
                         category="Language model", subcategory="Summary"),
            figure=report(PATHS.lm_report()["figure"], caption="../report/lm_figure.rst",
                          category="Language model", subcategory="Summary"),
            sweep=report(PATHS.lm_report()["sweep"], caption="../report/lm_sweep.rst",
                         category="Language model", subcategory="Summary"),
        params:
            entries=report_entries("lm"),
            columns=PLAN.report_lm_flags(),
        log:
            PATHS.log("lm/report_lm"),
        benchmark:
            PATHS.benchmark("lm/report_lm")
        conda:
            "../envs/curvmem.yaml"
        resources:
            **resources_of("report"),
        shell:
            "curvmem report-lm {params.entries} {params.columns} --out {output.summary:q}"
            " --table {output.table:q}"
            " --figure {output.figure:q} --sweep-figure {output.sweep:q} > {log:q} 2>&1"

if "vit" in DOMAINS:

    rule report_vit:
        input:
            PLAN.report_inputs("vit"),
            owner=outdir_owned,
        output:
            summary=report(PATHS.vit_report()["summary"], caption="../report/vit_summary.rst",
                           category="Vision transformer", subcategory="Summary"),
            table=report(PATHS.vit_report()["table"], caption="../report/vit_table.rst",
                         category="Vision transformer", subcategory="Summary"),
            figure=report(PATHS.vit_report()["figure"], caption="../report/vit_figure.rst",
                          category="Vision transformer", subcategory="Summary"),
        params:
            entries=report_entries("vit"),
        log:
            PATHS.log("vit/report_vit"),
        benchmark:
            PATHS.benchmark("vit/report_vit")
        conda:
            "../envs/curvmem.yaml"
        resources:
            **resources_of("report"),
        shell:
            "curvmem report-vit {params.entries} --out {output.summary:q} --table {output.table:q}"
            " --figure {output.figure:q} > {log:q} 2>&1"


rule readme_tables:
    input:
        **PLAN.readme_inputs(),
        owner=outdir_owned,
    output:
        PLAN.readme_tables(),
    params:
        args=PLAN.readme_flags(),
    log:
        PATHS.log("readme_tables"),
    benchmark:
        PATHS.benchmark("readme_tables")
    conda:
        "../envs/curvmem.yaml"
    resources:
        **resources_of("report"),
    shell:
        "curvmem report-readme {params.args} --out {output:q} > {log:q} 2>&1"


if PLAN.seeds_outputs():

    rule seeds_report:
        input:
            PLAN.seeds_inputs(),
            owner=outdir_owned,
        output:
            **PLAN.seeds_outputs(),
        params:
            args=PLAN.seeds_flags(),
        log:
            PATHS.log("seeds_report"),
        benchmark:
            PATHS.benchmark("seeds_report")
        conda:
            "../envs/curvmem.yaml"
        resources:
            **resources_of("report"),
        shell:
            "curvmem report-seeds {params.args} --out {output.summary:q} --tables {output.tables:q}"
            " --figure {output.figure:q} > {log:q} 2>&1"

    # A target of its own (`snakemake ... seeds`), never part of `all`: it reads every seed's
    # run, and a plan never looks on disk for the runs of the others (docs/workflow.md).
    rule seeds:
        input:
            **PLAN.seeds_outputs(),
        localrule: True


# The report is a DAG output: once every table and figure exists, a nested snakemake (sharing
# .snakemake/ metadata, --nolock because this run holds the lock) renders them into one HTML file.
rule report_html:
    input:
        summaries(),
        owner=outdir_owned,
    output:
        PLAN.report_html(),
    params:
        snakefile=os.path.relpath(workflow.main_snakefile),
        config=same_config_args(),
    log:
        PATHS.log("report_html"),
    conda:
        "../envs/curvmem.yaml"
    localrule: True
    shell:
        "snakemake --snakefile {params.snakefile:q} --nolock --cores 1 {params.config}"
        " --report {output:q} {input:q} > {log:q} 2>&1"
