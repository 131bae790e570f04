"""Training the embedded models: the tiny OLMo-2 on its world, the ViT on noisy digits."""

if "lm" in DOMAINS and embedded("lm"):

    rule train_lm:
        input:
            world=world_file("world.json"),
            corpus=lm_data("corpus"),
            tokenizer=f"{model_dir('lm')}/tokenizer",
        output:
            directory(model_arg("lm")),
        params:
            world=lambda wc: f"{model_dir('lm')}/world",  # not derived from input: see common.smk
            args=model_flags("lm", "preset", "seed", "steps", "weight_decay"),
        log:
            f"{OUT}/logs/lm/train_lm.log",
        benchmark:
            bench("lm/train_lm")
        conda:
            "../envs/curvmem.yaml"
        threads: res("train", "lm")["threads"]
        resources:
            **resources_of("train", "lm"),
        shell:
            "curvmem train-lm --world {params.world:q} --tokenizer {input.tokenizer:q} --out {output:q}"
            " {params.args} --threads {threads:q} > {log:q} 2>&1"
