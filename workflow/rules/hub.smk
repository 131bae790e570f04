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
        f"{OUT}/logs/hub/download_model/{{snapshot}}.log",
    benchmark:
        bench("hub/download_model/{snapshot}")
    conda:
        "../envs/curvmem.yaml"
    shell:
        "HF_HUB_OFFLINE={params.online:q} curvmem download {params.args} --out {output:q} > {log:q} 2>&1"


rule tokenize_corpus:
    input:
        model=model_input("lm") if "lm" in DOMAINS else [],
    output:
        f"{OUT}/lm/data/{{fetched}}.npy",
    wildcard_constraints:
        fetched=one_of(fetched_stems("tokens")),
    params:
        args=lambda wc: FETCHED["tokens"][f"{OUT}/lm/data/{wc.fetched}.npy"],
        online=USER_HUB_OFFLINE,
    log:
        f"{OUT}/logs/hub/tokenize_corpus/{{fetched}}.log",
    benchmark:
        bench("hub/tokenize_corpus/{fetched}")
    conda:
        "../envs/curvmem.yaml"
    shell:
        "HF_HUB_OFFLINE={params.online:q} HF_DATASETS_OFFLINE={params.online:q}"
        " curvmem tokenize {params.args} --out {output:q} > {log:q} 2>&1"


rule fetch_texts:
    output:
        f"{OUT}/lm/data/{{fetched}}.jsonl",
    wildcard_constraints:
        fetched=one_of(fetched_stems("texts")),
    params:
        args=lambda wc: FETCHED["texts"][f"{OUT}/lm/data/{wc.fetched}.jsonl"],
        online=USER_HUB_OFFLINE,
    log:
        f"{OUT}/logs/hub/fetch_texts/{{fetched}}.log",
    benchmark:
        bench("hub/fetch_texts/{fetched}")
    conda:
        "../envs/curvmem.yaml"
    shell:
        "HF_HUB_OFFLINE={params.online:q} HF_DATASETS_OFFLINE={params.online:q}"
        " curvmem fetch {params.args} --out {output:q} > {log:q} 2>&1"


rule fetch_file:
    output:
        f"{OUT}/lm/data/{{fetched}}",
    wildcard_constraints:
        fetched=one_of([os.path.basename(p) for p in FETCHED["url"]]),
    params:
        args=lambda wc: FETCHED["url"][f"{OUT}/lm/data/{wc.fetched}"],
    log:
        f"{OUT}/logs/hub/fetch_file/{{fetched}}.log",
    benchmark:
        bench("hub/fetch_file/{fetched}")
    conda:
        "../envs/curvmem.yaml"
    shell:
        "curvmem fetch {params.args} --out {output:q} > {log:q} 2>&1"
