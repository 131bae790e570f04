"""The planner's resources and targets: what a run ends with, the multi-seed report, the
artifact kinds DVC shares, and the index of human labels -> paths."""

from __future__ import annotations

import json

from curvmem.plan.analyses import ANALYSES
from curvmem.plan.common import PlanError, flags
from curvmem.plan.config import seed_outdirs
from curvmem.plan.layout import Layout, seeds_outputs, sidecar_of
from curvmem.plan.sweeps import method_tag

# Artifact kinds, in data-flow order: one DVC stage and one `all_<kind>` target rule each
# (Plan.artifacts; docs/workflow.md, "Sharing with DVC")
KINDS = ("models", "factors", "eigen", "edits", "evaluations", "summaries", "analyses", "report")
# a rule's resources before the config's: memory (MB), runtime (minutes), GPUs
FLOOR = {"mem_mb": 2000, "runtime": 30, "gpu": 0}


class TargetPlan:
    """Part of `Plan`: resources per rule, the run's targets, sharing and the index."""

    # ------------------------------------------------------------------- resources

    def res(self, rule, domain=None):
        """Cluster resources and threads of a rule: built-in floor < resources.default <
        resources.RULE < {domain}.resources.RULE (so a 7B config can ask for more than the
        embedded default)."""
        r = {**FLOOR, "threads": self.config["threads"]}
        top = self.config.get("resources") or {}
        r.update(top.get("default", {}))
        r.update(top.get(rule, {}))
        if domain:
            r.update(((self.config[domain].get("resources") or {}).get(rule)) or {})
        return r

    def res_together(self, rules, domain=None):
        """Resources of one job that runs these rules' steps one after the other (an edit and its
        evaluations): the most memory, GPUs and threads any step asks for, the sum of runtimes."""
        each = [self.res(rule, domain) for rule in rules]
        return {key: (sum if key == "runtime" else max)(r[key] for r in each) for key in each[0]}

    # ------------------------------------------------------------------- targets

    def summaries(self):
        """Tables and figures (all report()-ed) that the HTML report shows."""
        files = []
        if self.study():
            files += list(self.study_outputs().values())
        if "lm" in self.domains:
            files += list(self.paths.lm_report().values()) + [
                self.paths.compare()["figure"], self.paths.compare()["table"]]
        if "vit" in self.domains:
            files += list(self.paths.vit_report().values())
        return files + self.analysis_targets()

    def final_targets(self):
        """What `snakemake` (rule `all`) builds; the multi-seed report is a target of its own
        (`seeds`), since it reads the other seeds' runs."""
        if not self.domains and not self.study():
            raise PlanError("the config has neither an `lm` nor a `vit` section (nor a `vit_study`): "
                            "nothing to do")
        readme = [self.readme_tables()] if self.domains else []
        return self.summaries() + readme + [self.report_html(), self.index_file()] + \
            self.harness_targets()

    def report_html(self):
        return self.paths.report_html()

    def readme_tables(self):
        """The README's results tables (curvmem report-readme), from this run's summaries."""
        return self.paths.readme_tables()

    def readme_inputs(self):
        files = {"lm": self.paths.lm_report()["summary"], "vit": self.paths.vit_report()["summary"]}
        inputs = {d: files[d] for d in self.domains}
        if self.analysis() is not None:
            inputs["analyses"] = [self.analysis_outputs(n)["json"] for n in ANALYSES]
        return inputs

    def readme_flags(self):
        inputs = self.readme_inputs()
        return flags(("--lm-summary", inputs.get("lm")), ("--vit-summary", inputs.get("vit")),
                     ("--analysis", self.paths.analysis_dir() if self.analysis() else None))

    # ------------------------------------------------------------------- a multi-seed study

    def seeds_outputs(self) -> dict:
        """Across the seeds of a multi-seed study (`curvmem report-seeds`, the `seeds` target);
        {} for one run."""
        if len(self.study_config.get("seeds", [])) < 2 or "lm" not in self.domains:
            return {}
        return seeds_outputs(self.study_config["outdir"])

    def seeds_inputs(self) -> list[str]:
        """Every seed's files that `report-seeds` reads (this run's among them)."""
        files = []
        for out in seed_outdirs(self.study_config).values():
            run = Layout(out)
            files += [run.lm_report()["summary"]] + (
                [run.vit_report()["summary"]] if "vit" in self.domains else []) + (
                [run.analysis_outputs(n)["json"] for n in ANALYSES]
                if self.analysis() is not None else [])
        return files

    def seeds_flags(self) -> str:
        return flags(*(("--seed-dir", f"{s}={out}")
                       for s, out in seed_outdirs(self.study_config).items()))

    # ------------------------------------------------------------------- sharing: kinds, index

    def artifacts(self) -> dict[str, list[str]]:
        """{kind: every file (or model directory) of that kind the DAG writes}, kinds as in KINDS,
        empty kinds left out; temporary shard files are no artifact."""
        found = {kind: [] for kind in KINDS}
        for d in self.domains:
            found["models"] += self.model_files(d)
            for fkey in self.factor_sets[d]:
                found["factors"] += self.layer_files(d, "factors", fkey).values()
                found["eigen"] += self.layer_files(d, "eigen", fkey).values()
            for key in self.edits[d]:
                path = self.edit_path(d, key)
                found["edits"] += [path, sidecar_of(path)]
            for key in self.eval_keys(d):
                found["evaluations"] += self.eval_files(d, key)
        found["summaries"] = [f for f in self.summaries() if f not in self.analysis_targets()]
        found["analyses"] = self.analysis_targets() + [
            f for d in ("lm", "vit") if self.analysis(d) is not None
            for f in self.stability_eigen_files(d)]
        found["report"] = [self.readme_tables(), self.report_html()]
        return {kind: files for kind, files in found.items() if files}

    def shared_outputs(self) -> dict[str, list[str]]:
        """{kind: the paths DVC tracks}: for the content-keyed kinds the directory per domain
        (`{out}/lm/eigen`: one entry in dvc.lock, yet each file in it can be pulled alone), for
        the others the files. Every artifact lies in exactly one of them (tests/test_dvc.py)."""
        tracked = {}
        for kind, files in self.artifacts().items():
            if kind in ("summaries", "report"):
                tracked[kind] = files
                continue
            depth = 1 if kind == "analyses" else 2  # {out}/analysis/..., {out}/lm/analysis/...
            tops = []
            for f in files:
                parts = f[len(self.out) + 1:].split("/")
                top = f"{self.out}/{'/'.join(parts[:depth])}"
                if kind == "analyses" and parts[0] in ("lm", "vit"):
                    top = f"{self.out}/{parts[0]}/analysis"
                if top not in tops:
                    tops.append(top)
            tracked[kind] = tops
        return tracked

    def index_file(self):
        """The map from human labels to content-keyed paths (`index` rule; committed to git)."""
        return self.paths.index_file()

    def index(self) -> dict:
        """Human labels -> paths, for every artifact (`Plan.artifacts`): per domain the model,
        the factors and eigenbases per factor set and layer, the edits and evaluations by label;
        then summaries, analyses and report by file name. docs/workflow.md shows how to pull
        one entry with DVC."""
        out = {"outdir": self.out}
        if self.configfiles is not None:
            out["configfiles"] = self.configfiles
        for d in self.domains:
            model = ({"dir": self.model_dir(d), "files": self.model_files(d)} if self.embedded(d)
                     else {"pretrained": self.model_arg(d)})
            entry = {"model": model, "factors": {}, "eigen": {}, "edits": {}, "evaluations": {}}
            for fkey, fs in self.factor_sets[d].items():
                for kind in ("factors", "eigen"):
                    entry[kind][fs["fset"]] = {
                        "key": fkey, "layers": {str(layer): path for layer, path
                                                in self.layer_files(d, kind, fkey).items()}}
            for key, spec in self.edits[d].items():
                path = self.edit_path(d, key)
                entry["edits"][spec["label"]] = {
                    "key": key, "method": method_tag(spec), "factors": spec["factors"]
                    if spec["method"] == "kfac" else None, "file": path, "sidecar": sidecar_of(path)}
            for key in self.eval_keys(d):
                entry["evaluations"][self.label(d, key)] = {
                    path.rsplit("/", 1)[1].removesuffix(".json"): path
                    for path in self.eval_files(d, key)}
            out[d] = entry
        kinds = self.artifacts()
        for kind in ("summaries", "report"):
            out[kind] = {path.rsplit("/", 1)[1]: path for path in kinds[kind]}
        if self.analysis_names():
            out["analyses"] = {name: self.analysis_outputs(name) for name in self.analysis_names()}
            for d, name in (("lm", "stability"), ("vit", "vit_stability")):
                if self.analysis(d) is not None:
                    out["analyses"][name]["slices"] = self.stability_slice_files(d)
        return out

    def index_text(self) -> str:
        """index.json as the `index` rule writes it (and git holds it)."""
        return json.dumps(self.index(), indent=1) + "\n"

    def index_stale(self, on_disk: str | None) -> bool:
        """Whether index.json must be written: it is missing or its text is not the plan's. The
        one reason the `index` rule runs: never a file's time (git gives a fresh clone's files
        the checkout's times, in any order), never Snakemake's metadata (a clone has none).

        Args:
            on_disk: the index file's text (None: missing or unreadable); the rules' glue reads
                it, the plan reads no file.

        Returns:
            True when it differs from `index_text`.
        """
        return on_disk != self.index_text()

    def owner_problem(self, on_disk: str | None) -> str | None:
        """Why this run may not write the outdir's shared files (summaries, tables, figures,
        report, index: paths without a content key), or None.

        Two configs sharing an outdir share its content-keyed artifacts, but each would
        overwrite the other's summaries; the index says whose they are.

        Args:
            on_disk: the outdir's index.json text, as the rules' glue read it (None: missing or
                unreadable).

        Returns:
            The reason when that index names other config files than this run's; None where it
            is missing, unreadable or older than this record, or outside a run.
        """
        if self.configfiles is None:
            return None
        try:
            theirs = json.loads(on_disk or "null")["configfiles"]
        except (ValueError, TypeError, KeyError):
            return None
        if not isinstance(theirs, list) or theirs == self.configfiles:
            return None
        return (f"outdir {self.out} holds the summaries, report and index of config "
                f"{', '.join(map(str, theirs))} (its {self.index_file()} says so); this run's config "
                f"{', '.join(self.configfiles)} would overwrite them. Give it an outdir of its own "
                f"(`outdir:` in the file, or --config outdir=...), or remove {self.index_file()} "
                "to hand the outdir over")
