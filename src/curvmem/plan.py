"""The workflow's plan: turn a (validated) workflow config into the artifacts to build.

Torch-free (standard library and `curvmem.presets` only), so Snakemake imports it at parse time;
`workflow/rules/common.smk` keeps only the glue (wildcards -> these methods). Nothing here computes
anything about models: it only names files, derives content keys and spells `curvmem` flags.
Layout under `outdir` (`Plan.out`):

    {domain}/models/{model_key}/...        embedded world, tokenizer, trained model (lm) or data + model (vit)
    {domain}/factors/{fkey}/layer_L.nc     K-FAC factors of one factor set (sharded: shard-k-of-n/ + merge)
    {domain}/eigen/{fkey}/layer_L.nc       their eigendecomposition
    {domain}/edits/{key}.safetensors|.json one edit (K-FAC or SVD);  lm/bsn/{key}.* for BalancedSubnet
    {domain}/eval/{key}/{evaluation}.json  one evaluation of the base model (key base-...) or an edit
    lm_summary.json, vit_summary.json, compare.*, report.html

Keys are content hashes: a factor set's key covers the model config and the factor settings; an
edit's key covers its spec, its factor set's key and the model config. A changed spec therefore
lands in a new file (old results stay), and an unchanged one is never recomputed.
tests/data/plan_keys.json pins the keys of every shipped config.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import shlex
from dataclasses import asdict

from curvmem import presets

NEVER = "(?!x)x"  # a wildcard constraint that matches nothing
# `curvmem report-lm` reads these evaluation files from each entry's directory (docs/lm.md)
REPORT_LM_NEEDS = ["memorization_forget", "memorization_untargeted", "memorization_control",
                   "perplexity", "tasks"]


# `curvmem analyze` subcommands the workflow runs when the config has `lm.analysis`
ANALYSES = ("activation_ratio", "task_interaction", "spectra", "per_example", "stability",
            "stress")


class PlanError(ValueError):
    """A config the workflow cannot plan (the schema passed, but it asks for the impossible)."""


def schema_problem(error):
    """The most specific reason a workflow config failed its schema, as `path.to.key: what is
    wrong` (Snakemake's `validate` raises a WorkflowError while handling the jsonschema error)."""
    import jsonschema

    cause = error.__context__  # snakemake raises its WorkflowError while handling this one
    if not isinstance(cause, jsonschema.ValidationError):
        return str(error)
    if cause.context:  # oneOf / anyOf: report the alternative that came closest
        cause = jsonschema.exceptions.best_match(cause.context)
    where = ".".join(map(str, cause.absolute_path)) or "(top level)"
    return f"{where}: {cause.message}"


def digest(obj, n=10):
    """Short content hash of a JSON-able object (key order does not matter)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def flags(*pairs):
    """`--name value` pairs -> one shell-quoted string; pairs whose value is None are left out."""
    out = []
    for name, value in pairs:
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        out += [name, shlex.quote(str(value))]
    return " ".join(out)


def one_of(names):
    """A regex matching exactly these wildcard values (or nothing when there are none)."""
    return "|".join(re.escape(n) for n in names) if names else NEVER


def _value_tag(value):
    """rho / drop in a label: 0.6, or per module: gate0.5-up0.005."""
    if isinstance(value, dict):
        return "-".join(f"{m.split('.')[-1].removesuffix('_proj')}{v}" for m, v in value.items())
    return str(value)


def sweep_specs(domain, name, sweep):
    """One sweep of the config (list-valued keys) -> [(label, spec)]."""
    method = sweep["method"]
    needs = {"kfac": ["layers", "modules", "rho"], "svd": ["layers", "modules", "svd_drop"],
             "bsn": ["ratio"]}[method]
    missing = [k for k in needs if k not in sweep]
    if missing:
        raise PlanError(f"config {domain}.edits.{name}: method {method} needs {missing}")
    if method == "bsn" and domain != "lm":
        raise PlanError(f"config {domain}.edits.{name}: bsn is a language-model baseline")
    out = []
    if method == "bsn":
        fixed = {k: sweep[k] for k in ("alpha", "epochs", "lr", "seed", "seq_len", "batch_size")
                 if k in sweep}
        for ratio in sweep["ratio"]:
            spec = {"name": name, "method": "bsn", "ratio": ratio, **fixed}
            out.append((f"{name}-ratio{ratio}", spec))
        return out
    value_key = "rho" if method == "kfac" else "svd_drop"
    for layers, value in itertools.product(sweep["layers"], sweep[value_key]):
        if isinstance(value, dict) and set(value) - set(sweep["modules"]):
            raise PlanError(f"config {domain}.edits.{name}: {value_key} names modules "
                            f"{sorted(set(value) - set(sweep['modules']))} not in `modules`")
        spec = {"name": name, "method": method, "layers": sorted(layers),
                "modules": sweep["modules"], value_key: value}
        if method == "kfac":
            spec["keep"] = sweep.get("keep", "top")
            spec["factors"] = sweep.get("factors", "main")
            if "seed" in sweep:
                spec["seed"] = sweep["seed"]
        tag = "rho" if method == "kfac" else "drop"
        layer_tag = "+".join(map(str, spec["layers"]))
        out.append((f"{name}-L{layer_tag}-{tag}{_value_tag(value)}", spec))
    return out


def method_tag(spec):
    """The sidecar's method label (docs/ARCHITECTURE.md): kfac, kfac-bottom, -random, -shard, svd."""
    if spec["method"] != "kfac":
        return spec["method"]
    if spec["keep"] != "top":
        return f"kfac-{spec['keep']}"
    return "kfac-shard" if spec["factors"] == "control" else "kfac"


class Plan:
    """Everything the workflow builds for one config: keys, paths, sweeps, flags, resources.

    Construction checks what the schema cannot (sweeps, factor modules, report evaluations) and
    raises `PlanError` before any job runs.
    """

    def __init__(self, config: dict):
        self.config = config
        self.out = config["outdir"].rstrip("/")
        self.domains = [d for d in ("lm", "vit") if config.get(d)]
        self.edits = {d: self.expand_edits(d) for d in self.domains}
        self.base = {d: f"base-{self.model_key(d)}" for d in self.domains}
        self.factor_sets = {d: self._factor_sets(d) for d in self.domains}
        if "lm" in self.domains:
            missing = [n for n in REPORT_LM_NEEDS if n not in config["lm"]["evaluations"]]
            if missing:
                raise PlanError(f"config lm.evaluations lacks {missing}: curvmem report-lm needs "
                                f"{REPORT_LM_NEEDS} (coherence is optional); see docs/workflow.md")
            self._check_analysis()

    # ----------------------------------------------------------------------- base models

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
        return f"{self.out}/{domain}/models/{self.model_key(domain)}"

    def model_arg(self, domain):
        """The --model argument: a directory built here, a local path or a hub id."""
        m = self.model_config(domain)
        if self.embedded(domain):
            return f"{self.model_dir(domain)}/model"
        if "id" not in m and "path" not in m:
            raise PlanError(f"config {domain}.model: a pretrained model needs "
                            f"{'`id` (hub id or directory)' if domain == 'lm' else '`path`'}")
        return m.get("id") or m.get("path")

    def model_input(self, domain):
        """Input files for rules that load the base model (empty for a hub id or a user path)."""
        return [self.model_arg(domain)] if self.embedded(domain) else []

    def model_flags(self, domain, *keys):
        """`--key value` for these keys of `{domain}.model`, in order (snake_case ->
        --kebab-case; a (flag, key) pair spells another flag); unset keys are left out."""
        m = self.model_config(domain)
        pairs = [k if isinstance(k, tuple) else (k, k) for k in keys]
        return flags(*((f"--{f.replace('_', '-')}", m.get(k)) for f, k in pairs))

    def world_file(self, name):
        return f"{self.model_dir('lm')}/world/{name}"

    def world_outputs(self):
        return [self.world_file("world.json")] + [self.world_file(f)
                                                   for f in self.config["lm"]["data"].values()]

    def lm_data(self, name):
        """A named LM data set (`lm.data`): a world file (embedded) or the user's path."""
        data = self.config["lm"].get("data") or {}
        if name not in data:
            raise PlanError(f"config lm.data has no entry '{name}' (known: {sorted(data)}); "
                            f"add `{name}: FILE.jsonl` under lm.data")
        return self.world_file(data[name]) if self.embedded("lm") else data[name]

    def vit_data(self):
        if self.embedded("vit"):
            return f"{self.model_dir('vit')}/data.safetensors"
        if not self.config["vit"].get("data"):
            raise PlanError("config vit.data: a pretrained ViT needs its data file "
                            "(safetensors, see docs/vision.md)")
        return self.config["vit"]["data"]

    def domain_data(self, domain):
        """What factor collection reads."""
        return self.lm_data("corpus") if domain == "lm" else self.vit_data()

    # ----------------------------------------------------------------------- factor sets

    def factor_config(self, domain, fset):
        f = dict(self.config[domain]["factors"])
        if fset == "control":
            f.update(self.config[domain].get("control_factors") or {})
        return f

    def factor_key(self, domain, fset):
        return f"{fset}-" + digest({"model": self.model_key(domain),
                                    "factors": self.factor_config(domain, fset)})

    def _factor_sets(self, domain):
        """{fkey: {"fset": name, "layers": [...], "shards": n}} for the sets kfac edits use."""
        sets = {}
        for spec in self.edits[domain].values():
            if spec["method"] != "kfac":
                continue
            fs = sets.setdefault(spec["fkey"], {"fset": spec["factors"], "layers": set()})
            fs["layers"].update(spec["layers"])
            known = self.factor_config(domain, spec["factors"])["modules"]
            extra = sorted(set(spec["modules"]) - set(known))
            if extra:
                raise PlanError(f"config {domain}.edits.{spec['name']}: modules {extra} are not "
                                f"in {domain}.factors.modules {known}; add them there")
        for fs in sets.values():
            fs["layers"] = sorted(fs["layers"])
            fs["shards"] = self.factor_config(domain, fs["fset"])["shards"]
        return sets

    def fkeys(self, sharded):
        return [k for d in self.domains for k, fs in self.factor_sets[d].items()
                if (fs["shards"] > 1) == sharded]

    def collect_flags(self, domain, fkey):
        f = self.factor_config(domain, self.factor_sets[domain][fkey]["fset"])
        return flags(("--modules", f["modules"]), ("--tokens", f["tokens"]),
                     ("--seq-len", f.get("seq_len") if domain == "lm" else None),
                     ("--batch-size", f["batch_size"]), ("--fisher", f["fisher"]),
                     ("--seed", f["seed"]), ("--dtype", f["dtype"]),
                     ("--checkpoint-every", f["checkpoint_every"] or None))

    def shard_files(self, domain, fkey, layer):
        n = self.factor_sets[domain][fkey]["shards"]
        return [f"{self.out}/{domain}/factors/{fkey}/shard-{k}-of-{n}/layer_{layer}.nc"
                for k in range(n)]  # curvmem counts shards from 0

    # ----------------------------------------------------------------------- edits

    def expand_edits(self, domain):
        """{key: spec} for every edit the config's sweeps ask for; spec["label"] names it."""
        edits, labels = {}, set()
        for name, sweep in self.config[domain]["edits"].items():
            for label, spec in sweep_specs(domain, name, sweep):
                if label in labels:
                    raise PlanError(f"config {domain}.edits: two edits are both named {label}")
                labels.add(label)
                fkey = (self.factor_key(domain, spec["factors"]) if spec["method"] == "kfac"
                        else None)
                key = f"{label}-{digest({'spec': spec, 'factors': fkey, 'model': self.model_key(domain)})}"
                edits[key] = {**spec, "label": label, "fkey": fkey}
        return edits

    def edit_path(self, domain, key):
        sub = "bsn" if self.edits[domain][key]["method"] == "bsn" else "edits"
        return f"{self.out}/{domain}/{sub}/{key}.safetensors"

    def edit_keys(self, domain, methods):
        return [k for k, s in self.edits[domain].items() if s["method"] in methods]

    def edit_inputs(self, domain, key):
        spec = self.edits[domain][key]
        files = self.model_input(domain)
        if spec["method"] == "kfac":
            files += [f"{self.out}/{domain}/eigen/{spec['fkey']}/layer_{layer}.nc"
                      for layer in spec["layers"]]
        return files

    def edit_flags(self, domain, key):
        spec = self.edits[domain][key]
        value = spec.get("rho", spec.get("svd_drop"))
        per_module = None  # a value per module goes through --spec {layer: {module: value}}
        if isinstance(value, dict):
            per_module = json.dumps({str(layer): value for layer in spec["layers"]})
            value = None
        eigen = f"{self.out}/{domain}/eigen/{spec['fkey']}" if spec["fkey"] else None
        kfac = spec["method"] == "kfac"
        return flags(("--model", self.model_arg(domain)), ("--eigen", eigen),
                     ("--method", spec["method"]), ("--layers", spec["layers"]),
                     ("--modules", spec["modules"]), ("--spec", per_module),
                     ("--rho" if kfac else "--svd-drop", value),
                     ("--keep", spec.get("keep")), ("--seed", spec.get("seed")),
                     ("--dtype", self.model_config(domain).get("dtype")),
                     ("--tag", method_tag(spec)))

    def bsn_flags(self, key):
        spec = self.edits["lm"][key]
        return flags(("--ratio", spec["ratio"]), ("--alpha", spec.get("alpha")),
                     ("--epochs", spec.get("epochs")), ("--lr", spec.get("lr")),
                     ("--seed", spec.get("seed")), ("--seq-len", spec.get("seq_len")),
                     ("--batch-size", spec.get("batch_size")))

    # ----------------------------------------------------------------------- evaluations

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
        return [f"{self.out}/lm/eval/{key}/{name}.json" for name in self.lm_evaluations(key)]

    def lm_eval_inputs(self, key):
        """What the evaluation job of `key` reads: the model, every evaluation's data, the edit."""
        data = dict.fromkeys(self.lm_data(self.evaluation(n)["data"])
                             for n in sorted(self.lm_evaluations(key)))
        files = self.model_input("lm") + list(data)
        if key != self.base["lm"]:
            files.append(self.edit_path("lm", key))
        return files

    def lm_eval_runs(self, key):
        """`--run KIND DATA OUT` for each evaluation of `key`: one `curvmem evaluate batch` job
        per model or edit, so the model loads once, not once per evaluation."""
        runs = []
        for name in sorted(self.lm_evaluations(key)):  # the config's order is no rerun reason
            ev = self.evaluation(name)
            run = (ev["kind"], self.lm_data(ev["data"]), f"{self.out}/lm/eval/{key}/{name}.json")
            runs.append("--run " + " ".join(shlex.quote(str(a)) for a in run))
        return " ".join(runs)

    def vit_eval_inputs(self, key):
        return self.model_input("vit") + [self.vit_data()] + (
            [] if key == self.base["vit"] else [self.edit_path("vit", key)])

    def edit_flag(self, domain, key):
        return "" if key == self.base[domain] else flags(("--edit", self.edit_path(domain, key)))

    def label(self, domain, key):
        return "base" if key == self.base[domain] else self.edits[domain][key]["label"]

    def report_entries(self, domain):
        """--entry NAME=PATH for the report commands: an eval directory (lm) or file (vit)."""
        if domain == "lm":
            pairs = [(self.label("lm", k), f"{self.out}/lm/eval/{k}") for k in self.eval_keys("lm")]
        else:
            pairs = [(self.label("vit", k), f"{self.out}/vit/eval/{k}/vit.json")
                     for k in self.eval_keys("vit")]
        return " ".join(f"--entry {shlex.quote(f'{n}={p}')}" for n, p in pairs)

    # ----------------------------------------------------------------------- analyses

    def analysis(self) -> dict | None:
        """`lm.analysis` (curvmem analyze; docs/lm.md), or None: no analyses for this config."""
        return (self.config.get("lm") or {}).get("analysis") if "lm" in self.domains else None

    def _check_analysis(self) -> None:
        a = self.analysis()
        if a is None:
            return
        main = self.factor_key("lm", "main")
        have = self.factor_sets["lm"].get(main, {}).get("layers", [])
        missing = sorted(set(a["layers"]) - set(have))
        if missing:
            raise PlanError(f"config lm.analysis.layers: {missing} have no eigenbasis of the main "
                            f"factors (layers {have}: those of the kfac sweeps)")
        extra = sorted(set(a["modules"]) - set(self.factor_config("lm", "main")["modules"]))
        if extra:
            raise PlanError(f"config lm.analysis.modules: {extra} are not in lm.factors.modules")
        if a["stability"]["layer"] not in a["layers"]:
            raise PlanError(f"config lm.analysis.stability.layer {a['stability']['layer']} is not "
                            f"one of lm.analysis.layers {a['layers']}")

    def analysis_eigen_dir(self):
        """The main factor set's eigenbases, which the analyses read."""
        return f"{self.out}/lm/eigen/{self.factor_key('lm', 'main')}"

    def analysis_eigen_files(self):
        return [f"{self.analysis_eigen_dir()}/layer_{layer}.nc"
                for layer in self.analysis()["layers"]]

    def analysis_flags(self):
        a = self.analysis()
        return flags(("--eigen", self.analysis_eigen_dir()), ("--layers", a["layers"]),
                     ("--modules", a["modules"]))

    def analysis_outputs(self, name):
        return {"json": f"{self.out}/analysis/{name}.json",
                "figure": f"{self.out}/analysis/{name}.png"}

    def sweep_rhos(self):
        """The single ρ values of the K-FAC sweeps (marked on the spectra)."""
        return sorted({s["rho"] for s in self.edits["lm"].values()
                       if s["method"] == "kfac" and not isinstance(s["rho"], dict)}) or None

    def stability_sets(self):
        """{name: (size, shard, seed)}: per size, two disjoint slices of the curvature corpus
        (shards 0/2 and 1/2 of 2 x size positions) and, at the largest size, the first slice
        again with another label-sampling seed. Names carry a content key (model, settings)."""
        st = self.analysis()["stability"]
        seed = self.factor_config("lm", "main")["seed"]
        variants = [(size, k, seed) for size in st["sizes"] for k in (0, 1)]
        variants.append((max(st["sizes"]), 0, seed + 1))
        sets = {}
        for size, k, s in variants:
            key = digest({"model": self.model_key("lm"), "factors": self.factor_config("lm", "main"),
                          "size": size, "shard": k, "seed": s})
            sets[f"n{size}-slice{k}-seed{s}-{key}"] = (size, k, s)
        return sets

    def stability_collect_flags(self, sname):
        """`collect` of one slice: the main factors' settings, 2 x size positions cut in two."""
        size, k, seed = self.stability_sets()[sname]
        f = self.factor_config("lm", "main")
        return flags(("--modules", self.analysis()["modules"]), ("--tokens", 2 * size),
                     ("--seq-len", f["seq_len"]), ("--batch-size", f["batch_size"]),
                     ("--fisher", f["fisher"]), ("--seed", seed), ("--dtype", f["dtype"]),
                     ("--shard", f"{k}/2"))

    def stability_eigen_dir(self, sname):
        return f"{self.out}/lm/analysis/stability/{sname}/eigen"

    def stability_eigen_files(self):
        layer = self.analysis()["stability"]["layer"]
        return [f"{self.stability_eigen_dir(n)}/layer_{layer}.nc" for n in self.stability_sets()]

    def stability_flags(self):
        st = self.analysis()["stability"]
        sets = " ".join(f"--set {shlex.quote(f'{n}={self.stability_eigen_dir(n)}')}"
                        for n in self.stability_sets())
        return f"{sets} " + flags(("--layers", [st["layer"]]),
                                  ("--modules", self.analysis()["modules"]), ("--rho", st["rho"]))

    def stress_edits(self):
        """The edits the stress test scores: every SVD and BSN edit and every top-keeping K-FAC
        edit of the main factors (`--summary` keeps only the selected one of these)."""
        main = self.factor_key("lm", "main")
        return [k for k, s in self.edits["lm"].items() if s["method"] in ("svd", "bsn")
                or (s["method"] == "kfac" and s["keep"] == "top" and s["fkey"] == main)]

    def stress_flags(self):
        a = self.analysis()
        edits = " ".join("--edit " + shlex.quote(f"{self.edits['lm'][k]['label']}="
                                                 f"{self.edit_path('lm', k)}")
                         for k in self.stress_edits())
        return f"{edits} " + flags(("--max-items", a["stress"]["max_items"]),
                                   ("--t", a["stress"]["t"]))

    def analysis_targets(self):
        if self.analysis() is None:
            return []
        return [f for name in ANALYSES for f in self.analysis_outputs(name).values()]

    # ----------------------------------------------------------------------- resources, targets

    def res(self, rule, domain=None):
        """Cluster resources of a rule: built-in floor < resources.default < resources.RULE <
        {domain}.resources.RULE (so a 7B config can ask for more than the embedded default)."""
        r = {"mem_mb": 2000, "runtime": 30, "gpu": 0, "threads": self.config["threads"]}
        top = self.config.get("resources") or {}
        r.update(top.get("default", {}))
        r.update(top.get(rule, {}))
        if domain:
            r.update(((self.config[domain].get("resources") or {}).get(rule)) or {})
        return r

    # ----------------------------------------------------------------------- the ViT study

    def study(self) -> dict | None:
        """The `vit_study` section (docs/vision.md, "The study"), or None."""
        return self.config.get("vit_study")

    def study_dir(self):
        return f"{self.out}/vit_study"

    def study_data(self):
        return f"{self.study_dir()}/data.safetensors"

    def study_data_flags(self):
        d = self.study()["data"]
        return flags(("--seed", d.get("seed")), ("--noise", d.get("noise")),
                     ("--val-fraction", d.get("val_fraction")),
                     ("--heldout-fraction", d.get("heldout_fraction")))

    def study_models(self) -> dict:
        """{model key: settings} for every trained model of the study: each `grid` group is
        the product of its lists, over the `train` settings; a setting two groups share is
        trained once. A key reads as the setting, plus a hash of it, the data and the preset."""
        st = self.study()
        models = {}
        for name, group in st["grid"].items():
            keys = list(group)
            for values in itertools.product(*(group[k] for k in keys)):
                settings = {**st.get("train", {}), **dict(zip(keys, values))}
                preset = settings.get("preset", "default")
                if preset not in presets.VISION_PRESETS:
                    raise PlanError(f"config vit_study.grid.{name}: unknown preset '{preset}'")
                size = {**presets.VISION_PRESETS[preset]["model"], **settings}
                tag = (f"w{size['embed_dim']}-d{size['depth']}-p{size['patch_size']}-"
                       f"wd{settings.get('weight_decay', 'preset')}-"
                       f"{settings.get('decay', 'all')}-s{settings.get('seed', 0)}")
                key = f"{tag}-" + digest({"settings": settings, "data": st["data"],
                                          "preset": presets.VISION_PRESETS[preset]})
                models[key] = settings
        return models

    def study_model_dir(self, key):
        return f"{self.study_dir()}/models/{key}"

    def study_train_flags(self, key):
        s = self.study_models()[key]
        return flags(*((f"--{k.replace('_', '-')}", s[k]) for k in sorted(s)))

    def study_cell(self, key):
        return f"{self.study_dir()}/cells/{key}.json"

    def study_cell_flags(self):
        c = self.study()["cell"]

        def sets(layer_sets):
            return ";".join(",".join(map(str, s)) for s in layer_sets)

        return flags(("--images", c["images"]), ("--kfac-layers", sets(c["kfac_layers"])),
                     ("--rho", c["rho"]), ("--svd-layers", sets(c["svd_layers"])),
                     ("--svd-drop", c["svd_drop"]), ("--modules", c["modules"]),
                     ("--fisher", c.get("fisher")), ("--seed", c.get("seed")),
                     ("--batch-size", c.get("batch_size")))

    def study_outputs(self) -> dict:
        return {"summary": f"{self.out}/vit_study.json", "table": f"{self.out}/vit_study.md",
                "figure": f"{self.out}/vit_study.png"}

    def summaries(self):
        """Tables and figures (all report()-ed) that the HTML report shows."""
        out, files = self.out, []
        if self.study():
            files += list(self.study_outputs().values())
        if "lm" in self.domains:
            files += [f"{out}/lm_summary.json", f"{out}/lm_table.md", f"{out}/lm_figure.png",
                      f"{out}/lm_sweep.png", f"{out}/compare.png", f"{out}/compare.md"]
        if "vit" in self.domains:
            files += [f"{out}/vit_summary.json", f"{out}/vit_table.md", f"{out}/vit_figure.png"]
        return files + self.analysis_targets()

    def final_targets(self):
        if not self.domains and not self.study():
            raise PlanError("the config has neither an `lm` nor a `vit` section (nor a `vit_study`): "
                            "nothing to do")
        readme = [self.readme_tables()] if self.domains else []
        return self.summaries() + readme + [f"{self.out}/report.html"]

    def readme_tables(self):
        """The README's results tables (curvmem report-readme), from this run's summaries."""
        return f"{self.out}/readme_tables.md"

    def readme_inputs(self):
        files = {"lm": f"{self.out}/lm_summary.json", "vit": f"{self.out}/vit_summary.json"}
        inputs = {d: files[d] for d in self.domains}
        if self.analysis() is not None:
            inputs["analyses"] = [self.analysis_outputs(n)["json"] for n in ANALYSES]
        return inputs

    def readme_flags(self):
        inputs = self.readme_inputs()
        return flags(("--lm-summary", inputs.get("lm")), ("--vit-summary", inputs.get("vit")),
                     ("--analysis", f"{self.out}/analysis" if self.analysis() else None))
