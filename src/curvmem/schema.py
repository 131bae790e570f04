"""The artifact schema, in one place: factor and eigenbasis netCDF files, edit files, JSON.

Factors and eigenbases: one netCDF file per layer, an xarray.DataTree (engine h5netcdf) with one
group per module, named by its path inside the block (e.g. "/mlp.gate_proj"):

    factors  A (a_i, a_j), G (g_i, g_j)                                   float32 (or float64)
    eigen    A_eigenvalues (a_k), A_eigenvectors (a_i, a_k),
             G_eigenvalues (g_k), G_eigenvectors (g_i, g_k)               eigenvalues descending

Root attributes (ROOT_ATTRS) say where the numbers came from. Edits: a safetensors file of full
parameter names -> edited weights in the model's own layout, plus a JSON sidecar (same stem,
".json") with the method, spec and per-module stats. Every write is atomic (temp file + rename),
so a killed job never leaves a file that looks complete.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# --------------------------------------------------------------------------- JSONL data files


def iter_jsonl(path, required: tuple[str, ...] = ()):
    """Rows of a JSONL file, streamed; one clear error for a missing file, bad JSON, a line that
    is not an object, or missing fields. Blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    with path.open() as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not valid JSON ({e})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{i}: each line must be a JSON object")  # noqa: TRY004
            missing = [k for k in required if k not in row]
            if missing:
                raise ValueError(f"{path}:{i}: missing field(s) {missing}")
            yield row


def read_jsonl(path, required: tuple[str, ...] = ()) -> list[dict]:
    """`iter_jsonl` as a list; an empty file is an error too."""
    rows = list(iter_jsonl(path, required))
    if not rows:
        raise ValueError(f"{path}: no rows (the file is empty)")
    return rows

SCHEMA_VERSION = 1

ROOT_ATTRS = (
    "kind",  # "factors" | "eigen"
    "schema_version",
    "model_id",
    "model_fingerprint",
    "layer",
    "fisher",  # "sampled" | "empirical"
    "n_tokens",  # positions that entered the averages
    "seq_len",
    "corpus_fingerprint",
    "seed",
    "curvmem_version",
)

VARIABLES = {
    "factors": {"A": ("a_i", "a_j"), "G": ("g_i", "g_j")},
    "eigen": {
        "A_eigenvalues": ("a_k",),
        "A_eigenvectors": ("a_i", "a_k"),
        "G_eigenvalues": ("g_k",),
        "G_eigenvectors": ("g_i", "g_k"),
    },
}


class StoreError(ValueError):
    """An artifact that is missing, malformed, or does not belong to the model at hand."""


# --------------------------------------------------------------------------- atomic writes


@contextmanager
def atomic_output(path):
    """Yield a temp path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path, obj) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")


def read_json(path):
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: no such file")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise StoreError(f"{path}: not valid JSON ({e})") from None


# --------------------------------------------------------------------------- layer files


@dataclass
class LayerFile:
    """One layer's factors or eigenbases: groups[module][variable] -> ndarray, plus attrs."""

    kind: str
    layer: int
    groups: dict
    attrs: dict

    def modules(self) -> list[str]:
        return list(self.groups)


def _check_groups(kind: str, groups: dict, where: str) -> None:
    if kind not in VARIABLES:
        raise StoreError(f"{where}: unknown artifact kind '{kind}'")
    if not groups:
        raise StoreError(f"{where}: no module groups")
    for name, vars_ in groups.items():
        for var, dims in VARIABLES[kind].items():
            if var not in vars_:
                raise StoreError(f"{where}: group '{name}' lacks variable '{var}'")
            arr = np.asarray(vars_[var])
            if arr.ndim != len(dims):
                raise StoreError(f"{where}: '{name}/{var}' has {arr.ndim} dims, expected {dims}")
            if not np.all(np.isfinite(arr)):
                raise StoreError(f"{where}: '{name}/{var}' contains NaN or inf")
        if kind == "factors":
            for var in ("A", "G"):
                a = np.asarray(vars_[var])
                if a.shape[0] != a.shape[1]:
                    raise StoreError(f"{where}: '{name}/{var}' is not square: {a.shape}")
        else:
            for side in ("A", "G"):
                vals = np.asarray(vars_[f"{side}_eigenvalues"])
                vecs = np.asarray(vars_[f"{side}_eigenvectors"])
                if vecs.shape != (vals.shape[0], vals.shape[0]):
                    raise StoreError(f"{where}: '{name}/{side}' eigenvectors {vecs.shape} do not "
                                     f"match {vals.shape[0]} eigenvalues")


