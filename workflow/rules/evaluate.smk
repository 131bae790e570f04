"""Evaluations, one job per (model, edit, evaluation): base model key base-..., edits by key."""

if "lm" in DOMAINS:

    rule evaluate_lm:
        input:
            lm_eval_inputs,
        output:
            f"{OUT}/lm/eval/{{key}}/{{evaluation}}.json",
        wildcard_constraints:
            evaluation=one_of(list(config["lm"]["evaluations"])),
        params:
            kind=lambda wc: config["lm"]["evaluations"][wc.evaluation]["kind"],
            data=lambda wc: lm_data(config["lm"]["evaluations"][wc.evaluation]["data"]),
            model=model_arg("lm"),
            edit=lambda wc: edit_flag("lm", wc.key),
            load=flags(("--dtype", config["lm"]["model"].get("dtype"))),
        log:
            "logs/lm/evaluate/{key}/{evaluation}.log",
        threads: res("evaluate")["threads"]
        resources:
            **resources_of("evaluate", "lm"),
        shell:
            "curvmem evaluate {params.kind} --model {params.model} {params.edit} {params.load}"
            " --data {params.data} --threads {threads} --out {output} > {log} 2>&1"

if "vit" in DOMAINS:

    rule evaluate_vit:
        input:
            lambda wc: model_input("vit") + [vit_data()]
            + ([] if wc.key == BASE["vit"] else [edit_path("vit", wc.key)]),
        output:
            f"{OUT}/vit/eval/{{key}}/vit.json",
        params:
            model=model_arg("vit"),
            data=vit_data(),
            edit=lambda wc: edit_flag("vit", wc.key),
        log:
            "logs/vit/evaluate/{key}.log",
        threads: res("evaluate")["threads"]
        resources:
            **resources_of("evaluate", "vit"),
        shell:
            "curvmem evaluate vit --model {params.model} {params.edit} --data {params.data}"
            " --out {output} > {log} 2>&1"
