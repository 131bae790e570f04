"""Eigendecomposition of each layer's factors."""


rule eigen:
    input:
        PATHS.layer_file("factors"),
    output:
        PATHS.layer_file("eigen"),
    log:
        PATHS.log(PATHS.layer_job("eigen")),
    benchmark:
        PATHS.benchmark(PATHS.layer_job("eigen"))
    conda:
        "../envs/curvmem.yaml"
    threads: resources_of("eigen", "{domain}").threads
    resources:
        **resources_of("eigen", "{domain}"),
    shell:
        "curvmem eigen --factors {input:q} --out {output:q} > {log:q} 2>&1"
