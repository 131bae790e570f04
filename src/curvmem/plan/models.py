"""The planner's base models and data: embedded or pretrained, hub snapshots, data files."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from curvmem import presets
from curvmem.plan.common import PlanError, digest, flags, slug
from curvmem.plan.config import local_path
from curvmem.plan.layout import WORLD_MANIFEST


class ModelPlan:
    """Part of `Plan`: each domain's base model and the data files its jobs read."""

    def model_config(self, domain) -> dict:
        return self.config[domain]["model"]

    def embedded(self, domain) -> bool:
        return self.model_config(domain)["source"] == "embedded"

    def preset_settings(self, domain):
        """The embedded preset as the installed curvmem resolves it. Part of the model key, so new
        defaults in a curvmem upgrade build a new model instead of reusing a stale one."""
        if not self.embedded(domain):
            return None
        preset = self.model_config(domain).get("preset") or "default"
        if domain == "lm":
            return {"world": asdict(presets.world_config(preset)),
                    "train": asdict(presets.train_config(preset))}
        return presets.VISION_PRESETS[preset]

    def model_key(self, domain):
        c = self.config[domain]
        return digest({"model": c["model"], "data": c.get("data"),
                       "preset": self.preset_settings(domain)})

    def model_dir(self, domain):
        """Where an embedded model (and its world or data) is built."""
        return self.paths.model_dir(domain, self.model_key(domain))

    def hub_model(self, domain):
        """(hub id, revision or None) of a pretrained model named by hub id; None for an
        embedded model or a local directory. Such a model is downloaded once (`download_model`)
        into `snapshot_dir` and every job loads that directory."""
        m = self.model_config(domain)
        name = None if self.embedded(domain) else m.get("id")
        if name is None or local_path(name):
            if m.get("revision"):
                raise PlanError(f"config {domain}.model.revision: a revision needs a hub id in "
                                f"{domain}.model.id, not {m.get('id') or m.get('path')!r}")
            return None
        return name, m.get("revision")

    def snapshot_dir(self, domain):
        repo, revision = self.hub_model(domain)
        return self.paths.snapshot(self.paths.snapshot_name(slug(repo), slug(revision or "main")))

    def snapshots(self):
        """{snapshot directory: (hub id, revision)} of every model the workflow downloads."""
        return {self.snapshot_dir(d): self.hub_model(d) for d in self.domains
                if self.hub_model(d)}

    def uses_hub(self):
        """Whether the workflow fetches anything from a hub (then its jobs run with it off)."""
        return bool(self.snapshots() or self.fetched_data("tokens")
                    or self.fetched_data("texts"))

    def hub_environment(self, environ) -> tuple[dict, str]:
        """The environment the jobs need, and the user's own HF_HUB_OFFLINE.

        When the workflow fetches from a hub, jobs run with it off (HF_HUB_OFFLINE,
        HF_DATASETS_OFFLINE = 1), so they load only what the download rules fetched; those rules
        run with the user's own setting. It is kept as CURVMEM_USER_HF_HUB_OFFLINE because the
        Snakefile is parsed again inside each cluster job, whose environment has the hub off.
        The rules' glue sets the variables (the plan never changes the environment).

        Args:
            environ: the environment Snakemake runs in (read only).

        Returns:
            ({variable: value} to set, empty without a hub; the user's HF_HUB_OFFLINE).
        """
        user = environ.get("CURVMEM_USER_HF_HUB_OFFLINE", environ.get("HF_HUB_OFFLINE", "0"))
        if not self.uses_hub():
            return {}, user
        return {"CURVMEM_USER_HF_HUB_OFFLINE": user, "HF_HUB_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1"}, user

    def model_arg(self, domain):
        """The --model argument: a directory built or downloaded here, or a local path."""
        m = self.model_config(domain)
        if self.embedded(domain):
            return self.paths.trained_model(self.model_dir(domain))
        if "id" not in m and "path" not in m:
            raise PlanError(f"config {domain}.model: a pretrained model needs "
                            f"{'`id` (hub id or directory)' if domain == 'lm' else '`path` or `id`'}")
        if self.hub_model(domain):
            return self.snapshot_dir(domain)
        return m.get("id") or m.get("path")

    def model_input(self, domain):
        """Input files for rules that load the base model (empty for a user's directory)."""
        if self.embedded(domain) or self.hub_model(domain):
            return [self.model_arg(domain)]
        return []

    def model_flags(self, domain, *keys):
        """`--key value` for these keys of `{domain}.model`, in order (snake_case ->
        --kebab-case; a (flag, key) pair spells another flag); unset keys are left out."""
        m = self.model_config(domain)
        pairs = [k if isinstance(k, tuple) else (k, k) for k in keys]
        return flags(*((f"--{f.replace('_', '-')}", m.get(k)) for f, k in pairs))

    def model_files(self, domain):
        """What building an embedded model writes (world or data, tokenizer, model); [] when the
        model is pretrained (a hub id or the user's path is no artifact of the workflow)."""
        if not self.embedded(domain):
            return []
        if domain == "lm":
            return self.world_outputs() + [self.tokenizer_dir(), self.model_arg("lm")]
        return [self.vit_data(), self.model_arg("vit")]

    # ------------------------------------------------------------------- the LM's world, data

    def world_dir(self):
        return self.paths.world_dir(self.model_dir("lm"))

    def world_file(self, name):
        return self.paths.world_file(self.model_dir("lm"), name)

    def world_manifest(self):
        """world.json: the settings the world was generated with (curvmem world)."""
        return self.world_file(WORLD_MANIFEST)

    def world_outputs(self):
        return [self.world_manifest()] + [self.world_file(f)
                                          for f in self.config["lm"]["data"].values()]

    def tokenizer_dir(self):
        return self.paths.tokenizer(self.model_dir("lm"))

    def lm_data(self, name):
        """A named LM data set (`lm.data`): a world file (embedded), the user's path, or where a
        local rule puts a public source (`fetched_data`)."""
        data = self.config["lm"].get("data") or {}
        if name not in data:
            raise PlanError(f"config lm.data has no entry '{name}' (known: {sorted(data)}); "
                            f"add `{name}: FILE.jsonl` under lm.data")
        if self.embedded("lm"):
            return self.world_file(data[name])
        fetched = self._fetched_entry(name)
        return fetched[0] if fetched else data[name]

    def corpus_tokens(self):
        """Tokens a pre-tokenized corpus must hold: the largest factor set's budget, and the
        stability slices' (two slices of 2 x size positions each)."""
        need = [self.factor_config("lm", fs)["tokens"] for fs in ("main", "control")]
        if self.analysis() is not None:
            need.append(2 * max(self.analysis()["stability"]["sizes"]))
        return max(need)

    def _fetched_entry(self, name):
        """(path, kind, curvmem flags) of an lm.data entry a local rule fetches, else None.
        kind: tokens (an hf: corpus, pre-tokenized), texts (an hf: dataset's texts as JSONL),
        url (a released file, checked against its sha256)."""
        value = self.config["lm"]["data"][name]
        if isinstance(value, str) and not value.startswith("hf:"):
            return None
        stem = slug(name)
        if isinstance(value, dict) and "url" in value:
            suffix = "".join(Path(value["url"].split("?")[0]).suffixes[-1:]) or ".jsonl"
            return (self.paths.fetched(f"{stem}-{value['sha256'][:10]}{suffix}", "url"), "url",
                    flags(("--url", value["url"]), ("--sha256", value["sha256"])))
        source, rows = (value, None) if isinstance(value, str) else (value["hf"], value.get("rows"))
        if name == "corpus":
            if rows is not None:
                raise PlanError("config lm.data.corpus: give the corpus as an 'hf:...' string; "
                                "how much of it is read follows lm.factors.tokens")
            tokens = self.corpus_tokens()
            key = digest({"source": source, "model": self.hub_model("lm") or self.model_arg("lm"),
                          "tokens": tokens})
            return (self.paths.fetched(f"{stem}-{key}", "tokens"), "tokens",
                    flags(("--model", self.model_arg("lm")), ("--data", source),
                          ("--tokens", tokens)))
        key = digest({"source": source, "rows": rows})
        return (self.paths.fetched(f"{stem}-{key}", "texts"), "texts",
                flags(("--data", source), ("--rows", rows)))

    def fetched_data(self, kind):
        """{path: curvmem flags} of the lm.data entries of this kind that local rules fetch."""
        if "lm" not in self.domains or self.embedded("lm"):
            return {}
        entries = [self._fetched_entry(n) for n in self.config["lm"].get("data") or {}]
        return {e[0]: e[2] for e in entries if e and e[1] == kind}

    def vit_data(self):
        if self.embedded("vit"):
            return self.paths.vision_data(self.model_dir("vit"))
        if not self.config["vit"].get("data"):
            raise PlanError("config vit.data: a pretrained ViT needs its data file "
                            "(safetensors, see docs/vision.md)")
        return self.config["vit"]["data"]

    def domain_data(self, domain):
        """What factor collection reads: the LM's curvature corpus (`lm.data.curvature`, kept
        apart from what is memorized) where the config names one, else its training corpus."""
        if domain != "lm":
            return self.vit_data()
        return self.lm_data("curvature" if "curvature" in self.config["lm"]["data"] else "corpus")

    def memorized_data(self):
        """The memorized sets whose occurrences factor collection counts (`memorized_positions`
        in each factor file): every memorization evaluation's data set."""
        evals = self.config["lm"]["evaluations"]
        names = sorted({e["data"] for e in evals.values() if e["kind"] == "memorization"})
        return [self.lm_data(n) for n in names]

    def memorized_inputs(self, domain):
        return self.memorized_data() if domain == "lm" else []
