"""The embedded language model's world: synthetic corpus, canaries, tasks (curvmem world)."""

if "lm" in DOMAINS and embedded("lm"):

    rule world:
        output:
            PLAN.world_outputs(),
        params:
            out=lambda wc: PLAN.world_dir(),  # not derived from output: see common.smk
            args=model_flags("lm", "preset", "seed"),
        log:
            PATHS.log("lm/world"),
        benchmark:
            PATHS.benchmark("lm/world")
        conda:
            "../envs/curvmem.yaml"
        threads: resources_of("world").threads
        resources:
            **resources_of("world"),
        shell:
            "curvmem world --out {params.out:q} {params.args} > {log:q} 2>&1"

    rule tokenizer:
        input:
            lm_data("corpus"),
        output:
            directory(PLAN.tokenizer_dir()),
        params:
            args=model_flags("lm", "vocab_size"),
        log:
            PATHS.log("lm/tokenizer"),
        benchmark:
            PATHS.benchmark("lm/tokenizer")
        conda:
            "../envs/curvmem.yaml"
        threads: resources_of("tokenizer").threads
        resources:
            **resources_of("tokenizer"),
        shell:
            "curvmem tokenizer --corpus {input:q} --out {output:q} {params.args} > {log:q} 2>&1"
