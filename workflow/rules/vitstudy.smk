"""The ViT study (docs/vision.md, "The study"): one dataset with a held-out split (and the
named `datasets` beside it), one embedded ViT per grid setting, one in-process cell per model
(every Fisher image set and edit), with `decide` the experiments deciding Table 2 (oracle,
knockout, probe, plant; docs/vision.md, "Deciding Table 2"), a report."""

if PLAN.study():

    wildcard_constraints:
        study_model=one_of(list(PLAN.study_models())),
        study_dataset=one_of([n for n in PLAN.study_datasets() if n != "main"]),
        study_experiment=one_of(list(PLAN.study_experiments())),

    rule vit_study_data:
        output:
            PLAN.study_data(),
        params:
            args=PLAN.study_data_flags(),
        log:
            PATHS.log("vit_study/data"),
        benchmark:
            PATHS.benchmark("vit_study/data")
        conda:
            "../envs/curvmem.yaml"
        threads: resources_of("vision_data").threads
        resources:
            **resources_of("vision_data"),
        shell:
            "curvmem vision-data --out {output:q} {params.args} > {log:q} 2>&1"

    rule vit_study_dataset:
        output:
            PATHS.study_data("{study_dataset}"),
        params:
            args=lambda wc: PLAN.study_data_flags(wc.study_dataset),
        log:
            PATHS.log("vit_study/data-{study_dataset}"),
        benchmark:
            PATHS.benchmark("vit_study/data-{study_dataset}")
        conda:
            "../envs/curvmem.yaml"
        threads: resources_of("vision_data").threads
        resources:
            **resources_of("vision_data"),
        shell:
            "curvmem vision-data --out {output:q} {params.args} > {log:q} 2>&1"

    rule vit_study_train:
        input:
            lambda wc: PLAN.study_model_data(wc.study_model),
        output:
            directory(PATHS.study_model()),
        params:
            args=lambda wc: PLAN.study_train_flags(wc.study_model),
        log:
            PATHS.log("vit_study/train/{study_model}"),
        benchmark:
            PATHS.benchmark("vit_study/train/{study_model}")
        conda:
            "../envs/curvmem.yaml"
        threads: resources_of("train").threads
        resources:
            **resources_of("train"),
        shell:
            "curvmem train-vit --data {input:q} --out {output:q} {params.args} > {log:q} 2>&1"

    rule vit_study_cell:
        input:
            data=lambda wc: PLAN.study_model_data(wc.study_model),
            model=PATHS.study_model(),
        output:
            PATHS.study_cell(),
        params:
            args=PLAN.study_cell_flags(),
        log:
            PATHS.log("vit_study/cell/{study_model}"),
        benchmark:
            PATHS.benchmark("vit_study/cell/{study_model}")
        conda:
            "../envs/curvmem.yaml"
        threads: resources_of("evaluate").threads
        resources:
            **resources_of("evaluate"),
        shell:
            "curvmem vit-study-cell --model {input.model:q} --data {input.data:q} --out {output:q}"
            " {params.args} > {log:q} 2>&1"

    rule vit_study_experiment:
        input:
            data=lambda wc: PLAN.study_experiment_data(wc.study_experiment, wc.study_model),
            model=PATHS.study_model(),
        output:
            PATHS.study_experiment(),
        params:
            command=lambda wc: PLAN.study_experiment_command(wc.study_experiment),
        log:
            PATHS.log("vit_study/{study_experiment}/{study_model}"),
        benchmark:
            PATHS.benchmark("vit_study/{study_experiment}/{study_model}")
        conda:
            "../envs/curvmem.yaml"
        threads: resources_of("evaluate").threads
        resources:
            **resources_of("evaluate"),
        shell:
            "curvmem {params.command} --model {input.model:q} --data {input.data:q}"
            " --out {output:q} > {log:q} 2>&1"

    rule report_vit_study:
        input:
            PLAN.study_report_inputs(),
            owner=outdir_owned,
        output:
            summary=report(PLAN.study_outputs()["summary"], caption="../report/vit_study.rst",
                           category="ViT study", subcategory="Summary"),
            table=report(PLAN.study_outputs()["table"], caption="../report/vit_study.rst",
                         category="ViT study", subcategory="Summary"),
            figure=report(PLAN.study_outputs()["figure"], caption="../report/vit_study.rst",
                          category="ViT study", subcategory="Summary"),
        log:
            PATHS.log("vit_study/report"),
        benchmark:
            PATHS.benchmark("vit_study/report")
        conda:
            "../envs/curvmem.yaml"
        resources:
            **resources_of("report"),
        params:
            command=PLAN.study_report_command(),
        shell:
            "curvmem {params.command} {input:q} --out {output.summary:q}"
            " --table {output.table:q} --figure {output.figure:q} > {log:q} 2>&1"
