"""K-FAC factors per (model, factor set, layer); sharded sets collect shard k/n and merge."""


rule collect:
    input:
        data=domain_data,
        memorized=lambda wc: PLAN.memorized_inputs(wc.domain),
        model=domain_model_input,
    output:
        PATHS.layer_file("factors"),
    wildcard_constraints:
        fkey=one_of(fkeys(sharded=False)),
    params:
        model=domain_model_arg,
        out=lambda wc, output: os.path.dirname(output[0]),
        args=collect_flags,
    log:
        PATHS.log(PATHS.layer_job("collect")),
    benchmark:
        PATHS.benchmark(PATHS.layer_job("collect"))
    conda:
        "../envs/curvmem.yaml"
    threads: resources_of("collect", "{domain}").threads
    resources:
        **resources_of("collect", "{domain}"),
    shell:
        "curvmem collect --model {params.model:q} --data {input.data:q} --layers {wildcards.layer:q}"
        " {params.args} --out {params.out:q} > {log:q} 2>&1"


rule collect_shard:
    input:
        data=domain_data,
        memorized=lambda wc: PLAN.memorized_inputs(wc.domain),
        model=domain_model_input,
    output:
        temp(PATHS.shard_file()),
    wildcard_constraints:
        fkey=one_of(fkeys(sharded=True)),
        k=r"\d+",
        n=r"\d+",
    params:
        model=domain_model_arg,
        out=lambda wc, output: os.path.dirname(output[0]),
        args=collect_flags,
    log:
        PATHS.log(PATHS.layer_job("collect", sharded=True)),
    benchmark:
        PATHS.benchmark(PATHS.layer_job("collect", sharded=True))
    conda:
        "../envs/curvmem.yaml"
    threads: resources_of("collect", "{domain}").threads
    resources:
        **resources_of("collect", "{domain}"),
    shell:
        "curvmem collect --model {params.model:q} --data {input.data:q} --layers {wildcards.layer:q}"
        " --shard {wildcards.k:q}/{wildcards.n:q} {params.args} --out {params.out:q} > {log:q} 2>&1"


rule merge:
    input:
        shard_files,
    output:
        PATHS.layer_file("factors"),
    wildcard_constraints:
        fkey=one_of(fkeys(sharded=True)),
    log:
        PATHS.log(PATHS.layer_job("merge")),
    benchmark:
        PATHS.benchmark(PATHS.layer_job("merge"))
    conda:
        "../envs/curvmem.yaml"
    threads: resources_of("merge", "{domain}").threads
    resources:
        **resources_of("merge", "{domain}"),
    shell:
        "curvmem merge {input:q} --out {output:q} > {log:q} 2>&1"
