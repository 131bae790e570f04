"""The artifact schema, in one place: factor and eigenbasis netCDF files, edit files, JSON.

Factors and eigenbases: one netCDF file per layer, an xarray.DataTree (engine h5netcdf) with one
group per module, named by its path inside the block (e.g. "/mlp.gate_proj"):

    factors  A (a_i, a_j), G (g_i, g_j)                                   float32 (or float64)
    eigen    A_eigenvalues (a_k), A_eigenvectors (a_i, a_k),
             G_eigenvalues (g_k), G_eigenvectors (g_i, g_k)               eigenvalues descending

Root attributes (ROOT_ATTRS) say where the numbers came from. Edits: a safetensors file of full
parameter names -> edited weights in the model's own layout, plus a JSON sidecar (same stem,
".json") with the method, spec and per-module stats. Every write is atomic (temp file + rename),
so a killed job never leaves a file that looks complete (curvmem.io).

Integrity: each layer and edit file has a checksum sidecar `<file>.sha256`, written after the
payload (for an edit: weights, then checksum, then the JSON sidecar, which records the weights'
sha256 as `weights_sha256`, so a sidecar beside other weights is refused). Readers verify it
first, so a truncated or corrupted file is refused with the file and the command that makes it
named (PRODUCERS), never read as numbers. Numbers that cannot be right are refused too: NaN or
Inf in factors, eigenbases or edited weights, and eigenvectors that are not orthonormal
(ORTHONORMAL_TOLERANCE).

The model an artifact belongs to: `model_fingerprint` (root attribute or sidecar key; config and
every weight at bfloat16 precision, "v2:...") and, where the model held float32 weights,
`model_digest` (every weight exactly); see `curvmem.model.identity`.

Model-free: `read_layer` checks a file against itself; `curvmem.model.read_layer` also checks it
against the model at hand (fingerprint, digest and shapes).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The JSON helpers and the error type live in curvmem.io; they are part of the schema's API too.
from curvmem.io import (  # noqa: F401
    StoreError,
    atomic_artifact,
    atomic_output,
    check_space,
    read_cost,
    read_json,
    verify_checksum,
    write_json,
)

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

# Who writes each artifact kind: named in the error for a corrupt or incomplete file.
PRODUCERS = {
    "factors": "`curvmem collect` / `curvmem merge` (workflow: `snakemake`, rule collect, "
               "collect_shard or merge)",
    "eigen": "`curvmem eigen` (workflow: `snakemake`, rule eigen)",
    "edit": "`curvmem edit` / `curvmem baseline bsn` (workflow: `snakemake`, rule "
            "edit_evaluate_lm, edit_evaluate_vit or bsn)",
    "model": "`curvmem train-lm` / `curvmem train-vit` (workflow: `snakemake`, rule train_lm or "
             "train_vit)",
}

VARIABLES = {
    "factors": {"A": ("a_i", "a_j"), "G": ("g_i", "g_j")},
    "eigen": {
        "A_eigenvalues": ("a_k",),
        "A_eigenvectors": ("a_i", "a_k"),
        "G_eigenvalues": ("g_k",),
        "G_eigenvectors": ("g_i", "g_k"),
    },
}

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


# Eigenvectors are computed in float64 and stored in float32: UᵀU - I is then ~1e-7 an entry,
# and a probe's error (below) ~1e-7 sqrt(d), under 1e-4 up to d = 10^5. A broken basis (a
# scaled, repeated or mixed column) shows at O(0.1).
ORTHONORMAL_TOLERANCE = 1e-3
ORTHONORMAL_PROBES = 8


def orthonormality_error(vecs) -> float:
    """max |(UᵀU - I) x| over a few seeded standard-normal probes x: O(d²) where forming UᵀU
    costs O(d³) (seconds for each 11008-wide module of a 7B). Every entry of UᵀU - I enters a
    probe's entry with a normal weight, so a defect of size e shows as about e or more."""
    u = np.asarray(vecs, dtype=np.float32)
    x = np.random.default_rng(0).standard_normal((u.shape[1], ORTHONORMAL_PROBES))
    x = x.astype(np.float32)
    return float(np.abs(u.T @ (u @ x) - x).max()) if u.size else 0.0


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
                error = orthonormality_error(vecs)
                if error > ORTHONORMAL_TOLERANCE:
                    raise StoreError(f"{where}: '{name}/{side}_eigenvectors' are not orthonormal "
                                     f"(|UᵀU x - x| up to {error:.2g} for unit-scale probes, "
                                     f"tolerance {ORTHONORMAL_TOLERANCE:g}); recompute it with "
                                     f"{PRODUCERS['eigen']}")


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
    needed = sum(np.asarray(a).nbytes for vars_ in groups.values() for a in vars_.values())
    check_space(path, needed + (1 << 16))  # HDF5 fails late and noisily on a full disk
    tree = {"/": xr.Dataset(attrs=root)}
    for name, vars_ in groups.items():
        tree[f"/{name}"] = xr.Dataset(
            {var: (dims, np.asarray(vars_[var])) for var, dims in VARIABLES[kind].items()})
    with atomic_artifact(path) as tmp:
        xr.DataTree.from_dict(tree).to_netcdf(tmp, engine="h5netcdf")


