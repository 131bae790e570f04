"""The embedded language model's world: synthetic corpus, canaries, tasks (curvmem world)."""

if "lm" in DOMAINS and embedded("lm"):

    rule world:
        output:
            PLAN.world_outputs(),
        params:
            out=lambda wc: f"{model_dir('lm')}/world",  # not derived from output: see common.smk
            args=model_flags("lm", "preset", "seed"),
        log:
            f"{OUT}/logs/lm/world.log",
        benchmark:
            bench("lm/world")
        conda:
            "../envs/curvmem.yaml"
        threads: res("world")["threads"]
        resources:
            **resources_of("world"),
        shell:
            "curvmem world --out {params.out:q} {params.args} > {log:q} 2>&1"

    rule tokenizer:
        input:
            lm_data("corpus"),
        output:
            directory(f"{model_dir('lm')}/tokenizer"),
        params:
            args=model_flags("lm", "vocab_size"),
        log:
            f"{OUT}/logs/lm/tokenizer.log",
        benchmark:
            bench("lm/tokenizer")
        conda:
            "../envs/curvmem.yaml"
        threads: res("tokenizer")["threads"]
        resources:
            **resources_of("tokenizer"),
        shell:
            "curvmem tokenizer --corpus {input:q} --out {output:q} {params.args} > {log:q} 2>&1"
