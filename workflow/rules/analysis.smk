"""Mechanism analyses of the LM edit (`curvmem analyze`; docs/lm.md), when the config has
`lm.analysis`: JSON + figure each under OUT/analysis/. The stability slices are `collect --shard`
of the curvature corpus with the main factors' settings, content-keyed like every factor set."""

if ANALYSIS:

    rule analysis_activation_ratio:
        input:
            model=model_input("lm"),
            eigen=PLAN.analysis_eigen_files(),
            memorized=lm_data("forget"),
            clean=lm_data("heldout"),
        output:
            json=ANALYSIS_OUT["activation_ratio"]["json"],
            figure=report(ANALYSIS_OUT["activation_ratio"]["figure"],
                          caption="../report/analysis.rst", category="Analyses",
                          subcategory="Activation ratio by band (paper Fig. 2)"),
        params:
            model=lambda wc: model_arg("lm"),
            args=PLAN.analysis_flags(),
        log:
            "logs/lm/analysis/activation_ratio.log",
        benchmark:
            bench("lm/analysis/activation_ratio")
        conda:
            "../envs/curvmem.yaml"
        threads: res("analysis")["threads"]
        resources:
            **resources_of("analysis", "lm"),
        shell:
            "curvmem analyze activation-ratio --model {params.model} {params.args}"
            " --memorized {input.memorized} --clean {input.clean} --threads {threads}"
            " --out {output.json} --figure {output.figure} > {log} 2>&1"

    rule analysis_task_interaction:
        input:
            model=model_input("lm"),
            eigen=PLAN.analysis_eigen_files(),
            tasks=lm_data("tasks"),
            clean=lm_data("heldout"),
            memorized=lm_data("forget"),
            summary=f"{OUT}/lm_summary.json",
        output:
            json=ANALYSIS_OUT["task_interaction"]["json"],
            figure=report(ANALYSIS_OUT["task_interaction"]["figure"],
                          caption="../report/analysis.rst", category="Analyses",
                          subcategory="Per-task interaction (paper Fig. 4)"),
        params:
            model=lambda wc: model_arg("lm"),
            args=PLAN.analysis_flags(),
        log:
            "logs/lm/analysis/task_interaction.log",
        benchmark:
            bench("lm/analysis/task_interaction")
        conda:
            "../envs/curvmem.yaml"
        threads: res("analysis")["threads"]
        resources:
            **resources_of("analysis", "lm"),
        shell:
            "curvmem analyze task-interaction --model {params.model} {params.args}"
            " --tasks {input.tasks} --clean {input.clean} --memorized {input.memorized}"
            " --summary {input.summary} --threads {threads} --out {output.json}"
            " --figure {output.figure} > {log} 2>&1"

    rule analysis_spectra:
        input:
            PLAN.analysis_eigen_files(),
        output:
            json=ANALYSIS_OUT["spectra"]["json"],
            figure=report(ANALYSIS_OUT["spectra"]["figure"], caption="../report/analysis.rst",
                          category="Analyses", subcategory="Spectra"),
        params:
            args=PLAN.analysis_flags(),
            rhos=flags(("--rhos", PLAN.sweep_rhos())),
        log:
            "logs/lm/analysis/spectra.log",
        benchmark:
            bench("lm/analysis/spectra")
        conda:
            "../envs/curvmem.yaml"
        resources:
            **resources_of("analysis", "lm"),
        shell:
            "curvmem analyze spectra {params.args} {params.rhos} --out {output.json}"
            " --figure {output.figure} > {log} 2>&1"

    rule analysis_per_example:
        input:
            model=model_input("lm"),
            eigen=PLAN.analysis_eigen_files(),
            memorized=lm_data("forget"),
            clean=lm_data("heldout"),
        output:
            json=ANALYSIS_OUT["per_example"]["json"],
            figure=report(ANALYSIS_OUT["per_example"]["figure"],
                          caption="../report/analysis.rst", category="Analyses",
                          subcategory="Per-example curvature"),
        params:
            model=lambda wc: model_arg("lm"),
            args=PLAN.analysis_flags(),
        log:
            "logs/lm/analysis/per_example.log",
        benchmark:
            bench("lm/analysis/per_example")
        conda:
            "../envs/curvmem.yaml"
        threads: res("analysis")["threads"]
        resources:
            **resources_of("analysis", "lm"),
        shell:
            "curvmem analyze per-example --model {params.model} {params.args}"
            " --memorized {input.memorized} --clean {input.clean} --threads {threads}"
            " --out {output.json} --figure {output.figure} > {log} 2>&1"

    rule analysis_stability_collect:
        input:
            data=planned(PLAN.domain_data)("lm"),  # the curvature corpus, as the main factors
            model=model_input("lm"),
        output:
            temp(f"{OUT}/lm/analysis/stability/{{sname}}/factors/layer_{{layer}}.nc"),
        wildcard_constraints:
            sname=one_of(list(PLAN.stability_sets())),
        params:
            model=lambda wc: model_arg("lm"),
            out=lambda wc, output: os.path.dirname(output[0]),
            args=stability_collect_flags,
        log:
            "logs/lm/analysis/stability/{sname}/collect_layer_{layer}.log",
        benchmark:
            bench("lm/analysis/stability/{sname}/collect_layer_{layer}")
        conda:
            "../envs/curvmem.yaml"
        threads: res("collect")["threads"]
        resources:
            **resources_of("collect", "lm"),
        shell:
            "curvmem collect --model {params.model} --data {input.data}"
            " --layers {wildcards.layer} {params.args} --out {params.out} > {log} 2>&1"

    rule analysis_stability_eigen:
        input:
            f"{OUT}/lm/analysis/stability/{{sname}}/factors/layer_{{layer}}.nc",
        output:
            f"{OUT}/lm/analysis/stability/{{sname}}/eigen/layer_{{layer}}.nc",
        log:
            "logs/lm/analysis/stability/{sname}/eigen_layer_{layer}.log",
        benchmark:
            bench("lm/analysis/stability/{sname}/eigen_layer_{layer}")
        conda:
            "../envs/curvmem.yaml"
        resources:
            **resources_of("eigen", "lm"),
        shell:
            "curvmem eigen --factors {input} --out {output} > {log} 2>&1"

    rule analysis_stability:
        input:
            PLAN.stability_eigen_files(),
        output:
            json=ANALYSIS_OUT["stability"]["json"],
            figure=report(ANALYSIS_OUT["stability"]["figure"],
                          caption="../report/analysis.rst", category="Analyses",
                          subcategory="Basis stability"),
        params:
            args=PLAN.stability_flags(),
        log:
            "logs/lm/analysis/stability.log",
        benchmark:
            bench("lm/analysis/stability")
        conda:
            "../envs/curvmem.yaml"
        resources:
            **resources_of("analysis", "lm"),
        shell:
            "curvmem analyze stability {params.args} --out {output.json}"
            " --figure {output.figure} > {log} 2>&1"

    rule analysis_stress:
        input:
            model=model_input("lm"),
            memorized=lm_data("forget"),
            summary=f"{OUT}/lm_summary.json",
            edits=[edit_path("lm", k) for k in PLAN.stress_edits()],
        output:
            json=ANALYSIS_OUT["stress"]["json"],
            figure=report(ANALYSIS_OUT["stress"]["figure"], caption="../report/analysis.rst",
                          category="Analyses", subcategory="Stress test (paper Table 6)"),
        params:
            model=lambda wc: model_arg("lm"),
            args=PLAN.stress_flags(),
        log:
            "logs/lm/analysis/stress.log",
        benchmark:
            bench("lm/analysis/stress")
        conda:
            "../envs/curvmem.yaml"
        threads: res("analysis")["threads"]
        resources:
            **resources_of("analysis", "lm"),
        shell:
            "curvmem analyze stress --model {params.model} --memorized {input.memorized}"
            " {params.args} --summary {input.summary} --threads {threads}"
            " --out {output.json} --figure {output.figure} > {log} 2>&1"
