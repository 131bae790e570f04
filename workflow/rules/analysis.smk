"""Analyses of the LM edit (DRAFT, not yet included by the Snakefile): one rule per
`curvmem analyze` subcommand, JSON under {OUT}/analysis/ and a figure for the HTML report.

Config read here (all optional, defaults below), e.g. in default.yaml:
    lm:
      analysis:
        layers: [1, 2]                  # blocks analysed (default: the first kfac sweep's last layer set)
        modules: [mlp.gate_proj, mlp.up_proj]
        stability_sizes: [10000, 30000, 100000]   # positions per slice
        stress_edits: []                # extra edit labels for the stress test (besides the
                                        # selected K-FAC, every svd and bsn edit)
The selected K-FAC edit is only known once report-lm has run, so the rules that need it read
lm_summary.json (task-interaction) or take every candidate edit and let --summary pick (stress).
"""

ANALYSIS = (config.get("lm") or {}).get("analysis") or {}


def analysis_layers():
    if "layers" in ANALYSIS:
        return ANALYSIS["layers"]
    kfac = [s for s in EDITS["lm"].values() if s["method"] == "kfac" and s["keep"] == "top"
            and s["factors"] == "main"]
    return kfac[-1]["layers"] if kfac else []


def analysis_modules():
    return ANALYSIS.get("modules") or config["lm"]["factors"]["modules"]


def main_fkey():
    return factor_key("lm", "main")


def main_eigen():
    return f"{OUT}/lm/eigen/{main_fkey()}"


def main_eigen_files():
    return [f"{main_eigen()}/layer_{layer}.nc" for layer in analysis_layers()]


def analysis_flags():
    return flags(("--model", model_arg("lm")), ("--eigen", main_eigen()),
                 ("--layers", analysis_layers()), ("--modules", analysis_modules()))


def sweep_rhos():
    rhos = sorted({s["rho"] for s in EDITS["lm"].values()
                   if s["method"] == "kfac" and not isinstance(s["rho"], dict)})
    return rhos or None


def stability_sets():
    """{name: (tokens passed to collect, shard, seed)}: two disjoint slices per size (shards 0/2
    and 1/2 of 2 x size positions) and, at the largest size, the first slice with label seed 1."""
    sizes = ANALYSIS.get("stability_sizes", [10000, 30000, 100000])
    seq = config["lm"]["factors"]["seq_len"]
    sets = {}
    for size in sizes:
        for k in (0, 1):
            sets[f"n{size}-s{k}"] = (2 * size + 2 * seq, f"{k}/2", 0)  # + a sequence of slack
    sets[f"n{max(sizes)}-s0-seed1"] = (2 * max(sizes) + 2 * seq, "0/2", 1)
    return sets


def stress_edit_keys():
    """Every svd and bsn edit, every top-keeping K-FAC edit of the main factors (--summary keeps
    only the selected one of those), and the labels listed in lm.analysis.stress_edits."""
    keep = set(ANALYSIS.get("stress_edits", []))
    return [key for key, spec in EDITS["lm"].items()
            if spec["method"] in ("svd", "bsn") or spec["label"] in keep
            or (spec["method"] == "kfac" and spec["keep"] == "top" and spec["factors"] == "main")]


def stress_edit_entries():
    return " ".join(f"--edit {shlex.quote(EDITS['lm'][k]['label'] + '=' + edit_path('lm', k))}"
                    for k in stress_edit_keys())


