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
    index.json                             human labels -> the paths above (committed to git)

Keys are content hashes: a factor set's key covers the model config and the factor settings; an
edit's key covers its spec, its factor set's key and the model config. A changed spec therefore
lands in a new file (old results stay), and an unchanged one is never recomputed.
tests/data/plan_keys.json pins the keys of every shipped config.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import shlex
from dataclasses import asdict
from pathlib import Path

from curvmem import presets

NEVER = "(?!x)x"  # a wildcard constraint that matches nothing
# `curvmem report-lm` reads these evaluation files from each entry's directory (docs/lm.md)
# (tasks and coherence are optional: a config may score skills with lm-evaluation-harness only)
REPORT_LM_NEEDS = ["memorization_forget", "memorization_untargeted", "memorization_control",
                   "perplexity"]


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

# Artifact kinds, in data-flow order: one DVC stage and one `all_<kind>` target rule each
# (Plan.artifacts; docs/workflow.md, "Sharing with DVC")
KINDS = ("models", "factors", "eigen", "edits", "evaluations", "summaries", "analyses", "report")
# edit methods made in the job that evaluates them (`curvmem edit ... --then evaluate ...`): an
# edit costs a fraction of a second against seconds of start-up. BalancedSubnet trains in its own.
MADE_WITH_EVALUATION = ("kfac", "svd")


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


def flags(*items):
    """The one quoting helper: every value a rule's command gets from the plan passes here.
    `(--name, value, ...)` items -> one string in which each value is exactly one shell word
    (shlex-quoted, so a space, quote, `;`, `$()` or backtick in a config value stays literal);
    a list or tuple value is one word, joined with commas (`--layers 1,2`); None values are left
    out, and so is an item with no value left. Names are the code's own flags, never config text.
    The rules quote their plain values themselves (`{input:q}`); tests/test_injection.py checks
    both."""
    out = []
    for name, *values in items:
        words = [shlex.quote(",".join(str(x) for x in v) if isinstance(v, (list, tuple)) else str(v))
                 for v in values if v is not None]
        if words:
            out += [name, *words]
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
    for value in sweep[value_key]:
        _check_fraction(f"config {domain}.edits.{name}.{value_key}", value, method == "kfac")
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


def _local_path(name: str) -> bool:
    """A model named by a path (absolute, relative with ./, or existing) rather than a hub id."""
    return name.startswith(("/", ".", "~")) or Path(name).exists() or name.count("/") > 1


