"""BalancedSubnet (BSN), the learned-mask unlearning baseline (language model only)."""

if "lm" in DOMAINS:

    rule bsn:
        input:
            model=model_input("lm"),
            forget=lm_data("forget") if edit_keys("lm", ["bsn"]) else [],
            retain=lm_data("retain") if edit_keys("lm", ["bsn"]) else [],
        output:
            edit=f"{OUT}/lm/bsn/{{key}}.safetensors",
            meta=f"{OUT}/lm/bsn/{{key}}.json",
        wildcard_constraints:
            key=one_of(edit_keys("lm", ["bsn"])),
        params:
            model=lambda wc: model_arg("lm"),
            args=bsn_flags,
        log:
            f"{OUT}/logs/lm/bsn/{{key}}.log",
        benchmark:
            bench("lm/bsn/{key}")
        conda:
            "../envs/curvmem.yaml"
        threads: res("bsn")["threads"]
        resources:
            **resources_of("bsn", "lm"),
        shell:
            "curvmem baseline bsn --model {params.model:q} --forget {input.forget:q}"
            " --retain {input.retain:q} {params.args} --out {output.edit:q} > {log:q} 2>&1"

    rule compare:
        input:
            f"{OUT}/lm_summary.json",
            owner=outdir_owned,
        output:
            figure=report(f"{OUT}/compare.png", caption="../report/compare.rst",
                          category="Language model", subcategory="Method comparison"),
            table=report(f"{OUT}/compare.md", caption="../report/compare_table.rst",
                         category="Language model", subcategory="Method comparison"),
        log:
            f"{OUT}/logs/lm/compare.log",
        benchmark:
            bench("lm/compare")
        conda:
            "../envs/curvmem.yaml"
        resources:
            **resources_of("report"),
        shell:
            "curvmem compare --summary {input:q} --figure {output.figure:q} --table {output.table:q}"
            " > {log:q} 2>&1"
