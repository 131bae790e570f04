"""Naming and expansion: turn the (validated) config into the artifacts to build.

Nothing here computes anything about models: it only names files, derives content keys and
spells `curvmem` flags. Layout under `outdir` (OUT):

    {domain}/models/{model_key}/...        embedded world, tokenizer, trained model (lm) or data + model (vit)
    {domain}/factors/{fkey}/layer_L.nc     K-FAC factors of one factor set (sharded: shard-k-of-n/ + merge)
    {domain}/eigen/{fkey}/layer_L.nc       their eigendecomposition
    {domain}/edits/{key}.safetensors|.json one edit (K-FAC or SVD);  lm/bsn/{key}.* for BalancedSubnet
    {domain}/eval/{key}/{evaluation}.json  one evaluation of the base model (key base-...) or an edit
    lm_summary.json, vit_summary.json, compare.*, report.html

Keys are content hashes: a factor set's key covers the model config and the factor settings; an
edit's key covers its spec, its factor set's key and the model config. A changed spec therefore
lands in a new file (old results stay), and an unchanged one is never recomputed.
"""

import hashlib
import itertools
import json
import re
import shlex

from snakemake.exceptions import WorkflowError

OUT = config["outdir"].rstrip("/")
DOMAINS = [d for d in ("lm", "vit") if config.get(d)]
NEVER = "(?!x)x"  # a wildcard constraint that matches nothing


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


# --------------------------------------------------------------------------- base models


def embedded(domain):
    return config[domain]["model"]["source"] == "embedded"


def preset_settings(domain):
    """The embedded preset as the installed curvmem resolves it. Part of the model key, so new
    defaults in a curvmem upgrade build a new model instead of reusing a stale one."""
    if not embedded(domain):
        return None
    from dataclasses import asdict

    from curvmem import presets  # torch-free: parsing the DAG never imports torch

    preset = config[domain]["model"].get("preset") or "default"
    if domain == "lm":
        return {"world": asdict(presets.world_config(preset)),
                "train": asdict(presets.train_config(preset))}
    return presets.VISION_PRESETS[preset]


def model_key(domain):
    c = config[domain]
    return digest({"model": c["model"], "data": c.get("data"), "preset": preset_settings(domain)})


def model_dir(domain):
    """Where an embedded model (and its world or data) is built."""
    return f"{OUT}/{domain}/models/{model_key(domain)}"


def model_arg(domain):
    """The --model argument: a directory built here, a local path or a hub id."""
    m = config[domain]["model"]
    if embedded(domain):
        return f"{model_dir(domain)}/model"
    if "id" not in m and "path" not in m:
        raise WorkflowError(f"config {domain}.model: a pretrained model needs "
                            f"{'`id` (hub id or directory)' if domain == 'lm' else '`path`'}")
    return m.get("id") or m.get("path")


def model_input(domain):
    """Input files for rules that load the base model (empty for a hub id or a user path)."""
    return [model_arg(domain)] if embedded(domain) else []


def world_file(name):
    return f"{model_dir('lm')}/world/{name}"


def lm_data(name):
    """A named LM data set (`lm.data`): a world file (embedded) or the user's path."""
    data = config["lm"].get("data") or {}
    if name not in data:
        raise WorkflowError(f"config lm.data has no entry '{name}' (known: {sorted(data)}); "
                            f"add `{name}: FILE.jsonl` under lm.data")
    return world_file(data[name]) if embedded("lm") else data[name]


def vit_data():
    if embedded("vit"):
        return f"{model_dir('vit')}/data.safetensors"
    if not config["vit"].get("data"):
        raise WorkflowError("config vit.data: a pretrained ViT needs its data file "
                            "(safetensors, see docs/vision.md)")
    return config["vit"]["data"]


def domain_data(domain):
    """What factor collection reads."""
    return lm_data("corpus") if domain == "lm" else vit_data()


# --------------------------------------------------------------------------- factor sets


def factor_config(domain, fset):
    f = dict(config[domain]["factors"])
    if fset == "control":
        f.update(config[domain].get("control_factors") or {})
    return f


def factor_key(domain, fset):
    return f"{fset}-" + digest({"model": model_key(domain), "factors": factor_config(domain, fset)})


# --------------------------------------------------------------------------- edit specs


def _value_tag(value):
    """rho / drop in a label: 0.6, or per module: gate0.5-up0.005."""
    if isinstance(value, dict):
        return "-".join(f"{m.split('.')[-1].removesuffix('_proj')}{v}" for m, v in value.items())
    return str(value)


