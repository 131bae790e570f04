"""The planner's mechanism analyses (`curvmem analyze`): their jobs, inputs, outputs and runs."""

from __future__ import annotations

from curvmem.plan.common import PlanError, digest, flags

# `curvmem analyze` subcommands the workflow runs when the config has `lm.analysis`
ANALYSES = ("activation_ratio", "task_interaction", "spectra", "per_example", "stability",
            "stress")
# ... and when it has `vit.analysis` (outputs OUTDIR/analysis/vit_*.json)
VIT_ANALYSES = ("vit_activation_ratio", "vit_per_example", "vit_spectra", "vit_stability")
# lm.data entries the LM analyses read: memorized documents (forget) against never-trained ones
# of the same kinds (control), memorized quotes (untargeted) against never-trained quotes
# (control_quotes), held-out text (the secondary column), the stress test's forget-validation
# (never the set a selection reads) and the tasks
ANALYSIS_DATA = ("forget", "control", "untargeted", "control_quotes", "heldout",
                 "forget_validation", "tasks")
# The analysis jobs: each runs its analyses in one process (`curvmem analyze batch`), since
# start-up (torch, transformers, the model) costs more than most analyses of the tiny models.
# lm_model needs only the model and the eigenbases, lm_sweep the sweep's summary and edits.
ANALYSIS_JOBS = {"lm_model": ("activation_ratio", "per_example", "spectra"),
                 "lm_sweep": ("task_interaction", "stress"),
                 "lm_stability": ("stability",),
                 "vit": VIT_ANALYSES}
# the jobs that collect the stability slices (and keep their eigen files)
SLICING_JOBS = ("lm_stability", "vit")


def job_domain(job):
    """The domain of an analysis job (ANALYSIS_JOBS name)."""
    return "vit" if job == "vit" else "lm"


