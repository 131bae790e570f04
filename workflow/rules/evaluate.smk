"""Evaluations of the base models and of BalancedSubnet edits (K-FAC and SVD edits are evaluated
by the job that makes them, edit.smk). LM: one job per model or edit (base key base-...) runs all
its evaluations in one process (`curvmem evaluate batch`), one JSON file each; the base model has
no coherence file (coherence compares an edit with the base)."""

if "lm" in DOMAINS:

    rule evaluate_lm:
        input:
            lm_eval_inputs,
        output:
            PLAN.lm_eval_outputs(base=False),
        wildcard_constraints:
            key=one_of(edit_keys("lm", ["bsn"])),
        params:
            model=model_arg("lm"),
            edit=edit_flag("lm"),
            load=model_flags("lm", "dtype"),
            runs=lm_eval_runs,
        log:
            PATHS.log("lm/evaluate/{key}"),
        benchmark:
            PATHS.benchmark("lm/evaluate/{key}")
        conda:
            "../envs/curvmem.yaml"
        threads: resources_of("evaluate", "lm").threads
        resources:
            **resources_of("evaluate", "lm"),
        shell:
            "curvmem evaluate batch --model {params.model:q} {params.edit} {params.load}"
            " --threads {threads:q} {params.runs} > {log:q} 2>&1"

    use rule evaluate_lm as evaluate_lm_base with:
        output:
            PLAN.lm_eval_outputs(base=True),
        wildcard_constraints:
            key=one_of([BASE["lm"]]),


if "vit" in DOMAINS:

    rule evaluate_vit:
        input:
            vit_eval_inputs,
        output:
            PLAN.vit_eval_output(),
        wildcard_constraints:
            key=one_of([BASE["vit"]]),
        params:
            model=model_arg("vit"),
            data=vit_data(),
        log:
            PATHS.log("vit/evaluate/{key}"),
        benchmark:
            PATHS.benchmark("vit/evaluate/{key}")
        conda:
            "../envs/curvmem.yaml"
        threads: resources_of("evaluate", "vit").threads
        resources:
            **resources_of("evaluate", "vit"),
        shell:
            "curvmem evaluate vit --model {params.model:q} --data {params.data:q}"
            " --out {output:q} > {log:q} 2>&1"
