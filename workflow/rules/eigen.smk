"""Eigendecomposition of each layer's factors."""


rule eigen:
    input:
        f"{OUT}/{{domain}}/factors/{{fkey}}/layer_{{layer}}.nc",
    output:
        f"{OUT}/{{domain}}/eigen/{{fkey}}/layer_{{layer}}.nc",
    log:
        f"{OUT}/logs/{{domain}}/eigen/{{fkey}}/layer_{{layer}}.log",
    benchmark:
        bench("{domain}/eigen/{fkey}/layer_{layer}")
    conda:
        "../envs/curvmem.yaml"
    threads: res("eigen")["threads"]
    resources:
        **resources_of("eigen", "{domain}"),
    shell:
        "curvmem eigen --factors {input:q} --out {output:q} > {log:q} 2>&1"