def write_layer(path, kind: str, layer: int, groups: dict, attrs: dict) -> None:
    """Write one layer file atomically. `groups[module][var]` are arrays (see VARIABLES)."""
    import xarray as xr

    from curvmem import __version__

    _check_groups(kind, groups, str(path))
    root = {"kind": kind, "schema_version": SCHEMA_VERSION, "layer": int(layer),
            "curvmem_version": __version__}
    root.update({k: v for k, v in attrs.items() if v is not None})
    for k, v in root.items():
        if isinstance(v, (dict, list, tuple, bool)):
            root[k] = json.dumps(v)
    tree = {"/": xr.Dataset(attrs=root)}
    for name, vars_ in groups.items():
        tree[f"/{name}"] = xr.Dataset(
            {var: (dims, np.asarray(vars_[var])) for var, dims in VARIABLES[kind].items()})
    with atomic_output(path) as tmp:
        xr.DataTree.from_dict(tree).to_netcdf(tmp, engine="h5netcdf")


def read_layer(path, kind: str, model=None, modules=None) -> LayerFile:
    """Read and validate a layer file.

    With `model`, refuse a file computed on different weights (fingerprint) or whose shapes do not
    match the model's modules. With `modules`, require those groups to be present.
    """
    import xarray as xr

    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: no such {kind} file")
    try:
        with xr.open_datatree(path, engine="h5netcdf") as dt:
            attrs = {k: (v.item() if isinstance(v, np.generic) else v)
                     for k, v in dt.attrs.items()}
            groups = {
                child.name: {var: child.dataset[var].values.copy() for var in child.dataset.data_vars}
                for child in dt.children.values()
            }
    except Exception as e:  # noqa: BLE001 (h5py and xarray raise many types for bad files)
        raise StoreError(f"{path}: cannot read as a curvmem {kind} file "
                         f"(truncated or not netCDF?): {type(e).__name__}: {e}") from None
    if attrs.get("kind") != kind:
        raise StoreError(f"{path}: is a '{attrs.get('kind')}' file, expected '{kind}'")
    missing = [a for a in ROOT_ATTRS if a not in attrs]
    if missing:
        raise StoreError(f"{path}: missing root attributes {missing}")
    _check_groups(kind, groups, str(path))
    layer = int(attrs["layer"])
    if modules is not None:
        absent = [m for m in modules if m not in groups]
        if absent:
            raise StoreError(f"{path}: no group for module(s) {absent}; has {list(groups)}")
    if model is not None:
        from curvmem.models import mlp_modules, model_fingerprint

        fp = model_fingerprint(model)
        if attrs["model_fingerprint"] != fp:
            raise StoreError(
                f"{path}: computed on model {attrs['model_id']} (fingerprint "
                f"{attrs['model_fingerprint']}), but the model given has fingerprint {fp}. "
                "Factors belong to the exact weights they were collected on.")
        for m in mlp_modules(model, [layer], [g for g in groups]):
            a_var, g_var = ("A", "G") if kind == "factors" else ("A_eigenvalues", "G_eigenvalues")
            got = (groups[m.name][a_var].shape[0], groups[m.name][g_var].shape[0])
            if got != (m.d_in, m.d_out):
                raise StoreError(f"{path}: '{m.name}' has (d_in, d_out) = {got}, but the model's "
                                 f"module has {(m.d_in, m.d_out)}")
    return LayerFile(kind, layer, groups, attrs)


def layer_path(directory, layer: int) -> Path:
    return Path(directory) / f"layer_{int(layer)}.nc"


# --------------------------------------------------------------------------- edit files


def edit_sidecar(path) -> Path:
    return Path(path).with_suffix(".json")


def write_edit(path, tensors: dict, meta: dict) -> None:
    """Edited weights (full parameter name -> tensor, model layout) + JSON sidecar, atomically.

    The sidecar is renamed into place first, so a present safetensors file always has its meta.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise StoreError(f"{path}: an edit file must end in .safetensors")
    if not tensors:
        raise StoreError(f"{path}: an edit with no tensors")
    write_json(edit_sidecar(path), meta)
    with atomic_output(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
                  metadata={"curvmem": "edit", "method": str(meta.get("method", ""))})


def read_edit(path) -> tuple[dict, dict]:
    """(tensors, meta) of an edit file; meta is {} when the sidecar is absent."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: no such edit file")
    try:
        tensors = load_file(str(path))
    except Exception as e:  # noqa: BLE001 (safetensors raises several types)
        raise StoreError(f"{path}: not a readable safetensors file: {e}") from None
    side = edit_sidecar(path)
    meta = read_json(side) if side.is_file() else {}
    return tensors, meta
