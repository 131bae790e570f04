"""BalancedSubnet (BSN), the learned-mask unlearning baseline (language model only)."""

if "lm" in DOMAINS:

    rule bsn:
        input:
            model=model_input("lm"),
            forget=lm_data("forget") if edit_keys("lm", ["bsn"]) else [],
            retain=lm_data("retain") if edit_keys("lm", ["bsn"]) else [],
        output:
            edit=PATHS.edit("lm", method="bsn"),
            meta=PATHS.edit_sidecar("lm", method="bsn"),
        wildcard_constraints:
            key=one_of(edit_keys("lm", ["bsn"])),
        params:
            model=lambda wc: model_arg("lm"),
            args=bsn_flags,
        log:
            PATHS.log("lm/bsn/{key}"),
        benchmark:
            PATHS.benchmark("lm/bsn/{key}")
        conda:
            "../envs/curvmem.yaml"
        threads: resources_of("bsn", "lm").threads
        resources:
            **resources_of("bsn", "lm"),
        shell:
            "curvmem baseline bsn --model {params.model:q} --forget {input.forget:q}"
            " --retain {input.retain:q} {params.args} --out {output.edit:q} > {log:q} 2>&1"

    rule compare:
        input:
            PATHS.lm_report()["summary"],
            owner=outdir_owned,
        output:
            figure=report(PATHS.compare()["figure"], caption="../report/compare.rst",
                          category="Language model", subcategory="Method comparison"),
            table=report(PATHS.compare()["table"], caption="../report/compare_table.rst",
                         category="Language model", subcategory="Method comparison"),
        log:
            PATHS.log("lm/compare"),
        benchmark:
            PATHS.benchmark("lm/compare")
        conda:
            "../envs/curvmem.yaml"
        resources:
            **resources_of("report"),
        shell:
            "curvmem compare --summary {input:q} --figure {output.figure:q} --table {output.table:q}"
            " > {log:q} 2>&1"
