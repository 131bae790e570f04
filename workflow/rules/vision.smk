"""The embedded vision experiment's data and model: noisy-label digits, a small timm ViT."""

if "vit" in DOMAINS and embedded("vit"):

    rule vision_data:
        output:
            vit_data(),
        params:
            args=flags(("--source", config["vit"]["model"].get("data_source")),
                       ("--seed", config["vit"]["model"]["seed"]),
                       ("--noise", config["vit"]["model"].get("noise")),
                       ("--image-size", config["vit"]["model"].get("image_size"))),
        log:
            "logs/vit/vision_data.log",
        threads: res("vision_data")["threads"]
        resources:
            **resources_of("vision_data"),
        shell:
            "curvmem vision-data --out {output} {params.args} > {log} 2>&1"

    rule train_vit:
        input:
            vit_data(),
        output:
            directory(model_arg("vit")),
        params:
            args=flags(("--preset", config["vit"]["model"].get("preset")),
                       ("--seed", config["vit"]["model"]["seed"]),
                       ("--model-name", config["vit"]["model"].get("model_name")),
                       ("--epochs", config["vit"]["model"].get("epochs"))),
        log:
            "logs/vit/train_vit.log",
        threads: res("train", "vit")["threads"]
        resources:
            **resources_of("train", "vit"),
        shell:
            "curvmem train-vit --data {input} --out {output} {params.args} > {log} 2>&1"
