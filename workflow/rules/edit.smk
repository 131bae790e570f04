"""K-FAC edits (and their kfac-bottom / -random / -shard controls) and the SVD baseline."""


rule edit:
    input:
        edit_inputs,
    output:
        edit=f"{OUT}/{{domain}}/edits/{{key}}.safetensors",
        meta=f"{OUT}/{{domain}}/edits/{{key}}.json",
    params:
        args=edit_flags,
    log:
        f"{OUT}/logs/{{domain}}/edit/{{key}}.log",
    benchmark:
        bench("{domain}/edit/{key}")
    conda:
        "../envs/curvmem.yaml"
    threads: res("edit")["threads"]
    resources:
        **resources_of("edit", "{domain}"),
    shell:
        "curvmem edit {params.args} --out {output.edit} > {log} 2>&1"
