"""The embedded language model's world: synthetic corpus, canaries, tasks (curvmem world)."""

if "lm" in DOMAINS and embedded("lm"):

    rule world:
        output:
            [world_file("world.json")] + [world_file(f) for f in config["lm"]["data"].values()],
        params:
            out=f"{model_dir('lm')}/world",
            args=flags(("--preset", config["lm"]["model"].get("preset")),
                       ("--seed", config["lm"]["model"]["seed"])),
        log:
            "logs/lm/world.log",
        threads: res("world")["threads"]
        resources:
            **resources_of("world"),
        shell:
            "curvmem world --out {params.out} {params.args} > {log} 2>&1"

    rule tokenizer:
        input:
            lm_data("corpus"),
        output:
            directory(f"{model_dir('lm')}/tokenizer"),
        params:
            args=flags(("--vocab-size", config["lm"]["model"].get("vocab_size"))),
        log:
            "logs/lm/tokenizer.log",
        threads: res("tokenizer")["threads"]
        resources:
            **resources_of("tokenizer"),
        shell:
            "curvmem tokenizer --corpus {input} --out {output} {params.args} > {log} 2>&1"
