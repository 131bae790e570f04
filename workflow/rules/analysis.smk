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


def analysis_job_outputs(job):
    """{name}_json, {name}_figure (report()-ed) per analysis of the job; the slices' eigen files."""
    out = {}
    for name in ANALYSIS_JOBS[job]:
        files = PLAN.analysis_outputs(name)
        out[f"{name}_json"] = files["json"]
        out[f"{name}_figure"] = report(files["figure"], caption="../report/analysis.rst",
                                       category="Analyses",
                                       subcategory=ANALYSIS_SUBCATEGORY[name])
    if job in ("lm_stability", "vit"):
        out["slices"] = PLAN.stability_eigen_files("vit" if job == "vit" else "lm")
    return out


for job in PLAN.analysis_jobs():

    rule:
        name:
            f"analysis_{job}"
        input:
            **PLAN.analysis_job_inputs(job),
            owner=outdir_owned,
        output:
            **analysis_job_outputs(job),
        params:
            runs=PLAN.analysis_batch_flags(job),
        log:
            f"{OUT}/logs/{'vit' if job == 'vit' else 'lm'}/analysis/{job}.log",
        benchmark:
            bench(f"{'vit' if job == 'vit' else 'lm'}/analysis/{job}")
        conda:
            "../envs/curvmem.yaml"
        threads: res("analysis", "vit" if job == "vit" else "lm")["threads"]
        resources:
            **resources_of("analysis", "vit" if job == "vit" else "lm"),
        shell:
            "curvmem analyze batch {params.runs} --threads {threads:q} > {log:q} 2>&1"