if "lm" in DOMAINS and analysis_layers():

    rule analysis_activation_ratio:
        input:
            model_input("lm") + main_eigen_files() + [lm_data("forget"), lm_data("heldout")],
        output:
            json=f"{OUT}/analysis/activation_ratio.json",
            figure=report(f"{OUT}/analysis/activation_ratio.png", category="Analyses",
                          subcategory="Activation ratio (Fig. 2)"),
        params:
            args=analysis_flags(),
        log:
            "logs/lm/analysis/activation_ratio.log",
        benchmark:
            "benchmarks/lm/analysis/activation_ratio.tsv"
        threads: res("analysis")["threads"]
        resources:
            **resources_of("analysis", "lm"),
        shell:
            "curvmem analyze activation-ratio {params.args} --memorized {input[-2]}"
            " --clean {input[-1]} --threads {threads} --out {output.json}"
            " --figure {output.figure} > {log} 2>&1"

    rule analysis_task_interaction:
        input:
            model_input("lm") + main_eigen_files()
            + [lm_data("tasks"), lm_data("heldout"), lm_data("forget"), f"{OUT}/lm_summary.json"],
        output:
            json=f"{OUT}/analysis/task_interaction.json",
            figure=report(f"{OUT}/analysis/task_interaction.png", category="Analyses",
                          subcategory="Per-task interaction (Fig. 4)"),
        params:
            args=analysis_flags(),
        log:
            "logs/lm/analysis/task_interaction.log",
        benchmark:
            "benchmarks/lm/analysis/task_interaction.tsv"
        threads: res("analysis")["threads"]
        resources:
            **resources_of("analysis", "lm"),
        shell:
            "curvmem analyze task-interaction {params.args} --tasks {input[-4]}"
            " --clean {input[-3]} --memorized {input[-2]} --summary {input[-1]}"
            " --threads {threads} --out {output.json} --figure {output.figure} > {log} 2>&1"

    rule analysis_spectra:
        input:
            main_eigen_files(),
        output:
            json=f"{OUT}/analysis/spectra.json",
            figure=report(f"{OUT}/analysis/spectra.png", category="Analyses",
                          subcategory="Spectra"),
        params:
            args=flags(("--eigen", main_eigen()), ("--layers", analysis_layers()),
                       ("--modules", analysis_modules()), ("--rhos", sweep_rhos())),
        log:
            "logs/lm/analysis/spectra.log",
        benchmark:
            "benchmarks/lm/analysis/spectra.tsv"
        resources:
            **resources_of("analysis", "lm"),
        shell:
            "curvmem analyze spectra {params.args} --out {output.json}"
            " --figure {output.figure} > {log} 2>&1"

    rule analysis_per_example:
        input:
            model_input("lm") + main_eigen_files() + [lm_data("forget"), lm_data("heldout")],
        output:
            json=f"{OUT}/analysis/per_example.json",
            figure=report(f"{OUT}/analysis/per_example.png", category="Analyses",
                          subcategory="Per-example curvature"),
        params:
            args=analysis_flags(),
        log:
            "logs/lm/analysis/per_example.log",
        benchmark:
            "benchmarks/lm/analysis/per_example.tsv"
        threads: res("analysis")["threads"]
        resources:
            **resources_of("analysis", "lm"),
        shell:
            "curvmem analyze per-example {params.args} --memorized {input[-2]}"
            " --clean {input[-1]} --threads {threads} --out {output.json}"
            " --figure {output.figure} > {log} 2>&1"

    # the stability slices: `collect --shard` of the main factor settings, one layer file each
    rule analysis_stability_collect:
        input:
            data=lm_data("corpus"),
            model=model_input("lm"),
        output:
            f"{OUT}/analysis/stability/factors/{{sname}}/layer_{{layer}}.nc",
        wildcard_constraints:
            sname=one_of(list(stability_sets())),
        params:
            model=model_arg("lm"),
            out=lambda wc, output: os.path.dirname(output[0]),
            args=lambda wc: flags(
                ("--modules", analysis_modules()), ("--seq-len", config["lm"]["factors"]["seq_len"]),
                ("--batch-size", config["lm"]["factors"]["batch_size"]),
                ("--fisher", config["lm"]["factors"]["fisher"]),
                ("--tokens", stability_sets()[wc.sname][0]),
                ("--shard", stability_sets()[wc.sname][1]),
                ("--seed", stability_sets()[wc.sname][2])),
        log:
            "logs/lm/analysis/stability/collect/{sname}/layer_{layer}.log",
        threads: res("collect")["threads"]
        resources:
            **resources_of("collect", "lm"),
        shell:
            "curvmem collect --model {params.model} --data {input.data} --layers {wildcards.layer}"
            " {params.args} --out {params.out} > {log} 2>&1"

    rule analysis_stability_eigen:
        input:
            f"{OUT}/analysis/stability/factors/{{sname}}/layer_{{layer}}.nc",
        output:
            f"{OUT}/analysis/stability/eigen/{{sname}}/layer_{{layer}}.nc",
        log:
            "logs/lm/analysis/stability/eigen/{sname}/layer_{layer}.log",
        resources:
            **resources_of("eigen", "lm"),
        shell:
            "curvmem eigen --factors {input} --out {output} > {log} 2>&1"

    rule analysis_stability:
        input:
            [f"{OUT}/analysis/stability/eigen/{n}/layer_{layer}.nc"
             for n in stability_sets() for layer in analysis_layers()],
        output:
            json=f"{OUT}/analysis/stability.json",
            figure=report(f"{OUT}/analysis/stability.png", category="Analyses",
                          subcategory="Basis stability"),
        params:
            sets=" ".join(f"--set {n}={OUT}/analysis/stability/eigen/{n}"
                          for n in stability_sets()),
            args=flags(("--layers", analysis_layers()), ("--modules", analysis_modules()),
                       ("--rho", ANALYSIS.get("stability_rho", 0.6))),
        log:
            "logs/lm/analysis/stability.log",
        benchmark:
            "benchmarks/lm/analysis/stability.tsv"
        resources:
            **resources_of("analysis", "lm"),
        shell:
            "curvmem analyze stability {params.sets} {params.args} --out {output.json}"
            " --figure {output.figure} > {log} 2>&1"

    rule analysis_stress:
        input:
            model_input("lm") + [lm_data("forget"), f"{OUT}/lm_summary.json"]
            + [edit_path("lm", k) for k in stress_edit_keys()],
        output:
            json=f"{OUT}/analysis/stress.json",
            figure=report(f"{OUT}/analysis/stress.png", category="Analyses",
                          subcategory="Stress test (Table 6)"),
        params:
            model=model_arg("lm"),
            forget=lm_data("forget"),
            summary=f"{OUT}/lm_summary.json",
            edits=stress_edit_entries(),
        log:
            "logs/lm/analysis/stress.log",
        benchmark:
            "benchmarks/lm/analysis/stress.tsv"
        threads: res("analysis")["threads"]
        resources:
            **resources_of("analysis", "lm"),
        shell:
            "curvmem analyze stress --model {params.model} --memorized {params.forget}"
            " {params.edits} --summary {params.summary} --threads {threads}"
            " --out {output.json} --figure {output.figure} > {log} 2>&1"
