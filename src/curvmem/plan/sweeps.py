"""Sweeps: a config's list-valued edit settings expanded into one labelled spec per edit."""

from __future__ import annotations

import itertools
import math

from curvmem.plan.common import PlanError

# edit methods made in the job that evaluates them (`curvmem edit ... --then evaluate ...`): an
# edit costs a fraction of a second against seconds of start-up. BalancedSubnet trains in its own.
MADE_WITH_EVALUATION = ("kfac", "svd")
# edit sweeps that draw random numbers (BalancedSubnet's init and order; the random controls)
RANDOM_KEEPS = ("random", "random-mass", "random-basis")
# what each method's sweep must give
NEEDS = {"kfac": ["layers", "modules", "rho"], "svd": ["layers", "modules", "svd_drop"],
         "bsn": ["ratio"]}
BSN_SETTINGS = ("alpha", "epochs", "lr", "seed", "seq_len", "batch_size")


def value_tag(value):
    """rho / drop in a label: 0.6, or per module: gate0.5-up0.005."""
    if isinstance(value, dict):
        return "-".join(f"{m.split('.')[-1].removesuffix('_proj')}{v}" for m, v in value.items())
    return str(value)


def check_fraction(where, value, rho: bool) -> None:
    """Refuse a rho outside (0, 1] or an SVD drop outside [0, 1), per module where a mapping.

    NaN is neither (the schema's bounds let it through: every comparison with NaN is false).

    Args:
        where: the config key, for the message.
        value: a number or {module: number}.
        rho: a rho (else an SVD drop).

    Raises:
        PlanError: naming the value and its range.
    """
    for v in value.values() if isinstance(value, dict) else [value]:
        ok = isinstance(v, (int, float)) and math.isfinite(v) and (
            0 < v <= 1 if rho else 0 <= v < 1)
        if not ok:
            raise PlanError(f"{where}: {v} is not in {'(0, 1]' if rho else '[0, 1)'}")


def sweep_specs(domain, name, sweep):
    """One sweep of the config expanded into its edits.

    Args:
        domain: `lm` or `vit`.
        name: the sweep's name (its key under `{domain}.edits`).
        sweep: the sweep (list-valued keys expand: layers x rho, layers x svd_drop, ratio).

    Returns:
        [(label, spec)], in the sweep's order.

    Raises:
        PlanError: a missing key, BalancedSubnet for a ViT, a value out of range, or a
            per-module value naming a module the sweep does not edit.
    """
    method = sweep["method"]
    missing = [k for k in NEEDS[method] if k not in sweep]
    if missing:
        raise PlanError(f"config {domain}.edits.{name}: method {method} needs {missing}")
    if method == "bsn" and domain != "lm":
        raise PlanError(f"config {domain}.edits.{name}: bsn is a language-model baseline")
    out = []
    if method == "bsn":
        fixed = {k: sweep[k] for k in BSN_SETTINGS if k in sweep}
        for ratio in sweep["ratio"]:
            spec = {"name": name, "method": "bsn", "ratio": ratio, **fixed}
            out.append((f"{name}-ratio{ratio}", spec))
        return out
    value_key = "rho" if method == "kfac" else "svd_drop"
    for value in sweep[value_key]:
        check_fraction(f"config {domain}.edits.{name}.{value_key}", value, method == "kfac")
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
        out.append((f"{name}-L{layer_tag}-{tag}{value_tag(value)}", spec))
    return out


def method_tag(spec):
    """The sidecar's method label (docs/ARCHITECTURE.md).

    Args:
        spec: an edit's spec (`sweep_specs`).

    Returns:
        kfac, kfac-KEEP (a keep control), kfac-shard (control_factors), kfac-VARIANT (a factor
        variant), svd or bsn.
    """
    if spec["method"] != "kfac":
        return spec["method"]
    if spec["keep"] != "top":
        return f"kfac-{spec['keep']}"
    if spec["factors"] == "main":
        return "kfac"
    return "kfac-shard" if spec["factors"] == "control" else f"kfac-{spec['factors']}"
