"""Reading a workflow config: the checks the schema cannot make, and the seeds of a study.

Snakemake has validated the config against workflow/schemas/config.schema.yaml (and filled its
defaults) before the planner sees it; these checks refuse what the schema lets through (a name
that would leave the outdir, a repeated key, a brace Snakemake reads as a wildcard) with one
error naming the key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from curvmem import presets
from curvmem.plan.common import PlanError
from curvmem.plan.layout import seed_outdir
from curvmem.plan.sweeps import RANDOM_KEEPS

# Seeds of a multi-seed study (`seeds` in the config): the sections whose `seed` one run offsets
SEEDED_SECTIONS = (("lm", "model"), ("lm", "factors"), ("lm", "control_factors"), ("vit", "model"),
                   ("vit", "factors"))
# characters a name (or path) of the config may not hold where it becomes part of a path: a
# separator would leave the directory it names; Snakemake reads braces as a wildcard
_NOT_IN_NAMES = ("/", "\\", "{", "}", "\0")


def schema_problem(error):
    """The most specific reason a workflow config failed its schema.

    Args:
        error: the WorkflowError Snakemake's `validate` raised (while handling the jsonschema
            error).

    Returns:
        `path.to.key: what is wrong`, or the error's text when it holds no jsonschema error.
    """
    import jsonschema

    cause = error.__context__  # snakemake raises its WorkflowError while handling this one
    if not isinstance(cause, jsonschema.ValidationError):
        return str(error)
    if cause.context:  # oneOf / anyOf: report the alternative that came closest
        cause = jsonschema.exceptions.best_match(cause.context)
    where = ".".join(map(str, cause.absolute_path)) or "(top level)"
    return f"{where}: {cause.message}"


def check_name(where: str, name) -> None:
    """Refuse a name of the config that cannot be one path component under the outdir.

    A sweep, an edit label, an evaluation, a factor variant, an embedded world file: no
    separator, no `.`/`..`, no braces, so every output stays where the plan puts it.

    Args:
        where: the config key, for the message.
        name: the name.

    Raises:
        PlanError: the name holds a separator or brace, or is empty, `.` or `..`.
    """
    text = str(name)
    bad = [c for c in _NOT_IN_NAMES if c in text]
    if bad or text in ("", ".", ".."):
        why = f"holds {' '.join(map(repr, bad))}" if bad else "is not a file name"
        raise PlanError(f"config {where}: {text!r} {why}; it names a file under the outdir, so it "
                        "must be one path component (no '/', '\\', braces, '.' or '..')")


def check_outdir(outdir: str) -> None:
    """Refuse an outdir that is empty, `/`, has a `..` component or holds a brace.

    Args:
        outdir: the config's `outdir`.

    Raises:
        PlanError: the results would land at the file system's root, outside the tree the
            outdir names, or under a wildcard.
    """
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
    """Refuse a file of the user's (data, a model directory) whose name holds a brace.

    Snakemake would read the brace as a wildcard, and its own error names neither the key nor
    the file.

    Args:
        where: the config key, for the message.
        path: the value (anything but a string passes).

    Raises:
        PlanError: the path holds a brace.
    """
    if isinstance(path, str) and any(c in path for c in ("{", "}", "\0")):
        raise PlanError(f"config {where}: {path!r} holds a brace (Snakemake reads braces as a "
                        "wildcard); rename or link the file")


def configfile_names(paths) -> list[str]:
    """The config files of a run as its index records them.

    Args:
        paths: the files, as given to Snakemake.

    Returns:
        Each relative to the working directory, normalized, so `--configfile=/abs/x.yaml` and
        `--configfile x.yaml` are the same file.
    """
    return [os.path.normpath(os.path.relpath(os.path.abspath(str(p)))) for p in paths]


def check_config_file(path) -> None:
    """Refuse a config file whose mapping repeats a key.

    A YAML loader keeps the last value and says nothing, so the first is silently ignored.

    Args:
        path: the config file.

    Raises:
        PlanError: naming the file, the key and both lines.
    """
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


def seeded_config(config: dict) -> dict:
    """The config of one run of a multi-seed study.

    `seeds: [0, 1, 2]` lists the study's seeds and `seed` (default: the first) picks this run's:
    every seed of world and model, factors, control factors, BalancedSubnet and the random
    controls is offset by it, and the run writes under `{outdir}/seed-{seed}`. Seed 0 leaves
    every setting (and so every content key) as written.

    Args:
        config: the validated config.

    Returns:
        The run's config (a copy); a config without `seeds` comes back unchanged.

    Raises:
        PlanError: `seed` without `seeds`, a seed listed twice, or a `seed` not listed.
    """
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
    out["outdir"] = seed_outdir(config["outdir"], seed)
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


def seed_outdirs(config: dict) -> dict[int, str]:
    """The outdirs of a multi-seed study's runs.

    Args:
        config: the study's config (as written: `outdir` is the study's).

    Returns:
        {seed: its run's outdir}; {} without `seeds`.
    """
    return {s: seed_outdir(config["outdir"], s) for s in config.get("seeds", [])}


def local_path(name: str) -> bool:
    """Whether a model is named by a path (absolute, relative with ./, or existing here) rather
    than a hub id: what `owner/name` means depends on whether that directory exists."""
    return name.startswith(("/", ".", "~")) or Path(name).exists() or name.count("/") > 1


def model_layers(domain, model: dict):
    """How many blocks the config's model has.

    Args:
        domain: `lm` or `vit`.
        model: the config's `{domain}.model`.

    Returns:
        The embedded preset's depth, or that in a local pretrained directory's config.json;
        None when only the hub knows (the job checks it then).
    """
    if model["source"] == "embedded":
        preset = model.get("preset") or "default"
        if domain == "lm":
            return presets.train_config(preset).n_layers
        if model.get("model_name"):  # a timm architecture: its depth is timm's
            return None
        return presets.VISION_PRESETS[preset]["model"]["depth"]
    cfg = Path(str(model.get("id") or model.get("path") or "")) / "config.json"
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
