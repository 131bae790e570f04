"""lm-evaluation-harness (lm.harness; the [eval] extra): the base model and each chosen edit,
exported as a full checkpoint (curvmem export), on the config's task lists."""

if "lm" in DOMAINS and PLAN.harness() is not None:

    rule export_edit:
        input:
            model=model_input("lm"),
            edit=lambda wc: edit_path("lm", wc.key),
        output:
            directory(PATHS.export_dir()),
        wildcard_constraints:
            key=one_of(planned(PLAN.harness_keys)()[1:]),
        params:
            model=lambda wc: model_arg("lm"),
        log:
            PATHS.log("lm/export_edit/{key}"),
        benchmark:
            PATHS.benchmark("lm/export_edit/{key}")
        conda:
            "../envs/curvmem.yaml"
        threads: resources_of("edit", "lm").threads
        resources:
            **resources_of("edit", "lm"),
        shell:
            "curvmem export --model {params.model:q} --edit {input.edit:q} --out {output:q} > {log:q} 2>&1"

    if PLAN.harness_tasks_dir():

        rule harness_tasks:
            input:
                data=lm_data(PLAN.harness()["local_tasks"]),
                model=model_input("lm"),
            output:
                directory(PLAN.harness_tasks_dir()),
            params:
                tokenizer=lambda wc: model_arg("lm"),
            log:
                PATHS.log("lm/harness_tasks"),
            benchmark:
                PATHS.benchmark("lm/harness_tasks")
            conda:
                "../envs/curvmem.yaml"
            resources:
                **resources_of("report"),
            shell:
                "curvmem harness-tasks --data {input.data:q} --tokenizer {params.tokenizer:q}"
                " --out {output:q} > {log:q} 2>&1"

    rule harness:
        input:
            lambda wc: PLAN.harness_inputs(wc.key),
        output:
            PATHS.harness_result(),
        wildcard_constraints:
            key=one_of(planned(PLAN.harness_keys)()),
        params:
            args=lambda wc: PLAN.harness_flags(wc.key),
        log:
            PATHS.log("lm/harness/{key}"),
        benchmark:
            PATHS.benchmark("lm/harness/{key}")
        conda:
            "../envs/curvmem.yaml"
        threads: resources_of("evaluate", "lm").threads
        resources:
            **resources_of("evaluate", "lm"),
        shell:
            "curvmem harness {params.args} --out {output:q} > {log:q} 2>&1"