def _sweep_specs(domain, name, sweep):
    """One sweep of the config (list-valued keys) -> [(label, spec)]."""
    method = sweep["method"]
    needs = {"kfac": ["layers", "modules", "rho"], "svd": ["layers", "modules", "svd_drop"],
             "bsn": ["ratio"]}[method]
    missing = [k for k in needs if k not in sweep]
    if missing:
        raise WorkflowError(f"config {domain}.edits.{name}: method {method} needs {missing}")
    if method == "bsn" and domain != "lm":
        raise WorkflowError(f"config {domain}.edits.{name}: bsn is a language-model baseline")
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
            raise WorkflowError(f"config {domain}.edits.{name}: {value_key} names modules "
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


def expand_edits(domain):
    """{key: spec} for every edit the config's sweeps ask for; spec["label"] names it in tables."""
    edits, labels = {}, set()
    for name, sweep in config[domain]["edits"].items():
        for label, spec in _sweep_specs(domain, name, sweep):
            if label in labels:
                raise WorkflowError(f"config {domain}.edits: two edits are both named {label}")
            labels.add(label)
            fkey = factor_key(domain, spec["factors"]) if spec["method"] == "kfac" else None
            key = f"{label}-{digest({'spec': spec, 'factors': fkey, 'model': model_key(domain)})}"
            edits[key] = {**spec, "label": label, "fkey": fkey}
    return edits


EDITS = {d: expand_edits(d) for d in DOMAINS}
BASE = {d: f"base-{model_key(d)}" for d in DOMAINS}


def factor_sets(domain):
    """{fkey: {"fset": name, "layers": [...], "shards": n}} for the factor sets kfac edits use."""
    sets = {}
    for spec in EDITS[domain].values():
        if spec["method"] != "kfac":
            continue
        fs = sets.setdefault(spec["fkey"], {"fset": spec["factors"], "layers": set()})
        fs["layers"].update(spec["layers"])
        known = factor_config(domain, spec["factors"])["modules"]
        extra = sorted(set(spec["modules"]) - set(known))
        if extra:
            raise WorkflowError(f"config {domain}.edits.{spec['name']}: modules {extra} are not "
                                f"in {domain}.factors.modules {known}; add them there")
    for fkey, fs in sets.items():
        fs["layers"] = sorted(fs["layers"])
        fs["shards"] = factor_config(domain, fs["fset"])["shards"]
    return sets


FACTOR_SETS = {d: factor_sets(d) for d in DOMAINS}


def fkeys(sharded):
    return [k for d in DOMAINS for k, fs in FACTOR_SETS[d].items() if (fs["shards"] > 1) == sharded]


def factor_files(domain, kind="eigen"):
    return [f"{OUT}/{domain}/{kind}/{fkey}/layer_{layer}.nc"
            for fkey, fs in FACTOR_SETS[domain].items() for layer in fs["layers"]]


def collect_flags(domain, fkey):
    f = factor_config(domain, FACTOR_SETS[domain][fkey]["fset"])
    return flags(("--modules", f["modules"]), ("--tokens", f["tokens"]),
                 ("--seq-len", f.get("seq_len") if domain == "lm" else None),
                 ("--batch-size", f["batch_size"]), ("--fisher", f["fisher"]),
                 ("--seed", f["seed"]), ("--dtype", f["dtype"]),
                 ("--checkpoint-every", f["checkpoint_every"] or None))


def shard_files(wildcards):
    n = FACTOR_SETS[wildcards.domain][wildcards.fkey]["shards"]
    return [f"{OUT}/{wildcards.domain}/factors/{wildcards.fkey}/shard-{k}-of-{n}/"
            f"layer_{wildcards.layer}.nc" for k in range(n)]  # curvmem counts shards from 0


def edit_path(domain, key):
    sub = "bsn" if EDITS[domain][key]["method"] == "bsn" else "edits"
    return f"{OUT}/{domain}/{sub}/{key}.safetensors"


def edit_keys(domain, methods):
    return [k for k, s in EDITS[domain].items() if s["method"] in methods]


def edit_inputs(wildcards):
    spec = EDITS[wildcards.domain][wildcards.key]
    files = model_input(wildcards.domain)
    if spec["method"] == "kfac":
        files += [f"{OUT}/{wildcards.domain}/eigen/{spec['fkey']}/layer_{layer}.nc"
                  for layer in spec["layers"]]
    return files


def edit_flags(wildcards):
    spec = EDITS[wildcards.domain][wildcards.key]
    value = spec.get("rho", spec.get("svd_drop"))
    per_module = None  # a value per module goes through --spec {layer: {module: value}}
    if isinstance(value, dict):
        per_module = json.dumps({str(layer): value for layer in spec["layers"]})
        value = None
    eigen = f"{OUT}/{wildcards.domain}/eigen/{spec['fkey']}" if spec["fkey"] else None
    kfac = spec["method"] == "kfac"
    return flags(("--model", model_arg(wildcards.domain)), ("--eigen", eigen),
                 ("--method", spec["method"]), ("--layers", spec["layers"]),
                 ("--modules", spec["modules"]), ("--spec", per_module),
                 ("--rho" if kfac else "--svd-drop", value),
                 ("--keep", spec.get("keep")), ("--seed", spec.get("seed")),
                 ("--dtype", config[wildcards.domain]["model"].get("dtype")),
                 ("--tag", method_tag(spec)))


def bsn_flags(wildcards):
    spec = EDITS["lm"][wildcards.key]
    return flags(("--ratio", spec["ratio"]), ("--alpha", spec.get("alpha")),
                 ("--epochs", spec.get("epochs")), ("--lr", spec.get("lr")),
                 ("--seed", spec.get("seed")), ("--seq-len", spec.get("seq_len")),
                 ("--batch-size", spec.get("batch_size")))


# --------------------------------------------------------------------------- evaluations

# `curvmem report-lm` reads these evaluation files from each entry's directory (docs/lm.md)
REPORT_LM_NEEDS = ["memorization_forget", "memorization_untargeted", "memorization_control",
                   "perplexity", "tasks"]
if "lm" in DOMAINS:
    _missing = [n for n in REPORT_LM_NEEDS if n not in config["lm"]["evaluations"]]
    if _missing:
        raise WorkflowError(f"config lm.evaluations lacks {_missing}: curvmem report-lm needs "
                            f"{REPORT_LM_NEEDS} (coherence is optional); see docs/workflow.md")


def eval_keys(domain):
    return [BASE[domain]] + list(EDITS[domain])


def lm_evaluations(key):
    """Evaluation names that apply to `key` (coherence compares an edit with the base)."""
    evals = config["lm"]["evaluations"]
    return [n for n, e in evals.items() if not (key == BASE["lm"] and e["kind"] == "coherence")]


def lm_eval_files(key):
    return [f"{OUT}/lm/eval/{key}/{name}.json" for name in lm_evaluations(key)]


def lm_eval_inputs(wildcards):
    ev = config["lm"]["evaluations"][wildcards.evaluation]
    files = model_input("lm") + [lm_data(ev["data"])]
    if wildcards.key != BASE["lm"]:
        files.append(edit_path("lm", wildcards.key))
    return files


def edit_flag(domain, key):
    return "" if key == BASE[domain] else flags(("--edit", edit_path(domain, key)))


def label(domain, key):
    return "base" if key == BASE[domain] else EDITS[domain][key]["label"]


def report_entries(domain):
    """--entry NAME=PATH for the report commands: an eval directory (lm) or file (vit)."""
    if domain == "lm":
        pairs = [(label("lm", k), f"{OUT}/lm/eval/{k}") for k in eval_keys("lm")]
    else:
        pairs = [(label("vit", k), f"{OUT}/vit/eval/{k}/vit.json") for k in eval_keys("vit")]
    return " ".join(f"--entry {shlex.quote(f'{n}={p}')}" for n, p in pairs)


# --------------------------------------------------------------------------- resources and targets


def res(rule, domain=None):
    """Cluster resources of a rule: built-in floor < resources.default < resources.RULE <
    {domain}.resources.RULE (so a 7B config can ask for more than the embedded default)."""
    r = {"mem_mb": 2000, "runtime": 30, "gpu": 0, "threads": config["threads"]}
    top = config.get("resources") or {}
    r.update(top.get("default", {}))
    r.update(top.get(rule, {}))
    if domain:
        r.update(((config[domain].get("resources") or {}).get(rule)) or {})
    return r


def resources_of(rule, domain=None):
    """The `resources:` keywords of a rule; `domain` may be a wildcard name ("{domain}")."""
    def pick(key):
        if domain == "{domain}":
            return lambda wildcards: res(rule, wildcards.domain)[key]
        return res(rule, domain)[key]
    return {key: pick(key) for key in ("mem_mb", "runtime", "gpu")}


def summaries():
    """Tables and figures (all report()-ed) that the HTML report shows."""
    files = []
    if "lm" in DOMAINS:
        files += [f"{OUT}/lm_summary.json", f"{OUT}/lm_table.md", f"{OUT}/lm_figure.png",
                  f"{OUT}/lm_sweep.png",
                  f"{OUT}/compare.png", f"{OUT}/compare.md"]
    if "vit" in DOMAINS:
        files += [f"{OUT}/vit_summary.json", f"{OUT}/vit_table.md", f"{OUT}/vit_figure.png"]
    return files


def final_targets():
    if not DOMAINS:
        raise WorkflowError("the config has neither an `lm` nor a `vit` section: nothing to do")
    return summaries() + [f"{OUT}/report.html"]
