"""Mechanism analyses (`curvmem analyze`; docs/lm.md, docs/vision.md), when the config has
`lm.analysis` / `vit.analysis`: a JSON and a figure each under OUT/analysis/. Each job runs its
analyses in one process (`analyze batch`: start-up costs more than most analyses here):

    analysis_lm_model      activation ratio, per-example curvature, spectra (model + eigenbases)
    analysis_lm_sweep      task interaction, stress test (they need the sweep's summary and edits)
    analysis_lm_stability  the stability slices (one pass over the curvature corpus, eigen files
                           kept under OUT/lm/analysis/stability/) and their comparison
    analysis_vit           the ViT's activation ratio, per-example curvature, spectra, stability"""

ANALYSIS_SUBCATEGORY = {
    "activation_ratio": "Activation ratio by band (paper Fig. 2)",
    "task_interaction": "Per-task interaction (paper Fig. 4)",
    "spectra": "Spectra",
    "per_example": "Per-example curvature",
    "stability": "Basis stability",
    "stress": "Stress test (paper Table 6)",
    "vit_activation_ratio": "ViT: activation ratio by band",
    "vit_per_example": "ViT: per-example curvature",
    "vit_spectra": "ViT: spectra",
    "vit_stability": "ViT: basis stability",
}


def with_figures_reported(outputs):
    """A job's named outputs (Plan.analysis_job_outputs) with each analysis' figure report()-ed."""
    return {name: report(path, caption="../report/analysis.rst", category="Analyses",
                         subcategory=ANALYSIS_SUBCATEGORY[name.removesuffix("_figure")])
            if name.endswith("_figure") else path for name, path in outputs.items()}


for job in PLAN.analysis_jobs():

    rule:
        name:
            f"analysis_{job}"
        input:
            **PLAN.analysis_job_inputs(job),
            owner=outdir_owned,
        output:
            **with_figures_reported(PLAN.analysis_job_outputs(job)),
        params:
            runs=PLAN.analysis_batch_flags(job),
        log:
            PATHS.log(PLAN.analysis_job_name(job)),
        benchmark:
            PATHS.benchmark(PLAN.analysis_job_name(job))
        conda:
            "../envs/curvmem.yaml"
        threads: resources_of("analysis", PLAN.analysis_job_domain(job)).threads
        resources:
            **resources_of("analysis", PLAN.analysis_job_domain(job)),
        shell:
            "curvmem analyze batch {params.runs} --threads {threads:q} > {log:q} 2>&1"
