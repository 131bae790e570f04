"""An edit as a whole: the spec {layer: {module: value}}, the edited weights and sidecar meta of
a K-FAC or SVD edit (`curvmem edit`), and `apply`, which loads any edit file into a model."""

from __future__ import annotations

import json
from contextlib import contextmanager

import torch

from curvmem.edit.kfac import check_rho, kfac_edit_weight, pair_mask, random_orthonormal
from curvmem.edit.svd import svd_truncate
from curvmem.model.adapters import mlp_modules, parse_int_list
from curvmem.model.identity import check_identity, identity_record
from curvmem.model.load import read_layer
from curvmem.schema import PRODUCERS, layer_cost, layer_path, read_edit


def parse_spec(spec, layers=None, modules=None, value=None) -> dict:
    """{layer: {module: value}} from a JSON spec, or from layers × modules × one value."""
    if spec is not None:
        try:
            raw = json.loads(spec, object_pairs_hook=_unique_keys) if isinstance(spec, str) \
                else spec
        except json.JSONDecodeError as e:
            raise ValueError(f"--spec: not valid JSON ({e})") from None
        if not isinstance(raw, dict) or not raw:
            raise ValueError("--spec must be a JSON object {layer: {module: value}}")
        out = {}
        for layer, mods in raw.items():
            if not str(layer).strip().isdecimal():
                raise ValueError(f"--spec: '{layer}' is not a layer index")
            if int(layer) in out:  # "1" and "01": one layer twice, the second would win
                raise ValueError(f"--spec: layer {int(layer)} is given twice")
            if not isinstance(mods, dict) or not mods:
                raise ValueError(f"--spec: layer {layer} needs {{module: value}}")
            for module, v in mods.items():  # NaN passes here; the rho / drop range refuses it
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise ValueError(f"--spec: layer {layer}, module {module}: the value must be "
                                     f"a number, got {json.dumps(v)}")
            out[int(layer)] = {str(k): float(v) for k, v in mods.items()}
        return out
    if layers is None or modules is None or value is None:
        raise ValueError("give --spec, or --layers, --modules and a value (--rho / --svd-drop)")
    mods = [m.strip() for m in modules.split(",")] if isinstance(modules, str) else list(modules)
    layer_list = parse_int_list(layers)
    for name, items in (("--layers", layer_list), ("--modules", mods)):
        twice = sorted({str(x) for x in items if items.count(x) > 1})
        if twice:  # a layer or module given twice would be edited once, silently
            raise ValueError(f"{name}: {', '.join(twice)} given twice")
    return {layer: {m: float(value) for m in mods} for layer in layer_list}


def _unique_keys(pairs) -> dict:
    """A JSON object whose keys are all different (json.loads keeps the last of a repeated key)."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"--spec: '{key}' is given twice")
        out[key] = value
    return out


def layer_set_label(spec: dict) -> str:
    """"L4+5" for a {layer: {module: value}} spec (keys may be JSON strings); "" for none."""
    layers = sorted(int(k) for k in spec if str(k).isdecimal())
    return "L" + "+".join(map(str, layers)) if layers else ""


def build_edit(model, spec: dict, method: str = "kfac", eigen_dir=None, keep: str = "top",
               seed: int = 0) -> tuple[dict, dict]:
    """Edited weights {param_name: tensor (model layout, model dtype)} and the sidecar meta.

    Everything is validated (modules, layers, ρ, eigen files against the model) before any
    weight is computed, so a bad spec fails fast and writes nothing.
    """
    if method not in ("kfac", "svd"):
        raise ValueError(f"--method must be kfac or svd, got '{method}'")
    targets = []
    for layer, mods in sorted(spec.items()):
        for m in mlp_modules(model, [layer], list(mods)):
            value = mods[m.name]
            if method == "kfac":
                check_rho(value)
            elif not 0.0 <= value < 1.0:
                raise ValueError(f"the SVD drop fraction must be in [0, 1), got {value}")
            targets.append((m, value))
    eigen = {}
    if method == "kfac":
        if eigen_dir is None:
            raise ValueError("a K-FAC edit needs --eigen DIR (from `curvmem eigen`)")
        for layer, mods in spec.items():
            eigen[layer] = read_layer(layer_path(eigen_dir, layer), "eigen", model=model,
                                      modules=list(mods))
    tensors, stats = {}, {}
    for m, value in targets:
        W = m.weight().detach()
        if method == "svd":
            W_new, st = svd_truncate(W, value)
            st["drop"] = value
        else:
            g = eigen[m.layer].groups[m.name]
            mask = pair_mask(g["G_eigenvalues"], g["A_eigenvalues"], value, keep, seed)
            UG, UA = g["G_eigenvectors"], g["A_eigenvectors"]
            if keep == "random-basis":  # the same spectra and mask in a basis that knows nothing
                UG = random_orthonormal(len(g["G_eigenvalues"]), seed)
                UA = random_orthonormal(len(g["A_eigenvalues"]), seed + 1)
            W_new, st = kfac_edit_weight(W, UG, g["G_eigenvalues"], UA, g["A_eigenvalues"], mask)
            st.update(rho=value, keep=keep)
        tensors[m.param_name] = m.to_stored_layout(W_new.to(m.module.weight.dtype))
        stats[m.param_name] = st
    method_name = method if method == "svd" or keep == "top" else f"kfac-{keep}"
    meta = {
        "method": method_name,
        "spec": {str(k): v for k, v in spec.items()},
        "keep": keep,
        "seed": seed,
        "modules": stats,
        **identity_record(model),
    }
    if eigen:
        first = next(iter(eigen.values())).attrs
        meta["factors"] = {k: first.get(k) for k in ("fisher", "n_tokens", "seq_len", "seed",
                                                     "corpus_fingerprint", "shard")}
    return tensors, meta


def upstream_cost(spec: dict, eigen_dir=None) -> dict:
    """What an edit of `spec`'s layers builds on: the summed seconds (collection, merge,
    eigendecomposition) and the largest peak RSS of the eigen files it reads, from their cost
    files (zeros for an SVD edit, or files with no recorded cost). Not part of the edit."""
    costs = [layer_cost(layer_path(eigen_dir, layer)) for layer in spec] if eigen_dir else []
    return {"seconds": sum(c["seconds"] for c in costs),
            "peak_rss_mb": max((c["peak_rss_mb"] for c in costs), default=0.0)}


def apply(model, path) -> dict:
    """Load an edit file (from `curvmem edit` or `curvmem baseline`) into `model`, in place."""
    tensors, meta = read_edit(path)
    params = dict(model.named_parameters())
    check_identity(meta, model, path, PRODUCERS["edit"], what="made for", redo="remake it")
    for name, t in tensors.items():
        if name not in params:
            raise ValueError(f"{path}: the model has no parameter '{name}'")
        if tuple(params[name].shape) != tuple(t.shape):
            raise ValueError(f"{path}: '{name}' is {tuple(t.shape)}, the model's is "
                             f"{tuple(params[name].shape)}")
    with torch.no_grad():
        for name, t in tensors.items():
            params[name].copy_(t.to(params[name].dtype))
    return meta


@contextmanager
def restored_after(model, path):
    """Put back, on leaving, the parameters the edit file `path` touches: apply an edit inside,
    and the model is the unedited one again afterwards."""
    touched = set(read_edit(path)[0])
    saved = {n: p.detach().clone() for n, p in model.named_parameters() if n in touched}
    try:
        yield
    finally:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in saved:
                    p.copy_(saved[n])