class AnalysisPlan:
    """Part of `Plan`: the analyses of `lm.analysis` and `vit.analysis`."""

    def analysis(self, domain="lm") -> dict | None:
        """`{domain}.analysis` (curvmem analyze; docs/lm.md, docs/vision.md), or None: no
        analyses of that domain for this config."""
        return (self.config.get(domain) or {}).get("analysis") if domain in self.domains else None

    def _check_analysis(self, domain) -> None:
        a = self.analysis(domain)
        if a is None:
            return
        main = self.factor_key(domain, "main")
        have = self.factor_sets[domain].get(main, {}).get("layers", [])
        missing = sorted(set(a["layers"]) - set(have))
        if missing:
            raise PlanError(f"config {domain}.analysis.layers: {missing} have no eigenbasis of the "
                            f"main factors (layers {have}: those of the kfac sweeps)")
        extra = sorted(set(a["modules"]) - set(self.factor_config(domain, "main")["modules"]))
        if extra:
            raise PlanError(f"config {domain}.analysis.modules: {extra} are not in "
                            f"{domain}.factors.modules")
        if a["stability"]["layer"] not in a["layers"]:
            raise PlanError(f"config {domain}.analysis.stability.layer {a['stability']['layer']} "
                            f"is not one of {domain}.analysis.layers {a['layers']}")
        if domain == "lm":
            missing = [k for k in ANALYSIS_DATA if k not in (self.config["lm"].get("data") or {})]
            if missing:
                raise PlanError(f"config lm.analysis needs lm.data entries {missing}: the "
                                "analyses compare memorized text with never-trained text of the "
                                "same kinds (control, control_quotes) and stress forget_validation")

    def analysis_eigen_dir(self, domain="lm"):
        """The main factor set's eigenbases, which the analyses read."""
        return self.paths.layer_dir("eigen", domain, self.factor_key(domain, "main"))

    def analysis_eigen_files(self, domain="lm"):
        main = self.factor_key(domain, "main")
        return [self.paths.layer_file("eigen", domain, main, layer)
                for layer in self.analysis(domain)["layers"]]

    def analysis_flags(self, domain="lm"):
        a = self.analysis(domain)
        return flags(("--eigen", self.analysis_eigen_dir(domain)), ("--layers", a["layers"]),
                     ("--modules", a["modules"]))

    def analysis_outputs(self, name):
        return self.paths.analysis_outputs(name)

    def sweep_rhos(self, domain="lm"):
        """The single ρ values of the K-FAC sweeps (marked on the spectra)."""
        return sorted({s["rho"] for s in self.edits[domain].values()
                       if s["method"] == "kfac" and not isinstance(s["rho"], dict)}) or None

    # ------------------------------------------------------------------- stability slices

    def stability_sets(self, domain="lm"):
        """{name: (size, shard, seed)}: per size, two disjoint slices of the curvature corpus
        (shards 0/2 and 1/2 of 2 x size positions) and, at the largest size, the first slice
        again with another label-sampling seed. Names carry a content key (model, settings)."""
        st = self.analysis(domain)["stability"]
        seed = self.factor_config(domain, "main")["seed"]
        variants = [(size, k, seed) for size in st["sizes"] for k in (0, 1)]
        variants.append((max(st["sizes"]), 0, seed + 1))
        sets = {}
        for size, k, s in variants:
            key = digest({"model": self.model_key(domain),
                          "factors": self.factor_config(domain, "main"),
                          "size": size, "shard": k, "seed": s})
            sets[f"n{size}-slice{k}-seed{s}-{key}"] = (size, k, s)
        return sets

    def stability_eigen_dir(self, sname, domain="lm"):
        return self.paths.stability_eigen_dir(domain, sname)

    def stability_slice_files(self, domain="lm"):
        """{slice name: its eigen file of the stability layer}."""
        layer = self.analysis(domain)["stability"]["layer"]
        return {n: self.paths.stability_eigen_file(domain, n, layer)
                for n in self.stability_sets(domain)}

    def stability_eigen_files(self, domain="lm"):
        return list(self.stability_slice_files(domain).values())

    def stability_flags(self, domain="lm"):
        """`analyze stability`: every slice's eigen directory (--set) and what it is (--slice:
        2 x size positions, shard k/2, label seed), collected in one process with the main
        factors' settings (`collect --tokens 2N --shard k/2` would give the same factors)."""
        st, f = self.analysis(domain)["stability"], self.factor_config(domain, "main")
        sets = self.stability_sets(domain)
        named = flags(*(item for n, (size, k, seed) in sets.items()
                        for item in (("--set", f"{n}={self.stability_eigen_dir(n, domain)}"),
                                     ("--slice", f"{n}={2 * size},{k}/2,{seed}"))))
        return f"{named} " + flags(
            ("--model", self.model_arg(domain)), ("--data", self.domain_data(domain)),
            ("--seq-len", f.get("seq_len") if domain == "lm" else None),
            ("--batch-size", f["batch_size"]), ("--fisher", f["fisher"]), ("--dtype", f["dtype"]),
            ("--layers", [st["layer"]]), ("--modules", self.analysis(domain)["modules"]),
            ("--rho", st["rho"]))

    # ------------------------------------------------------------------- the stress test

    def stress_edits(self):
        """The edits the stress test scores: every SVD and BSN edit and every top-keeping K-FAC
        edit of the main factors (`--summary` keeps only the selected one of these)."""
        main = self.factor_key("lm", "main")
        return [k for k, s in self.edits["lm"].items() if s["method"] in ("svd", "bsn")
                or (s["method"] == "kfac" and s["keep"] == "top" and s["fkey"] == main)]

    def stress_flags(self):
        """The scored edits and t; every forget-validation item unless the config caps each kind
        (`lm.analysis.stress.max_per_kind`)."""
        a = self.analysis()
        edits = flags(*(("--edit", f"{self.edits['lm'][k]['label']}={self.edit_path('lm', k)}")
                        for k in self.stress_edits()))
        return f"{edits} " + flags(("--max-per-kind", a["stress"].get("max_per_kind")),
                                   ("--t", a["stress"]["t"]))

    def same_kind_inputs(self):
        """{flag name: file}: memorized documents and quotes and their never-trained controls of
        the same kinds, and the held-out text (activation ratio, per-example)."""
        return {"memorized": self.lm_data("forget"), "control": self.lm_data("control"),
                "quotes": self.lm_data("untargeted"),
                "control_quotes": self.lm_data("control_quotes"),
                "clean": self.lm_data("heldout")}

    # ------------------------------------------------------------------- the jobs

    def analysis_jobs(self):
        """The analysis jobs this config runs (ANALYSIS_JOBS names)."""
        return [j for j in ANALYSIS_JOBS if self.analysis(job_domain(j)) is not None]

    @staticmethod
    def analysis_job_domain(job):
        """The domain whose model an analysis job loads (its resources are that domain's)."""
        return job_domain(job)

    @staticmethod
    def analysis_job_name(job):
        """The job's name, which its log and benchmark take (Layout.log)."""
        return f"{job_domain(job)}/analysis/{job}"

    def analysis_job_inputs(self, job):
        """{name: file(s)} a job reads."""
        domain = job_domain(job)
        inputs = {"model": self.model_input(domain)}
        if job != "lm_stability":
            inputs["eigen"] = self.analysis_eigen_files(domain)
        if job == "lm_model":
            inputs.update(self.same_kind_inputs())
        if job == "lm_sweep":  # stress: forget-validation; task interaction: quotes, tasks
            inputs.update(memorized=self.lm_data("forget_validation"),
                          quotes=self.lm_data("untargeted"), clean=self.lm_data("heldout"),
                          tasks=self.lm_data("tasks"), summary=self.paths.lm_report()["summary"],
                          edits=[self.edit_path("lm", k) for k in self.stress_edits()])
        if job in SLICING_JOBS:
            inputs["data"] = self.domain_data(domain)
        return inputs

    def analysis_job_outputs(self, job):
        """{NAME_json, NAME_figure: file} of each of the job's analyses and, for a job that
        collects the stability slices, {"slices": their eigen files} (kept: other analyses may
        read them)."""
        outputs = {f"{name}_{kind}": path for name in ANALYSIS_JOBS[job]
                   for kind, path in self.analysis_outputs(name).items()}
        if job in SLICING_JOBS:
            outputs["slices"] = self.stability_eigen_files(job_domain(job))
        return outputs

    def analysis_run(self, name):
        """The `curvmem analyze` arguments of one analysis (an `analyze batch --run` string)."""
        domain = "vit" if name.startswith("vit_") else "lm"
        command = name.removeprefix("vit_") if name in ("vit_spectra", "vit_stability") else name
        if command == "spectra":
            args = f"{self.analysis_flags(domain)} " + flags(("--rhos", self.sweep_rhos(domain)))
        elif command == "stability":
            args = self.stability_flags(domain)
        else:
            args = flags(("--model", self.model_arg(domain)))
            if command != "stress":
                args += f" {self.analysis_flags(domain)}"
            if domain == "vit":
                args += " " + flags(("--data", self.domain_data(domain)))
            elif command in ("activation_ratio", "per_example"):
                args += " " + flags(*((f"--{k.replace('_', '-')}", v)
                                      for k, v in self.same_kind_inputs().items()))
            elif command == "task_interaction":  # quotes: their retention is the untargeted one
                args += " " + flags(("--memorized", self.lm_data("untargeted")),
                                    ("--clean", self.lm_data("heldout")),
                                    ("--tasks", self.lm_data("tasks")))
            else:  # stress: never the forget set the selection reads
                args += " " + flags(("--memorized", self.lm_data("forget_validation")))
            if command in ("task_interaction", "stress"):
                args += " " + flags(("--summary", self.paths.lm_report()["summary"]))
            if command == "stress":
                args += f" {self.stress_flags()}"
        o = self.analysis_outputs(name)
        return f"{command.replace('_', '-')} {args} " + flags(("--out", o["json"]),
                                                              ("--figure", o["figure"]))

    def analysis_batch_flags(self, job):
        return flags(*(("--run", self.analysis_run(name)) for name in ANALYSIS_JOBS[job]))

    def analysis_names(self):
        """Every analysis this config runs, the LM's first."""
        return (ANALYSES if self.analysis("lm") else ()) + (
            VIT_ANALYSES if self.analysis("vit") else ())

    def analysis_targets(self):
        return [f for name in self.analysis_names()
                for f in self.analysis_outputs(name).values()]
