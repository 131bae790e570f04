"""Public sources, fetched once on the machine running snakemake (local rules), so that compute
jobs never touch the network: hub model snapshots (lm/vit.model.id + revision)."""


rule download_model:
    output:
        directory(f"{OUT}/hub/{{snapshot}}"),
    wildcard_constraints:
        snapshot=one_of([os.path.basename(d) for d in SNAPSHOTS]),
    params:
        args=lambda wc: snapshot_flags(f"{OUT}/hub/{wc.snapshot}"),
        online=USER_HUB_OFFLINE,
    log:
        "logs/hub/download_model/{snapshot}.log",
    benchmark:
        bench("hub/download_model/{snapshot}")
    conda:
        "../envs/curvmem.yaml"
    shell:
        "HF_HUB_OFFLINE={params.online} curvmem download {params.args} --out {output} > {log} 2>&1"
