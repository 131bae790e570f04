"""Training the embedded models: the tiny OLMo-2 on its world, the ViT on noisy digits."""

if "lm" in DOMAINS and embedded("lm"):

    rule train_lm:
        input:
            world=PLAN.world_manifest(),
            corpus=lm_data("corpus"),
            tokenizer=PLAN.tokenizer_dir(),
        output:
            directory(model_arg("lm")),
        params:
            world=lambda wc: PLAN.world_dir(),  # not derived from input: see common.smk
            args=model_flags("lm", "preset", "seed", "steps", "weight_decay"),
        log:
            PATHS.log("lm/train_lm"),
        benchmark:
            PATHS.benchmark("lm/train_lm")
        conda:
            "../envs/curvmem.yaml"
        threads: resources_of("train", "lm").threads
        resources:
            **resources_of("train", "lm"),
        shell:
            "curvmem train-lm --world {params.world:q} --tokenizer {input.tokenizer:q} --out {output:q}"
            " {params.args} --threads {threads:q} > {log:q} 2>&1"
