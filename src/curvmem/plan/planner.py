"""`Plan`: everything the workflow builds for one config, assembled from the planner's parts."""

from __future__ import annotations

from curvmem.plan.analyses import AnalysisPlan
from curvmem.plan.common import PlanError
from curvmem.plan.config import (
    check_name,
    check_outdir,
    check_path,
    configfile_names,
    model_layers,
    seeded_config,
)
from curvmem.plan.edits import EditPlan
from curvmem.plan.evaluations import REPORT_LM_NEEDS, EvaluationPlan
from curvmem.plan.layout import Layout
from curvmem.plan.models import ModelPlan
from curvmem.plan.study import StudyPlan
from curvmem.plan.targets import TargetPlan


class Plan(ModelPlan, EditPlan, EvaluationPlan, AnalysisPlan, StudyPlan, TargetPlan):
    """Everything the workflow builds for one config: keys, paths, sweeps, flags, resources.

    Each part (a base class, one module each) plans one concern; all read the attributes set
    here: `config` (this run's: `seeded_config`), `study_config` (as written), `out` and
    `paths` (its `Layout`), `domains`, `edits`, `base`, `factor_sets`, `configfiles`.
    Every method returns data: none reads a file of the outdir or changes the environment
    (the rules' glue, workflow/rules/common.smk, does both).

    Construction checks what the schema cannot (sweeps, factor modules, report evaluations) and
    raises `PlanError` before any job runs.
    """

    def __init__(self, config: dict, configfiles=None):
        """Plan one config.

        Args:
            config: the workflow config, validated against its schema (defaults filled in).
            configfiles: the files the config was read from (the index records them, and an
                outdir whose index names other files is refused: `owner_problem`); None
                outside a run.

        Raises:
            PlanError: the config asks for something the workflow cannot plan.
        """
        check_outdir(config["outdir"])
        self.configfiles = None if configfiles is None else configfile_names(configfiles)
        self.study_config = config
        config = seeded_config(config)
        self.config = config
        self.out = config["outdir"].rstrip("/")
        self.paths = Layout(self.out)
        self._check_names()
        self.domains = [d for d in ("lm", "vit") if config.get(d)]
        self.edits = {d: self.expand_edits(d) for d in self.domains}
        self.base = {d: f"base-{self.model_key(d)}" for d in self.domains}
        self.factor_sets = {d: self._factor_sets(d) for d in self.domains}
        for d in self.domains:
            self._check_layers(d)
        if "lm" in self.domains:
            missing = [n for n in REPORT_LM_NEEDS if n not in config["lm"]["evaluations"]]
            if missing:
                raise PlanError(f"config lm.evaluations lacks {missing}: curvmem report-lm needs "
                                f"{REPORT_LM_NEEDS} (tasks and coherence are optional); see docs/workflow.md")
            self._check_analysis("lm")
        if "vit" in self.domains:
            self._check_analysis("vit")

    def _check_names(self) -> None:
        """Every name that becomes a path component, and every user path the DAG reads."""
        for d in ("lm", "vit"):
            c = self.config.get(d) or {}
            for kind in ("edits", "evaluations", "factor_variants"):
                for name in c.get(kind) or {}:
                    check_name(f"{d}.{kind}.{name}", name)
            for key in ("id", "path"):
                check_path(f"{d}.model.{key}", (c.get("model") or {}).get(key))
            data = c.get("data")
            for name, value in (data.items() if isinstance(data, dict) else []):
                if (c.get("model") or {}).get("source") == "embedded":
                    check_name(f"{d}.data.{name}", value)  # a file of the generated world
                else:
                    check_path(f"{d}.data.{name}", value)
            if isinstance(data, str):
                check_path(f"{d}.data", data)

    def _check_layers(self, domain) -> None:
        """Every edited layer exists in the model (a dry run fails now, not the job hours
        later)."""
        n = model_layers(domain, self.model_config(domain))
        if n is None:
            return
        for spec in self.edits[domain].values():
            bad = [layer for layer in spec.get("layers", []) if not 0 <= layer < n]
            if bad:
                raise PlanError(f"config {domain}.edits.{spec['name']} ({spec['label']}): "
                                f"layers {bad} do not exist; the model has layers 0..{n - 1}")