def read_layer(path, kind: str, modules=None) -> LayerFile:
    """Read and validate a layer file. With `modules`, require those groups to be present.

    `curvmem.model.read_layer(path, kind, model, modules)` also refuses a file computed on other
    weights (fingerprint) or whose shapes do not match the model's modules.
    """
    import xarray as xr

    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: no such {kind} file")
    verify_checksum(path, PRODUCERS.get(kind, "the command that wrote it"))
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
    named = re.fullmatch(r"layer_(\d+)\.nc", path.name)
    if named and int(named.group(1)) != layer:  # a file copied or renamed under another layer
        raise StoreError(f"{path}: holds layer {layer} (its 'layer' attribute), not the layer "
                         f"{named.group(1)} its name says; it cannot be used as layer "
                         f"{named.group(1)}")
    if modules is not None:
        absent = [m for m in modules if m not in groups]
        if absent:
            raise StoreError(f"{path}: no group for module(s) {absent}; has {list(groups)}")
    return LayerFile(kind, layer, groups, attrs)


def layer_path(directory, layer: int) -> Path:
    return Path(directory) / f"layer_{int(layer)}.nc"  # the workflow's plan.layout.LAYER_FILE too


# --------------------------------------------------------------------------- edit files


def edit_sidecar(path) -> Path:
    return Path(path).with_suffix(".json")


def write_edit(path, tensors: dict, meta: dict) -> None:
    """Edited weights (full parameter name -> tensor, model layout) + JSON sidecar, atomically.

    Weights first, then their checksum, then the JSON sidecar: a failed write (a full disk) leaves
    at most weights without a sidecar, which `read_edit` refuses; never an orphan sidecar that
    looks like an edit.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise StoreError(f"{path}: an edit file must end in .safetensors")
    if not tensors:
        raise StoreError(f"{path}: an edit with no tensors")
    if "model_fingerprint" not in meta:
        raise StoreError(f"{path}: an edit's meta needs the model_fingerprint it was made for")
    _check_finite(tensors, path, "cannot be written")
    edit_sidecar(path).unlink(missing_ok=True)
    with atomic_artifact(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
                  # one key: safetensors writes several in hash-map order (bytes would vary)
                  metadata={"curvmem": "edit"})
    # the sidecar names its weights: a sidecar beside another edit's weights is refused
    write_json(edit_sidecar(path), {**meta, WEIGHTS_DIGEST: recorded_checksum(path)})


# the sidecar's record of its weights: the sha256 of the .safetensors file
WEIGHTS_DIGEST = "weights_sha256"


def recorded_checksum(path) -> str:
    """The digest in `<path>.sha256` (verified against the bytes by `verify_checksum`)."""
    from curvmem.io import checksum_path

    words = checksum_path(path).read_text(errors="replace").split()
    return words[0] if words else ""


def _check_finite(tensors: dict, path, what: str) -> None:
    """An edit holding NaN or Inf scores as perfect forgetting (the model's loss is NaN): refuse."""
    import torch

    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise StoreError(f"{path}: weight '{name}' holds NaN or Inf ({bad} of {t.numel()} "
                             f"values); a broken edit {what}")


def read_edit(path) -> tuple[dict, dict]:
    """(tensors, meta) of an edit file, checksum verified; the JSON sidecar is required (it holds
    the model fingerprint that `edit.apply` checks)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: no such edit file")
    verify_checksum(path, PRODUCERS["edit"])
    side = edit_sidecar(path)
    if not side.is_file():
        raise StoreError(f"{path}: its sidecar {side.name} is missing (it records the model the "
                         f"edit was made for); delete the edit and rerun {PRODUCERS['edit']}")
    meta = read_json(side)
    if not isinstance(meta, dict) or "model_fingerprint" not in meta:
        raise StoreError(f"{side}: not an edit sidecar (no 'model_fingerprint')")
    recorded, actual = meta.get(WEIGHTS_DIGEST), recorded_checksum(path)
    if recorded is None:
        raise StoreError(f"{side}: made by an older curvmem (it does not record its weights' "
                         f"sha256, so it cannot be told from another edit's sidecar); delete the "
                         f"edit and rerun {PRODUCERS['edit']}")
    if recorded != actual:
        raise StoreError(f"{side}: belongs to other weights (it records sha256 {str(recorded)[:16]}"
                         f"..., {path.name} has {actual[:16]}...): a sidecar copied or renamed "
                         f"beside another edit; delete both and rerun {PRODUCERS['edit']}")
    try:
        tensors = load_file(str(path))
    except Exception as e:  # noqa: BLE001 (safetensors raises several types)
        raise StoreError(f"{path}: not a readable safetensors file: {e}") from None
    _check_finite(tensors, path, f"is not applied; delete it and rerun {PRODUCERS['edit']}")
    return tensors, meta


def layer_cost(path, attrs: dict | None = None) -> dict:
    """{"seconds", "peak_rss_mb"} that made a factor or eigen file: its cost file, else the
    cost_seconds / cost_peak_rss_mb root attributes (`attrs`, as read) of a file an older
    curvmem wrote, else zeros. Eigen files' costs include their factors'."""
    measured = read_cost(path)
    if measured is not None:
        return {"seconds": float(measured.get("seconds") or 0.0),
                "peak_rss_mb": float(measured.get("peak_rss_mb") or 0.0)}
    attrs = attrs or {}
    return {"seconds": float(attrs.get("cost_seconds", 0)),
            "peak_rss_mb": float(attrs.get("cost_peak_rss_mb", 0))}
