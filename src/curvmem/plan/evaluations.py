"""The planner's evaluations of base models and edits, their reports, and the harness."""

from __future__ import annotations

from curvmem.plan.common import PlanError, digest, flags
from curvmem.plan.layout import VIT_EVALUATION
from curvmem.plan.sweeps import MADE_WITH_EVALUATION

# `curvmem report-lm` reads these evaluation files from each entry's directory (docs/lm.md)
# (tasks and coherence are optional: a config may score skills with lm-evaluation-harness only)
REPORT_LM_NEEDS = ["memorization_forget", "memorization_untargeted", "memorization_control",
                   "perplexity"]


class EvaluationPlan:
    """Part of `Plan`: one evaluation job per base model and edit, the reports reading them,
    lm-evaluation-harness on exported edits."""

    def eval_keys(self, domain):
        return [self.base[domain]] + list(self.edits[domain])

    def evaluation(self, name):
        """One entry of lm.evaluations: {"kind": ..., "data": ...}."""
        return self.config["lm"]["evaluations"][name]

    def lm_evaluations(self, key):
        """Evaluation names that apply to `key` (coherence compares an edit with the base)."""
        evals = self.config["lm"]["evaluations"]
        return [n for n, e in evals.items()
                if not (key == self.base["lm"] and e["kind"] == "coherence")]

    def lm_eval_files(self, key):
        return [self.paths.eval_file("lm", name, key) for name in self.lm_evaluations(key)]

    def lm_eval_outputs(self, base: bool):
        """A rule's evaluation files, `{key}` a wildcard: the base model's, or any edit's."""
        evaluations = self.lm_evaluations(self.base["lm"] if base else None)
        return [self.paths.eval_file("lm", name) for name in evaluations]

    def vit_eval_output(self):
        """A rule's ViT evaluation file, `{key}` a wildcard."""
        return self.paths.eval_file("vit", VIT_EVALUATION)

    def eval_files(self, domain, key):
        return (self.lm_eval_files(key) if domain == "lm"
                else [self.paths.eval_file("vit", VIT_EVALUATION, key)])

    def made_with_evaluation(self, domain, key) -> bool:
        """True for an edit whose job makes it and then evaluates it (MADE_WITH_EVALUATION)."""
        return key != self.base[domain] and \
            self.edits[domain][key]["method"] in MADE_WITH_EVALUATION

    def _edited_inputs(self, domain, key):
        """What evaluating `key` needs beyond the model and data: the edit's own inputs when the
        job makes the edit, else the edit file."""
        if key == self.base[domain]:
            return []
        if self.made_with_evaluation(domain, key):
            return self.edit_inputs(domain, key)
        return [self.edit_path(domain, key)]

    def lm_eval_inputs(self, key):
        """What the evaluation job of `key` reads: the model, every evaluation's data, the edit
        (or, for an edit the job makes, the edit's eigenbases)."""
        data = dict.fromkeys(self.lm_data(self.evaluation(n)["data"])
                             for n in sorted(self.lm_evaluations(key)))
        files = self.model_input("lm") + list(data) + self._edited_inputs("lm", key)
        return list(dict.fromkeys(files))

    def lm_eval_runs(self, key):
        """`--run KIND DATA OUT` for each evaluation of `key`: one `curvmem evaluate batch` job
        per model or edit, so the model loads once, not once per evaluation."""
        runs = []
        for name in sorted(self.lm_evaluations(key)):  # the config's order is no rerun reason
            ev = self.evaluation(name)
            runs.append(("--run", ev["kind"], self.lm_data(ev["data"]),
                         self.paths.eval_file("lm", name, key)))
        return flags(*runs)

    def vit_eval_inputs(self, key):
        files = self.model_input("vit") + [self.vit_data()] + self._edited_inputs("vit", key)
        return list(dict.fromkeys(files))

    def edit_flag(self, domain, key):
        return "" if key == self.base[domain] else flags(("--edit", self.edit_path(domain, key)))

    def label(self, domain, key):
        return "base" if key == self.base[domain] else self.edits[domain][key]["label"]

    # ------------------------------------------------------------------- the reports

    def report_inputs(self, domain):
        """Every evaluation file the domain's report reads."""
        return [f for k in self.eval_keys(domain) for f in self.eval_files(domain, k)]

    def report_lm_flags(self):
        """report-lm's column titles and the paper's Dolma column (lm.report), when set."""
        r = self.config["lm"].get("report") or {}
        labels = [("--label", f"{k}={v}") for k, v in sorted((r.get("labels") or {}).items())]
        return flags(*labels, ("--paper-dolma", r.get("paper_dolma")))

    def report_entries(self, domain):
        """--entry NAME=PATH for the report commands: an eval directory (lm) or file (vit)."""
        if domain == "lm":
            pairs = [(self.label("lm", k), self.paths.eval_dir("lm", k))
                     for k in self.eval_keys("lm")]
        else:
            pairs = [(self.label("vit", k), self.paths.eval_file("vit", VIT_EVALUATION, k))
                     for k in self.eval_keys("vit")]
        return flags(*(("--entry", f"{n}={p}") for n, p in pairs))

    # ------------------------------------------------------------------- harness, export

    def harness(self) -> dict | None:
        """`lm.harness` (lm-evaluation-harness on the base model and exported edits), or None."""
        return (self.config.get("lm") or {}).get("harness") if "lm" in self.domains else None

    def harness_keys(self):
        """The base model and the edits the harness scores (each edit exported first)."""
        labels = self.harness().get("edits")
        edits = self.edits["lm"]
        if labels is not None:
            unknown = sorted(set(labels) - {s["label"] for s in edits.values()})
            if unknown:
                raise PlanError(f"config lm.harness.edits: no edit is labelled {unknown} "
                                f"(labels: {sorted(s['label'] for s in edits.values())})")
        return [self.base["lm"]] + [k for k, s in edits.items()
                                    if labels is None or s["label"] in labels]

    def export_dir(self, key):
        """base + edit `key` as a Hugging Face checkpoint (curvmem export)."""
        return self.paths.export_dir(key)

    def harness_model(self, key):
        return self.model_arg("lm") if key == self.base["lm"] else self.export_dir(key)

    def harness_tasks_dir(self):
        """The local harness tasks written from lm.harness.local_tasks, or None."""
        name = self.harness().get("local_tasks")
        if name is None:
            return None
        return self.paths.harness_tasks_dir(
            digest({"data": self.lm_data(name), "model": self.model_key("lm")}))

    def harness_inputs(self, key):
        files = ([self.export_dir(key)] if key != self.base["lm"] else self.model_input("lm"))
        return files + ([self.harness_tasks_dir()] if self.harness_tasks_dir() else [])

    def harness_flags(self, key):
        h = self.harness()
        return flags(("--model", self.harness_model(key)), ("--tasks", h["tasks"]),
                     ("--include-path", self.harness_tasks_dir()),
                     ("--batch-size", h.get("batch_size")), ("--limit", h.get("limit")),
                     ("--dtype", self.model_config("lm").get("dtype")))

    def harness_targets(self):
        if self.harness() is None:
            return []
        return [self.paths.harness_result(k) for k in self.harness_keys()]
