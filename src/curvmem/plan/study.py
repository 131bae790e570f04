"""The planner's ViT study (`vit_study`; docs/vision.md, "The study"): a grid of embedded ViTs,
one in-process cell per model and, with `decide`, the experiments deciding Table 2."""

from __future__ import annotations

import itertools

from curvmem import presets
from curvmem.plan.common import PlanError, digest, flags

# the experiments that decide Table 2 (vit_study.decide; curvmem vit-study-experiment)
STUDY_EXPERIMENTS = ("oracle", "knockout", "probe", "plant")


class StudyPlan:
    """Part of `Plan`: the `vit_study` section."""

    def study(self) -> dict | None:
        """The `vit_study` section (docs/vision.md, "The study"), or None."""
        return self.config.get("vit_study")

    def study_dir(self):
        return self.paths.study_dir()

    def study_datasets(self) -> dict:
        """{name: vision-data settings}: `main` (the section's `data`) and each of `datasets`
        (the main settings with its keys replaced; a grid group picks one with `data`)."""
        st = self.study()
        extra = st.get("datasets", {})
        if "main" in extra:
            raise PlanError("config vit_study.datasets: 'main' names the `data` dataset")
        return {"main": dict(st["data"]), **{n: {**st["data"], **d} for n, d in extra.items()}}

    def study_data(self, name: str = "main"):
        return self.paths.study_data(name)

    def study_data_flags(self, name: str = "main"):
        d = self.study_datasets()[name]
        return flags(("--seed", d.get("seed")), ("--noise", d.get("noise")),
                     ("--val-fraction", d.get("val_fraction")),
                     ("--heldout-fraction", d.get("heldout_fraction")),
                     ("--watermark", d.get("watermark")), ("--source", d.get("source")))

    def study_models(self) -> dict:
        """{model key: settings} for every trained model of the study: each `grid` group is
        the product of its lists, over the `train` settings; a setting two groups share is
        trained once. A key reads as the setting (and its dataset, where not the main one),
        plus a hash of it, the data and the preset."""
        st = self.study()
        datasets = self.study_datasets()
        models = {}
        for name, group in st["grid"].items():
            keys = list(group)
            for values in itertools.product(*(group[k] for k in keys)):
                settings = {**st.get("train", {}), **dict(zip(keys, values))}
                preset = settings.get("preset", "default")
                if preset not in presets.VISION_PRESETS:
                    raise PlanError(f"config vit_study.grid.{name}: unknown preset '{preset}'")
                data = settings.get("data", "main")
                if data not in datasets:
                    raise PlanError(f"config vit_study.grid.{name}: no dataset '{data}' (the "
                                    f"datasets: {sorted(datasets)})")
                size = {**presets.VISION_PRESETS[preset]["model"], **settings}
                tag = (f"w{size['embed_dim']}-d{size['depth']}-p{size['patch_size']}-"
                       f"wd{settings.get('weight_decay', 'preset')}-"
                       f"{settings.get('decay', 'all')}-s{settings.get('seed', 0)}"
                       + ("" if data == "main" else f"-{data}"))
                key = f"{tag}-" + digest({"settings": settings, "data": datasets[data],
                                          "preset": presets.VISION_PRESETS[preset]})
                models[key] = settings
        return models

    def study_model_data(self, key):
        """The dataset file a study model trains on and is measured with."""
        return self.study_data(self.study_models()[key].get("data", "main"))

    def study_train_flags(self, key):
        s = {k: v for k, v in self.study_models()[key].items() if k != "data"}
        return flags(*((f"--{k.replace('_', '-')}", s[k]) for k in sorted(s)))

    def study_cell(self, key):
        return self.paths.study_cell(key)

    def _study_selection_flags(self):
        c = self.study()["cell"]
        return (("--selection-fraction", c.get("selection_fraction")),
                ("--selection-seed", c.get("selection_seed")))

    def study_cell_flags(self):
        c = self.study()["cell"]

        def sets(layer_sets):
            return ";".join(",".join(map(str, s)) for s in layer_sets)

        return flags(("--images", c["images"]), ("--kfac-layers", sets(c["kfac_layers"])),
                     ("--rho", c["rho"]), ("--svd-layers", sets(c["svd_layers"])),
                     ("--svd-drop", c["svd_drop"]), ("--modules", c["modules"]),
                     ("--fisher", c.get("fisher")), ("--seed", c.get("seed")),
                     ("--batch-size", c.get("batch_size")), ("--positions", c.get("positions")),
                     *self._study_selection_flags())

    def study_decide(self) -> dict | None:
        """The `vit_study.decide` section (docs/vision.md, "Deciding Table 2"), or None."""
        return self.study().get("decide")

    def study_experiments(self) -> dict:
        """{experiment: [model keys]}: each experiment of `decide` on the models whose dataset
        is one of its `datasets`."""
        decide, models = self.study_decide() or {}, self.study_models()
        return {exp: [k for k, s in models.items()
                      if s.get("data", "main") in decide[exp].get("datasets", ["main"])]
                for exp in STUDY_EXPERIMENTS if exp in decide}

    def study_experiment(self, experiment, key):
        return self.paths.study_experiment(experiment, key)

    def study_experiment_data(self, experiment, key):
        """The dataset an experiment reads: the model's own, or for `plant` (the positive
        control planted in the edited weights) the dataset named by `plant.data`."""
        if experiment == "plant":
            name = self.study_decide()["plant"]["data"]
            if name not in self.study_datasets():
                raise PlanError(f"config vit_study.decide.plant.data: no dataset '{name}'")
            return self.study_data(name)
        return self.study_model_data(key)

    def study_experiment_command(self, experiment):
        """The curvmem command and flags of an experiment (without --model, --data, --out):
        `plant` is a study cell whose model first gets the labels planted."""
        e = (self.study_decide() or {}).get(experiment, {})
        if experiment == "plant":
            return "vit-study-cell " + self.study_cell_flags() + " " + flags(
                ("--plant-epochs", e.get("epochs", 20)), ("--plant-layers", e.get("layers")),
                ("--plant-modules", e.get("modules")), ("--plant-lr", e.get("lr")))
        return "vit-study-experiment " + flags(
            ("--experiment", experiment), ("--layers", e.get("layers")),
            ("--modules", e.get("modules")), ("--epochs", e.get("epochs")), ("--lr", e.get("lr")),
            ("--seed", e.get("seed")), *self._study_selection_flags())

    def study_report_inputs(self) -> list[str]:
        """The cells, and with `decide` every experiment's result."""
        cells = [self.study_cell(k) for k in self.study_models()]
        return cells + [self.study_experiment(e, k)
                        for e, keys in self.study_experiments().items() for k in keys]

    def study_report_command(self) -> str:
        """The curvmem command (and its flags) that reports the study."""
        decide = self.study_decide()
        if decide is None:
            return "report-vit-study"
        return "report-vit-decide " + flags(("--control-images", decide.get("control_images")))

    def study_outputs(self) -> dict:
        return self.paths.study_report("vit_decide" if self.study_decide() is not None
                                       else "vit_study")
