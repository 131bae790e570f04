"""Tables, figures and the HTML report (`snakemake --report`, run as the DAG's last job)."""

if "lm" in DOMAINS:

    rule report_lm:
        input:
            [f for k in eval_keys("lm") for f in lm_eval_files(k)],
            owner=outdir_owned,
        output:
            summary=report(f"{OUT}/lm_summary.json", caption="../report/lm_summary.rst",
                           category="Language model", subcategory="Summary"),
            table=report(f"{OUT}/lm_table.md", caption="../report/lm_table.rst",
                         category="Language model", subcategory="Summary"),
            figure=report(f"{OUT}/lm_figure.png", caption="../report/lm_figure.rst",
                          category="Language model", subcategory="Summary"),
            sweep=report(f"{OUT}/lm_sweep.png", caption="../report/lm_sweep.rst",
                         category="Language model", subcategory="Summary"),
        params:
            entries=report_entries("lm"),
            columns=PLAN.report_lm_flags(),
        log:
            f"{OUT}/logs/lm/report_lm.log",
        benchmark:
            bench("lm/report_lm")
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
            [f"{OUT}/vit/eval/{k}/vit.json" for k in eval_keys("vit")],
            owner=outdir_owned,
        output:
            summary=report(f"{OUT}/vit_summary.json", caption="../report/vit_summary.rst",
                           category="Vision transformer", subcategory="Summary"),
            table=report(f"{OUT}/vit_table.md", caption="../report/vit_table.rst",
                         category="Vision transformer", subcategory="Summary"),
            figure=report(f"{OUT}/vit_figure.png", caption="../report/vit_figure.rst",
                          category="Vision transformer", subcategory="Summary"),
        params:
            entries=report_entries("vit"),
        log:
            f"{OUT}/logs/vit/report_vit.log",
        benchmark:
            bench("vit/report_vit")
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
        f"{OUT}/logs/readme_tables.log",
    benchmark:
        bench("readme_tables")
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
            f"{OUT}/logs/seeds_report.log",
        benchmark:
            bench("seeds_report")
        conda:
            "../envs/curvmem.yaml"
        resources:
            **resources_of("report"),
        shell:
            "curvmem report-seeds {params.args} --out {output.summary:q} --tables {output.tables:q}"
            " --figure {output.figure:q} > {log:q} 2>&1"


# The report is a DAG output: once every table and figure exists, a nested snakemake (sharing
# .snakemake/ metadata, --nolock because this run holds the lock) renders them into one HTML file.
rule report_html:
    input:
        summaries(),
        owner=outdir_owned,
    output:
        f"{OUT}/report.html",
    params:
        snakefile=os.path.relpath(workflow.main_snakefile),
        config=same_config_args(),
    log:
        f"{OUT}/logs/report_html.log",
    conda:
        "../envs/curvmem.yaml"
    localrule: True
    shell:
        "snakemake --snakefile {params.snakefile:q} --nolock --cores 1 {params.config}"
        " --report {output:q} {input:q} > {log:q} 2>&1"
