"""Evaluations, one job per (model, edit, evaluation): base model key base-..., edits by key."""

if "lm" in DOMAINS:

    rule evaluate_lm:
        input:
            lm_eval_inputs,
        output:
            f"{OUT}/lm/eval/{{key}}/{{evaluation}}.json",
        wildcard_constraints:
            evaluation=one_of(list(lookup(dpath="lm/evaluations", within=config))),
        params:
            kind=lm_evaluation("kind"),
            data=lm_evaluation("data"),
            model=model_arg("lm"),
            edit=edit_flag("lm"),
            load=model_flags("lm", "dtype"),
        log:
            "logs/lm/evaluate/{key}/{evaluation}.log",
        benchmark:
            bench("lm/evaluate/{key}/{evaluation}")
        conda:
            "../envs/curvmem.yaml"
        threads: res("evaluate")["threads"]
        resources:
            **resources_of("evaluate", "lm"),
        shell:
            "curvmem evaluate {params.kind} --model {params.model} {params.edit} {params.load}"
            " --data {params.data} --threads {threads} --out {output} > {log} 2>&1"

if "vit" in DOMAINS:

    rule evaluate_vit:
        input:
            vit_eval_inputs,
        output:
            f"{OUT}/vit/eval/{{key}}/vit.json",
        params:
            model=model_arg("vit"),
            data=vit_data(),
            edit=edit_flag("vit"),
        log:
            "logs/vit/evaluate/{key}.log",
        benchmark:
            bench("vit/evaluate/{key}")
        conda:
            "../envs/curvmem.yaml"
        threads: res("evaluate")["threads"]
        resources:
            **resources_of("evaluate", "vit"),
        shell:
            "curvmem evaluate vit --model {params.model} {params.edit} --data {params.data}"
            " --out {output} > {log} 2>&1"
