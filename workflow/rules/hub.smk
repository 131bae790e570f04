"""Public sources, fetched once on the machine running snakemake (local rules), so that compute
jobs never touch the network: hub model snapshots (lm/vit.model.id + revision)."""


rule download_model:
    output:
        directory(PATHS.snapshot()),
    wildcard_constraints:
        snapshot=one_of([os.path.basename(d) for d in SNAPSHOTS]),
    params:
        args=lambda wc: snapshot_flags(PATHS.snapshot(wc.snapshot)),
        online=USER_HUB_OFFLINE,
    log:
        PATHS.log("hub/download_model/{snapshot}"),
    benchmark:
        PATHS.benchmark("hub/download_model/{snapshot}")
    conda:
        "../envs/curvmem.yaml"
    shell:
        "HF_HUB_OFFLINE={params.online:q} curvmem download {params.args} --out {output:q} > {log:q} 2>&1"


rule tokenize_corpus:
    input:
        model=model_input("lm") if "lm" in DOMAINS else [],
    output:
        PATHS.fetched(kind="tokens"),
    wildcard_constraints:
        fetched=one_of(fetched_stems("tokens")),
    params:
        args=lambda wc: FETCHED["tokens"][PATHS.fetched(wc.fetched, "tokens")],
        online=USER_HUB_OFFLINE,
    log:
        PATHS.log("hub/tokenize_corpus/{fetched}"),
    benchmark:
        PATHS.benchmark("hub/tokenize_corpus/{fetched}")
    conda:
        "../envs/curvmem.yaml"
    shell:
        "HF_HUB_OFFLINE={params.online:q} HF_DATASETS_OFFLINE={params.online:q}"
        " curvmem tokenize {params.args} --out {output:q} > {log:q} 2>&1"


rule fetch_texts:
    output:
        PATHS.fetched(kind="texts"),
    wildcard_constraints:
        fetched=one_of(fetched_stems("texts")),
    params:
        args=lambda wc: FETCHED["texts"][PATHS.fetched(wc.fetched, "texts")],
        online=USER_HUB_OFFLINE,
    log:
        PATHS.log("hub/fetch_texts/{fetched}"),
    benchmark:
        PATHS.benchmark("hub/fetch_texts/{fetched}")
    conda:
        "../envs/curvmem.yaml"
    shell:
        "HF_HUB_OFFLINE={params.online:q} HF_DATASETS_OFFLINE={params.online:q}"
        " curvmem fetch {params.args} --out {output:q} > {log:q} 2>&1"


rule fetch_file:
    output:
        PATHS.fetched(),
    wildcard_constraints:
        fetched=one_of([os.path.basename(p) for p in FETCHED["url"]]),
    params:
        args=lambda wc: FETCHED["url"][PATHS.fetched(wc.fetched)],
    log:
        PATHS.log("hub/fetch_file/{fetched}"),
    benchmark:
        PATHS.benchmark("hub/fetch_file/{fetched}")
    conda:
        "../envs/curvmem.yaml"
    shell:
        "curvmem fetch {params.args} --out {output:q} > {log:q} 2>&1"
