"""K-FAC edits (and their kfac-bottom / -random / -shard controls) and the SVD baseline, each made
in the job that evaluates it: `curvmem edit ... --then evaluate ...` is one process, so Python,
torch and the model load once (an edit takes a fraction of a second, a start-up seconds). The
edit file is still its own content-keyed artifact; BalancedSubnet edits (baselines.smk) train in
jobs of their own and are evaluated in evaluate.smk."""

if "lm" in DOMAINS:

    rule edit_evaluate_lm:
        input:
            lm_eval_inputs,
        output:
            edit=PATHS.edit("lm"),
            meta=PATHS.edit_sidecar("lm"),
            evaluations=PLAN.lm_eval_outputs(base=False),
        wildcard_constraints:
            key=one_of(edit_keys("lm", MADE_WITH_EVALUATION)),
        params:
            edit=edit_flags("lm"),
            model=model_arg("lm"),
            load=model_flags("lm", "dtype"),
            runs=lm_eval_runs,
        log:
            PATHS.log("lm/evaluate/{key}"),
        benchmark:
            PATHS.benchmark("lm/evaluate/{key}")
        conda:
            "../envs/curvmem.yaml"
        threads: resources_of(("edit", "evaluate"), "lm").threads
        resources:
            **resources_of(("edit", "evaluate"), "lm"),
        shell:
            "curvmem edit {params.edit} --out {output.edit:q}"
            " --then evaluate batch --model {params.model:q} --edit {output.edit:q} {params.load}"
            " --threads {threads:q} {params.runs} > {log:q} 2>&1"


if "vit" in DOMAINS:

    rule edit_evaluate_vit:
        input:
            vit_eval_inputs,
        output:
            edit=PATHS.edit("vit"),
            meta=PATHS.edit_sidecar("vit"),
            evaluation=PLAN.vit_eval_output(),
        wildcard_constraints:
            key=one_of(edit_keys("vit", MADE_WITH_EVALUATION)),
        params:
            edit=edit_flags("vit"),
            model=model_arg("vit"),
            data=vit_data(),
        log:
            PATHS.log("vit/evaluate/{key}"),
        benchmark:
            PATHS.benchmark("vit/evaluate/{key}")
        conda:
            "../envs/curvmem.yaml"
        threads: resources_of(("edit", "evaluate"), "vit").threads
        resources:
            **resources_of(("edit", "evaluate"), "vit"),
        shell:
            "curvmem edit {params.edit} --out {output.edit:q}"
            " --then evaluate vit --model {params.model:q} --edit {output.edit:q}"
            " --data {params.data:q} --out {output.evaluation:q} > {log:q} 2>&1"