def _slug(text: str) -> str:
    """A hub id or revision as one path component (owner/name -> owner--name)."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", text.replace("/", "--"))


def _check_fraction(where, value, rho: bool) -> None:
    """A rho in (0, 1] or an SVD drop in [0, 1), per module where a mapping; NaN is neither (the
    schema's bounds let it through: every comparison with NaN is false)."""
    for v in value.values() if isinstance(value, dict) else [value]:
        ok = isinstance(v, (int, float)) and math.isfinite(v) and (
            0 < v <= 1 if rho else 0 <= v < 1)
        if not ok:
            raise PlanError(f"{where}: {v} is not in {'(0, 1]' if rho else '[0, 1)'}")


def model_layers(domain, model: dict):
    """How many blocks the config's model has: the embedded preset's, a local pretrained
    directory's config.json; None when only the hub knows (the job checks it then)."""
    if model["source"] == "embedded":
        preset = model.get("preset") or "default"
        if domain == "lm":
            return presets.train_config(preset).n_layers
        if model.get("model_name"):  # a timm architecture: its depth is timm's
            return None
        return presets.VISION_PRESETS[preset]["model"]["depth"]
    local = Path(str(model.get("id") or model.get("path") or ""))
    cfg = local / "config.json"
    if not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return None
    for key in ("num_hidden_layers", "n_layer", "num_layers", "depth"):
        if isinstance(data.get(key), int):
            return data[key]
    return None


def method_tag(spec):
    """The sidecar's method label (docs/ARCHITECTURE.md): kfac, kfac-KEEP (a keep control),
    kfac-shard (control_factors), kfac-VARIANT (a factor variant), svd, bsn."""
    if spec["method"] != "kfac":
        return spec["method"]
    if spec["keep"] != "top":
        return f"kfac-{spec['keep']}"
    if spec["factors"] == "main":
        return "kfac"
    return "kfac-shard" if spec["factors"] == "control" else f"kfac-{spec['factors']}"


# Seeds of a multi-seed study (`seeds` in the config): the sections whose `seed` one run offsets
SEEDED_SECTIONS = (("lm", "model"), ("lm", "factors"), ("lm", "control_factors"), ("vit", "model"),
                   ("vit", "factors"))
# edit sweeps that draw random numbers (BalancedSubnet's init and order; the random controls)
RANDOM_KEEPS = ("random", "random-mass", "random-basis")


def seeded_config(config: dict) -> dict:
    """The config of one run of a multi-seed study. `seeds: [0, 1, 2]` lists the study's seeds and
    `seed` (default: the first) picks this run's: every seed of world and model, factors, control
    factors, BalancedSubnet and the random controls is offset by it, and the run writes under
    `{outdir}/seed-{seed}`. Seed 0 leaves every setting (and so every content key) as written.
    A config without `seeds` comes back unchanged."""
    if "seeds" not in config:
        if "seed" in config:
            raise PlanError("config `seed` picks one of `seeds`, which the config does not list")
        return config
    seeds = config["seeds"]
    if len(set(seeds)) != len(seeds):
        raise PlanError(f"config seeds {seeds}: each seed once")
    seed = config.get("seed", seeds[0])
    if seed not in seeds:
        raise PlanError(f"config seed {seed} is not one of seeds {seeds}")
    out = json.loads(json.dumps(config))  # a deep copy of plain YAML data
    out["outdir"] = f"{config['outdir'].rstrip('/')}/seed-{seed}"
    out["seed"] = seed
    if seed == 0:
        return out
    for domain, section in SEEDED_SECTIONS:
        part = (out.get(domain) or {}).get(section)
        if part is not None:
            part["seed"] = part.get("seed", 0) + seed
    for domain in ("lm", "vit"):
        for sweep in ((out.get(domain) or {}).get("edits") or {}).values():
            if sweep["method"] == "bsn" or sweep.get("keep") in RANDOM_KEEPS:
                sweep["seed"] = sweep.get("seed", 0) + seed
    return out


# characters a name (or path) of the config may not hold where it becomes part of a path: a
# separator would leave the directory it names; Snakemake reads braces as a wildcard
_NOT_IN_NAMES = ("/", "\\", "{", "}", "\0")


def check_name(where: str, name) -> None:
    """A name of the config that becomes one path component under the outdir (a sweep, an edit
    label, an evaluation, a factor variant, an embedded world file): no separator, no `.`/`..`,
    no braces, so every output stays where the plan puts it."""
    text = str(name)
    bad = [c for c in _NOT_IN_NAMES if c in text]
    if bad or text in ("", ".", ".."):
        why = f"holds {' '.join(map(repr, bad))}" if bad else "is not a file name"
        raise PlanError(f"config {where}: {text!r} {why}; it names a file under the outdir, so it "
                        "must be one path component (no '/', '\\', braces, '.' or '..')")


def check_outdir(outdir: str) -> None:
    """Refuse an outdir that is empty or `/` (the results would land at the file system's root)
    or has a `..` component (outside the tree it names), or holds a brace (a wildcard)."""
    if not outdir:
        raise PlanError("config outdir is empty: name the directory every result of this config "
                        "goes under (e.g. results/NAME)")
    if not outdir.strip("/"):
        raise PlanError(f"config outdir {outdir!r} is the file system's root: name a directory "
                        "of its own (e.g. results/NAME)")
    if ".." in outdir.split("/"):
        raise PlanError(f"config outdir {outdir!r} has a '..' component: name the directory "
                        "without one (an absolute path if it lies elsewhere)")
    for c in ("{", "}", "\0"):
        if c in outdir:
            raise PlanError(f"config outdir {outdir!r} holds {c!r} (Snakemake reads braces as "
                            "a wildcard): name the directory without it")


def check_path(where: str, path) -> None:
    """A file of the user's (data, a model directory) that the DAG reads: no braces, which
    Snakemake would read as a wildcard (its own error names neither the key nor the file)."""
    if isinstance(path, str) and any(c in path for c in ("{", "}", "\0")):
        raise PlanError(f"config {where}: {path!r} holds a brace (Snakemake reads braces as a "
                        "wildcard); rename or link the file")


def configfile_names(paths) -> list[str]:
    """The config files of a run as its index records them: relative to the working directory,
    normalized, so `--configfile=/abs/x.yaml` and `--configfile x.yaml` are the same file."""
    return [os.path.normpath(os.path.relpath(os.path.abspath(str(p)))) for p in paths]


def check_config_file(path) -> None:
    """Refuse a config file whose mapping repeats a key (a YAML loader keeps the last value and
    says nothing, so the first is silently ignored), naming the file, the key and its lines."""
    import yaml  # Snakemake's (and transformers') dependency; only a workflow run calls this

    class Strict(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: the loader below refuses it
                continue
            if first != key_node.start_mark.line + 1:
                raise PlanError(f"config file {path}: key {key!r} appears twice (lines {first} "
                                f"and {key_node.start_mark.line + 1}); a YAML loader keeps only "
                                "the last silently, so give each key once")
        return yaml.SafeLoader.construct_mapping(loader, node, deep)

    Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    with open(path) as f:
        try:
            yaml.load(f, Loader=Strict)
        except yaml.YAMLError:
            return  # not for this check: Snakemake's own loader has said what is wrong


def seed_outdirs(config: dict) -> dict[int, str]:
    """{seed: its run's outdir} of a multi-seed study ({} without `seeds`)."""
    root = config["outdir"].rstrip("/")
    return {s: f"{root}/seed-{s}" for s in config.get("seeds", [])}


class Plan:
    """Everything the workflow builds for one config: keys, paths, sweeps, flags, resources.

    Construction checks what the schema cannot (sweeps, factor modules, report evaluations) and
    raises `PlanError` before any job runs.
    """

    def __init__(self, config: dict, configfiles=None):
        """`configfiles`: the files the config was read from (the index records them, and an
        outdir whose index names other files is refused: `owner_problem`); None outside a run."""
        check_outdir(config["outdir"])
        self.configfiles = None if configfiles is None else configfile_names(configfiles)
        self.study_config = config
        config = seeded_config(config)
        self.config = config
        self.out = config["outdir"].rstrip("/")
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

    def hub_model(self, domain):
        """(hub id, revision or None) of a pretrained model named by hub id; None for an
        embedded model or a local directory. Such a model is downloaded once (`download_model`)
        into `snapshot_dir` and every job loads that directory."""
        m = self.model_config(domain)
        name = None if self.embedded(domain) else m.get("id")
        if name is None or _local_path(name):
            if m.get("revision"):
                raise PlanError(f"config {domain}.model.revision: a revision needs a hub id in "
                                f"{domain}.model.id, not {m.get('id') or m.get('path')!r}")
            return None
        return name, m.get("revision")

    def snapshot_dir(self, domain):
        repo, revision = self.hub_model(domain)
        return f"{self.out}/hub/{_slug(repo)}@{_slug(revision or 'main')}"

    def snapshots(self):
        """{snapshot directory: (hub id, revision)} of every model the workflow downloads."""
        return {self.snapshot_dir(d): self.hub_model(d) for d in self.domains
                if self.hub_model(d)}

    def uses_hub(self):
        """Whether the workflow fetches anything from a hub (then its jobs run with it off)."""
        return bool(self.snapshots() or self.fetched_data("tokens")
                    or self.fetched_data("texts"))

    def hub_offline_for_jobs(self, environ=None) -> str:
        """Turn the hub off (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE = 1) in `environ` (default:
        this process's) when the workflow fetches from a hub, so jobs load only what the
        download rules fetched; returns the user's own HF_HUB_OFFLINE for those rules. The
        Snakefile is parsed again inside each cluster job, where the saved value is found."""
        env = os.environ if environ is None else environ
        user = env.get("CURVMEM_USER_HF_HUB_OFFLINE", env.get("HF_HUB_OFFLINE", "0"))
        if self.uses_hub():
            env.update(CURVMEM_USER_HF_HUB_OFFLINE=user, HF_HUB_OFFLINE="1",
                       HF_DATASETS_OFFLINE="1")
        return user

    def model_arg(self, domain):
        """The --model argument: a directory built or downloaded here, or a local path."""
        m = self.model_config(domain)
        if self.embedded(domain):
            return f"{self.model_dir(domain)}/model"
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

    def world_file(self, name):
        return f"{self.model_dir('lm')}/world/{name}"

    def world_outputs(self):
        return [self.world_file("world.json")] + [self.world_file(f)
                                                   for f in self.config["lm"]["data"].values()]

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
        base = f"{self.out}/lm/data/{_slug(name)}"
        if isinstance(value, dict) and "url" in value:
            suffix = "".join(Path(value["url"].split("?")[0]).suffixes[-1:]) or ".jsonl"
            return (f"{base}-{value['sha256'][:10]}{suffix}", "url",
                    flags(("--url", value["url"]), ("--sha256", value["sha256"])))
        source, rows = (value, None) if isinstance(value, str) else (value["hf"], value.get("rows"))
        if name == "corpus":
            if rows is not None:
                raise PlanError("config lm.data.corpus: give the corpus as an 'hf:...' string; "
                                "how much of it is read follows lm.factors.tokens")
            tokens = self.corpus_tokens()
            key = digest({"source": source, "model": self.hub_model("lm") or self.model_arg("lm"),
                          "tokens": tokens})
            return (f"{base}-{key}.npy", "tokens",
                    flags(("--model", self.model_arg("lm")), ("--data", source),
                          ("--tokens", tokens)))
        key = digest({"source": source, "rows": rows})
        return (f"{base}-{key}.jsonl", "texts",
                flags(("--data", source), ("--rows", rows)))

    def fetched_data(self, kind):
        """{path: curvmem flags} of the lm.data entries of this kind that local rules fetch."""
        if "lm" not in self.domains or self.embedded("lm"):
            return {}
        entries = [self._fetched_entry(n) for n in self.config["lm"].get("data") or {}]
        return {e[0]: e[2] for e in entries if e and e[1] == kind}

    def vit_data(self):
        if self.embedded("vit"):
            return f"{self.model_dir('vit')}/data.safetensors"
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

    # ----------------------------------------------------------------------- factor sets

    def factor_config(self, domain, fset):
        f = dict(self.config[domain]["factors"])
        if fset == "control":
            f.update(self.config[domain].get("control_factors") or {})
        elif fset != "main":
            variants = self.config[domain].get("factor_variants") or {}
            if fset not in variants:
                raise PlanError(f"config {domain}: a sweep names factors '{fset}', which is not "
                                f"main, control or a key of {domain}.factor_variants "
                                f"({sorted(variants)})")
            f.update(variants[fset])
        if f.get("slice") and f.get("shards", 1) > 1:
            raise PlanError(f"config {domain} factors '{fset}': slice and shards > 1 do not mix")
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

    def memorized_inputs(self, domain):
        return self.memorized_data() if domain == "lm" else []

    def collect_flags(self, domain, fkey):
        f = self.factor_config(domain, self.factor_sets[domain][fkey]["fset"])
        n_slices = int(f["slice"].split("/")[1]) if f.get("slice") else 1
        return flags(("--modules", f["modules"]), ("--tokens", n_slices * f["tokens"]),
                     ("--shard", f.get("slice")),
                     ("--memorized", self.memorized_inputs(domain) or None),
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
                check_name(f"{domain}.edits.{name} (label {label})", label)
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
                         f"{self.out}/lm/eval/{key}/{name}.json"))
        return flags(*runs)

    def vit_eval_inputs(self, key):
        files = self.model_input("vit") + [self.vit_data()] + self._edited_inputs("vit", key)
        return list(dict.fromkeys(files))

    def edit_flag(self, domain, key):
        return "" if key == self.base[domain] else flags(("--edit", self.edit_path(domain, key)))

    def label(self, domain, key):
        return "base" if key == self.base[domain] else self.edits[domain][key]["label"]

    def report_lm_flags(self):
        """report-lm's column titles and the paper's Dolma column (lm.report), when set."""
        r = self.config["lm"].get("report") or {}
        labels = [("--label", f"{k}={v}") for k, v in sorted((r.get("labels") or {}).items())]
        return flags(*labels, ("--paper-dolma", r.get("paper_dolma")))

    def report_entries(self, domain):
        """--entry NAME=PATH for the report commands: an eval directory (lm) or file (vit)."""
        if domain == "lm":
            pairs = [(self.label("lm", k), f"{self.out}/lm/eval/{k}") for k in self.eval_keys("lm")]
        else:
            pairs = [(self.label("vit", k), f"{self.out}/vit/eval/{k}/vit.json")
                     for k in self.eval_keys("vit")]
        return flags(*(("--entry", f"{n}={p}") for n, p in pairs))

    # ----------------------------------------------------------------------- harness, export

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
        return f"{self.out}/lm/export/{key}"

    def harness_model(self, key):
        return self.model_arg("lm") if key == self.base["lm"] else self.export_dir(key)

    def harness_tasks_dir(self):
        """The local harness tasks written from lm.harness.local_tasks, or None."""
        name = self.harness().get("local_tasks")
        if name is None:
            return None
        return f"{self.out}/lm/harness/tasks-{digest({'data': self.lm_data(name), 'model': self.model_key('lm')})}"

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
        return [f"{self.out}/lm/harness/{k}.json" for k in self.harness_keys()]

    # ----------------------------------------------------------------------- analyses

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
        return f"{self.out}/{domain}/eigen/{self.factor_key(domain, 'main')}"

    def analysis_eigen_files(self, domain="lm"):
        return [f"{self.analysis_eigen_dir(domain)}/layer_{layer}.nc"
                for layer in self.analysis(domain)["layers"]]

    def analysis_flags(self, domain="lm"):
        a = self.analysis(domain)
        return flags(("--eigen", self.analysis_eigen_dir(domain)), ("--layers", a["layers"]),
                     ("--modules", a["modules"]))

    def analysis_outputs(self, name):
        return {"json": f"{self.out}/analysis/{name}.json",
                "figure": f"{self.out}/analysis/{name}.png"}

    def sweep_rhos(self, domain="lm"):
        """The single ρ values of the K-FAC sweeps (marked on the spectra)."""
        return sorted({s["rho"] for s in self.edits[domain].values()
                       if s["method"] == "kfac" and not isinstance(s["rho"], dict)}) or None

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
        return f"{self.out}/{domain}/analysis/stability/{sname}/eigen"

    def stability_eigen_files(self, domain="lm"):
        layer = self.analysis(domain)["stability"]["layer"]
        return [f"{self.stability_eigen_dir(n, domain)}/layer_{layer}.nc"
                for n in self.stability_sets(domain)]

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

    def analysis_jobs(self):
        """The analysis jobs this config runs (ANALYSIS_JOBS names)."""
        return [j for j in ANALYSIS_JOBS
                if self.analysis("vit" if j == "vit" else "lm") is not None]

    def analysis_job_inputs(self, job):
        """{name: file(s)} a job reads."""
        domain = "vit" if job == "vit" else "lm"
        inputs = {"model": self.model_input(domain)}
        if job != "lm_stability":
            inputs["eigen"] = self.analysis_eigen_files(domain)
        if job == "lm_model":
            inputs.update(self.same_kind_inputs())
        if job == "lm_sweep":  # stress: forget-validation; task interaction: quotes, tasks
            inputs.update(memorized=self.lm_data("forget_validation"),
                          quotes=self.lm_data("untargeted"), clean=self.lm_data("heldout"),
                          tasks=self.lm_data("tasks"), summary=f"{self.out}/lm_summary.json",
                          edits=[self.edit_path("lm", k) for k in self.stress_edits()])
        if job in ("lm_stability", "vit"):
            inputs["data"] = self.domain_data(domain)
        return inputs

    def analysis_job_outputs(self, job):
        """The JSON and figure of each of the job's analyses, and the stability slices' eigen
        files (kept: other analyses may read them)."""
        files = [f for name in ANALYSIS_JOBS[job] for f in self.analysis_outputs(name).values()]
        if job in ("lm_stability", "vit"):
            files += self.stability_eigen_files("vit" if job == "vit" else "lm")
        return files

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
                args += " " + flags(("--summary", f"{self.out}/lm_summary.json"))
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

    def res_together(self, rules, domain=None):
        """Resources of one job that runs these rules' steps one after the other (an edit and its
        evaluations): the most memory, GPUs and threads any step asks for, the sum of runtimes."""
        each = [self.res(rule, domain) for rule in rules]
        return {key: (sum if key == "runtime" else max)(r[key] for r in each) for key in each[0]}

    # ----------------------------------------------------------------------- the ViT study

    # the experiments that decide Table 2 (vit_study.decide; curvmem vit-study-experiment)
    STUDY_EXPERIMENTS = ("oracle", "knockout", "probe", "plant")

    def study(self) -> dict | None:
        """The `vit_study` section (docs/vision.md, "The study"), or None."""
        return self.config.get("vit_study")

    def study_dir(self):
        return f"{self.out}/vit_study"

    def study_datasets(self) -> dict:
        """{name: vision-data settings}: `main` (the section's `data`) and each of `datasets`
        (the main settings with its keys replaced; a grid group picks one with `data`)."""
        st = self.study()
        extra = st.get("datasets", {})
        if "main" in extra:
            raise PlanError("config vit_study.datasets: 'main' names the `data` dataset")
        return {"main": dict(st["data"]), **{n: {**st["data"], **d} for n, d in extra.items()}}

    def study_data(self, name: str = "main"):
        if name == "main":
            return f"{self.study_dir()}/data.safetensors"
        return f"{self.study_dir()}/data-{name}.safetensors"

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

    def study_model_dir(self, key):
        return f"{self.study_dir()}/models/{key}"

    def study_model_data(self, key):
        """The dataset file a study model trains on and is measured with."""
        return self.study_data(self.study_models()[key].get("data", "main"))

    def study_train_flags(self, key):
        s = {k: v for k, v in self.study_models()[key].items() if k != "data"}
        return flags(*((f"--{k.replace('_', '-')}", s[k]) for k in sorted(s)))

    def study_cell(self, key):
        return f"{self.study_dir()}/cells/{key}.json"

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
                for exp in self.STUDY_EXPERIMENTS if exp in decide}

    def study_experiment(self, experiment, key):
        return f"{self.study_dir()}/experiments/{experiment}/{key}.json"

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
        name = "vit_decide" if self.study_decide() is not None else "vit_study"
        return {"summary": f"{self.out}/{name}.json", "table": f"{self.out}/{name}.md",
                "figure": f"{self.out}/{name}.png"}

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
        seeds = list(self.seeds_outputs().values()) if self.seeds_complete() else []
        return self.summaries() + readme + [self.report_html(), self.index_file()] + \
            self.harness_targets() + seeds

    # ----------------------------------------------------------------------- a multi-seed study

    def seeds_outputs(self) -> dict:
        """Across the seeds of a multi-seed study (`curvmem report-seeds`); {} for one run."""
        if len(self.study_config.get("seeds", [])) < 2 or "lm" not in self.domains:
            return {}
        root = self.study_config["outdir"].rstrip("/")
        return {"summary": f"{root}/seeds/seeds_summary.json",
                "tables": f"{root}/seeds/readme_tables.md", "figure": f"{root}/seeds/fronts.png"}

    def seeds_inputs(self) -> list[str]:
        """Every seed's files that `report-seeds` reads (this run's among them)."""
        names = ["lm_summary.json"] + (["vit_summary.json"] if "vit" in self.domains else []) + \
            ([f"analysis/{n}.json" for n in ANALYSES] if self.analysis() is not None else [])
        return [f"{out}/{n}" for out in seed_outdirs(self.study_config).values() for n in names]

    def seeds_complete(self) -> bool:
        """Whether this run completes the study: every other seed's summary is on disk (so the
        run of the last seed also writes the seeds' report)."""
        if not self.seeds_outputs():
            return False
        return all(os.path.isfile(f"{out}/lm_summary.json")
                   for s, out in seed_outdirs(self.study_config).items()
                   if s != self.config["seed"])

    def seeds_flags(self) -> str:
        return flags(*(("--seed-dir", f"{s}={out}")
                       for s, out in seed_outdirs(self.study_config).items()))

    def report_html(self):
        return f"{self.out}/report.html"

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

    # ----------------------------------------------------------------------- sharing: kinds, index

    def model_files(self, domain):
        """What building an embedded model writes (world or data, tokenizer, model); [] when the
        model is pretrained (a hub id or the user's path is no artifact of the workflow)."""
        if not self.embedded(domain):
            return []
        if domain == "lm":
            return self.world_outputs() + [f"{self.model_dir('lm')}/tokenizer", self.model_arg("lm")]
        return [self.vit_data(), self.model_arg("vit")]

    def layer_files(self, domain, kind, fkey):
        """{layer: file} of one factor set; kind is `factors` or `eigen`."""
        return {layer: f"{self.out}/{domain}/{kind}/{fkey}/layer_{layer}.nc"
                for layer in self.factor_sets[domain][fkey]["layers"]}

    def eval_files(self, domain, key):
        return (self.lm_eval_files(key) if domain == "lm"
                else [f"{self.out}/vit/eval/{key}/vit.json"])

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
        return f"{self.out}/index.json"

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
                    layer = self.analysis(d)["stability"]["layer"]
                    out["analyses"][name]["slices"] = {
                        s: f"{self.stability_eigen_dir(s, d)}/layer_{layer}.nc"
                        for s in self.stability_sets(d)}
        return out

    def index_text(self) -> str:
        """index.json as the `index` rule writes it (and git holds it)."""
        return json.dumps(self.index(), indent=1) + "\n"

    def _index_on_disk(self) -> str | None:
        try:
            return Path(self.index_file()).read_text()
        except (OSError, UnicodeDecodeError):
            return None

    def index_stale(self) -> bool:
        """Whether index.json must be written: it is missing or its text is not the plan's. The
        one reason the `index` rule runs: never a file's time (git gives a fresh clone's files
        the checkout's times, in any order), never Snakemake's metadata (a clone has none)."""
        return self._index_on_disk() != self.index_text()

    def owner_problem(self) -> str | None:
        """Why this run may not write the outdir's shared files (summaries, tables, figures,
        report, index: paths without a content key), or None: the outdir's index.json names
        other config files than this run's. Two configs sharing an outdir share its content-
        keyed artifacts, but each would overwrite the other's summaries; the index says whose
        they are. Where the index is missing, unreadable or older than this record, none."""
        if self.configfiles is None:
            return None
        try:
            theirs = json.loads(self._index_on_disk() or "null")["configfiles"]
        except (ValueError, TypeError, KeyError):
            return None
        if not isinstance(theirs, list) or theirs == self.configfiles:
            return None
        return (f"outdir {self.out} holds the summaries, report and index of config "
                f"{', '.join(map(str, theirs))} (its {self.index_file()} says so); this run's config "
                f"{', '.join(self.configfiles)} would overwrite them. Give it an outdir of its own "
                f"(`outdir:` in the file, or --config outdir=...), or remove {self.index_file()} "
                "to hand the outdir over")


def sidecar_of(edit_path):
    """An edit's JSON sidecar, beside its .safetensors file."""
    return edit_path.removesuffix(".safetensors") + ".json"
