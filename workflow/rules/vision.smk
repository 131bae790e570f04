"""The embedded vision experiment's data and model: noisy-label digits, a small timm ViT."""

if "vit" in DOMAINS and embedded("vit"):

    rule vision_data:
        output:
            vit_data(),
        params:
            args=model_flags("vit", ("source", "data_source"), "seed", "noise", "image_size"),
        log:
            PATHS.log("vit/vision_data"),
        benchmark:
            PATHS.benchmark("vit/vision_data")
        conda:
            "../envs/curvmem.yaml"
        threads: resources_of("vision_data").threads
        resources:
            **resources_of("vision_data"),
        shell:
            "curvmem vision-data --out {output:q} {params.args} > {log:q} 2>&1"

    rule train_vit:
        input:
            vit_data(),
        output:
            directory(model_arg("vit")),
        params:
            args=model_flags("vit", "preset", "seed", "model_name", "epochs"),
        log:
            PATHS.log("vit/train_vit"),
        benchmark:
            PATHS.benchmark("vit/train_vit")
        conda:
            "../envs/curvmem.yaml"
        threads: resources_of("train", "vit").threads
        resources:
            **resources_of("train", "vit"),
        shell:
            "curvmem train-vit --data {input:q} --out {output:q} {params.args} > {log:q} 2>&1"
