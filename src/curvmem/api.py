"""The Python API: factors, eigenbases, an edit and its evaluations of a model in memory.

The same functions `curvmem collect`, `eigen`, `edit` and `evaluate` call, for a model and data a
notebook already holds::

    import curvmem

    factors = curvmem.collect(model, token_ids, layers=[1], fisher="sampled")
    bases = curvmem.eigenbases(factors)
    edit = curvmem.make_edit(model, bases, rho=0.6)
    with edit:                                  # applied inside, original weights after
        print(curvmem.recitation(model, tokenizer, items)["strict"])
    edit.save("edit.safetensors")               # the file `curvmem edit` writes

`eigenbases` and `make_edit` are not called `eigen` and `edit`: `curvmem.eigen` and
`curvmem.edit` are the library's modules of those names. docs/api.md walks through it.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from curvmem import io, schema
from curvmem.edit.build import build_edit, parse_spec
from curvmem.edit.kfac import check_rho, kfac_edit_weight, pair_mask, random_orthonormal
from curvmem.eigen import eigh_descending
from curvmem.evaluate import lm as evaluate
from curvmem.factors import (
    ClassificationTask,
    Factors,
    LMTask,
    batched,
    write_layer_files,
)
from curvmem.factors import collect as collect_means
from curvmem.model import adapter_for, check_layer, mlp_modules, parse_int_list
from curvmem.model import model_id as resolved_model_id
from curvmem.model.identity import check_identity, identity_record
from curvmem.presets import KEEP_MODES
from curvmem.world.corpus import fingerprint_tensor

__all__ = ["CollectedFactors", "Edit", "Eigenbases", "coherence", "collect", "eigenbases",
           "make_edit", "perplexity", "recitation", "task_accuracy"]

# root attributes the schema sets itself, and the costs older versions kept among them
_OWN_ATTRS = ("kind", "schema_version", "layer", "curvmem_version", "cost_seconds",
              "cost_peak_rss_mb")


def _name_of(model) -> str:
    """The model's id as `curvmem collect --model` records it: its path, resolved, if it has one."""
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    return resolved_model_id(name)


# --------------------------------------------------------------------------- factors


@dataclass
class CollectedFactors:
    """K-FAC factors of some MLP modules: `A[(layer, module)]`, `G[(layer, module)]`.

    Attributes:
        A: Input covariances E[a aᵀ], (d_in, d_in) tensors keyed by (layer, module name).
        G: Output-gradient covariances E[g gᵀ], (d_out, d_out) tensors, same keys.
        attrs: The root attributes a factors file records (model fingerprint, fisher, seed, ...).
        seconds: Wall seconds the collection took.
    """

    A: dict
    G: dict
    attrs: dict
    seconds: float
    modules: list = field(repr=False, default_factory=list)

    @property
    def layers(self) -> list[int]:
        """The layers collected, ascending."""
        return sorted({layer for layer, _ in self.G})

    def save(self, directory) -> list[Path]:
        """Write DIR/layer_<L>.nc per layer, the files `curvmem collect --out DIR` writes.

        Args:
            directory: The output directory (made if missing); existing layer files are replaced.

        Returns:
            The paths written, one per layer.

        Raises:
            curvmem.io.OutputError: When a file is in the way of `directory`.
        """
        io.check_output(directory, "directory", is_dir=True)
        write_layer_files(directory, Factors(self.A, self.G), self.modules, self.attrs,
                          self.seconds)
        return [schema.layer_path(directory, layer) for layer in self.layers]


def _as_batches(batches, batch_size: int) -> list:
    """The batches as a list.

    A tensor [n, seq_len] (or an (images, labels) pair) is cut into `batch_size` rows, as
    `collect --batch-size` does; a list or tuple of batches is kept as it is.
    """
    if torch.is_tensor(batches) or (isinstance(batches, tuple) and len(batches) == 2
                                    and all(torch.is_tensor(t) for t in batches)
                                    and batches[0].ndim != batches[1].ndim):
        return batched(batches, batch_size)
    out = list(batches)
    if not out:
        raise ValueError("batches: no batches given")
    return out


def collect(model, batches, *, layers=None, modules=None, fisher: str = "sampled",
            seed: int = 0, batch_size: int = 8, dtype: torch.dtype = torch.float32,
            blocks_path: str | None = None, progress: bool = False) -> CollectedFactors:
    """Collect K-FAC factors A and G of a model's MLP modules, as `curvmem collect` does.

    Args:
        model: A causal LM (or a timm ViT); its weights are not changed.
        batches: Token ids, a LongTensor [n, seq_len] cut into `batch_size` rows, or a list of
            [b, seq_len] tensors used as given. For a ViT: (images, labels), or a list of them.
        layers: Block indices (e.g. [1, 2] or "1-2"); None: every block.
        modules: Linear modules inside a block (e.g. ["mlp.gate_proj"]); None: all MLP modules.
        fisher: "sampled" (targets drawn from the model: the true Fisher) or "empirical".
        seed: Seed of the sampled targets (per example, so independent of the batching).
        batch_size: Rows per batch when `batches` is one tensor.
        dtype: Accumulation and storage precision (torch.float32 or torch.float64).
        blocks_path: For an architecture curvmem does not know, the block list's attribute path
            (then `modules` is required).
        progress: Show a progress bar.

    Returns:
        The factors, with the attributes `curvmem collect` records.

    Raises:
        ValueError: For unknown layers or modules, an unknown fisher, empty batches or token ids
            outside the model's vocabulary.
    """
    t0 = time.perf_counter()
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    batches = _as_batches(batches, batch_size)
    if isinstance(modules, str):
        modules = [m.strip() for m in modules.split(",")]
    targets = mlp_modules(model, layers, modules, adapter=adapter_for(model, blocks_path, modules))
    vision = isinstance(batches[0], (tuple, list))
    if vision:
        images = torch.cat([b[0] for b in batches])
        labels = torch.cat([b[1] for b in batches])
        corpus_fp = fingerprint_tensor(torch.cat([images.reshape(images.shape[0], -1),
                                                  labels[:, None].float()], 1))
        task, seq_len = ClassificationTask(), 1
    else:
        if any(not torch.is_tensor(b) or b.ndim != 2 or b.dtype.is_floating_point
               or b.shape[1] < 2 for b in batches):
            raise ValueError("batches: token ids must be integer tensors [batch, seq_len] with "
                             "seq_len >= 2 (a position needs a next token)")
        if len({b.shape[1] for b in batches}) > 1:
            raise ValueError("batches: all sequences must have one length (a factors file "
                             "records one seq_len)")
        ids = torch.cat(list(batches)).long()
        vocab = model.get_input_embeddings().num_embeddings
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise ValueError(f"batches: token ids from {int(ids.min())} to {int(ids.max())}, but "
                             f"the model's vocabulary is 0..{vocab - 1}")
        corpus_fp, task, seq_len = fingerprint_tensor(ids), LMTask(), ids.shape[1]
    with _evaluating(model):  # no dropout in the Fisher (the CLI's model is in eval mode too)
        means = collect_means(model, batches, targets, task, fisher=fisher, seed=seed,
                              dtype=dtype, progress=progress)
    attrs = {"model_id": _name_of(model), **identity_record(model), "fisher": fisher,
             "n_tokens": means.n_tokens, "seq_len": seq_len,
             "corpus_fingerprint": corpus_fp, "seed": seed, "shard": "", "task": task.name,
             "data": "in memory", "corpus": "in memory", "dtype": str(dtype).removeprefix("torch."),
             "memorized_positions": -1, "memorized_sets": ""}
    return CollectedFactors(means.A, means.G, attrs, time.perf_counter() - t0, targets)


# --------------------------------------------------------------------------- eigenbases


@dataclass
class Eigenbases:
    """Eigenbases of K-FAC factors, per module: `bases[(layer, module)]["G_eigenvalues"]`.

    Each entry holds A_eigenvalues, A_eigenvectors, G_eigenvalues and G_eigenvectors (numpy,
    eigenvalues descending, eigenvectors as columns), the variables of an eigen file.

    Attributes:
        groups: {(layer, module name): {variable: ndarray}}.
        attrs: The root attributes an eigen file records (its factors', and eigh_dtype).
        seconds: Wall seconds of the factors and the eigendecomposition together.
        layer_attrs: Attributes of single layers where they differ from `attrs` (eigen files
            read from a directory: each layer's own).
    """

    groups: dict
    attrs: dict
    seconds: float = 0.0
    layer_attrs: dict = field(default_factory=dict, repr=False)

    def __getitem__(self, key) -> dict:
        """The variables of one module, keyed (layer, module name)."""
        return self.groups[key]

    @property
    def layers(self) -> list[int]:
        """The layers held, ascending."""
        return sorted({layer for layer, _ in self.groups})

    def modules(self, layer: int) -> list[str]:
        """The module names held for `layer`.

        Args:
            layer: A block index.

        Returns:
            Module names, in the order they were collected.
        """
        return [name for lay, name in self.groups if lay == layer]

    def layer_file(self, layer: int) -> schema.LayerFile:
        """One layer as the schema's `LayerFile`, what reading its eigen file gives.

        Args:
            layer: A block index the eigenbases hold.

        Returns:
            The layer's groups {module: {variable: ndarray}} and attributes.
        """
        return schema.LayerFile("eigen", layer, {n: self.groups[(layer, n)]
                                                 for n in self.modules(layer)},
                                dict(self.layer_attrs.get(layer, self.attrs)))

    def save(self, directory) -> list[Path]:
        """Write DIR/layer_<L>.nc per layer, the files `curvmem eigen` writes.

        Args:
            directory: The output directory (made if missing); existing layer files are replaced.

        Returns:
            The paths written, one per layer.

        Raises:
            curvmem.io.OutputError: When a file is in the way of `directory`.
        """
        io.check_output(directory, "directory", is_dir=True)
        paths, share = [], self.seconds / max(len(self.layers), 1)
        for layer in self.layers:
            path = schema.layer_path(directory, layer)
            lf = self.layer_file(layer)
            schema.write_layer(path, "eigen", layer, lf.groups, lf.attrs)
            io.write_cost(path, {"seconds": round(share, 3),
                                 "peak_rss_mb": round(io.peak_rss_mb(), 1)})
            paths.append(path)
        return paths

    @classmethod
    def load(cls, directory, layers=None) -> Eigenbases:
        """Read eigen files (from `curvmem eigen` or `save`), checksums verified.

        Args:
            directory: The directory of layer_<L>.nc eigen files.
            layers: The layers to read; None: every layer file in `directory`.

        Returns:
            The eigenbases of those layers.

        Raises:
            curvmem.io.StoreError: For a missing, corrupt or non-eigen file.
        """
        if layers is None:
            layers = sorted(int(p.stem.removeprefix("layer_"))
                            for p in Path(directory).glob("layer_*.nc")
                            if p.stem.removeprefix("layer_").isdecimal())
            if not layers:
                raise io.StoreError(f"{directory}: no layer_<L>.nc eigen files")
        groups, attrs, seconds = {}, {}, 0.0
        for layer in layers:
            path = schema.layer_path(directory, layer)
            lf = schema.read_layer(path, "eigen")
            groups.update({(layer, name): g for name, g in lf.groups.items()})
            attrs[layer] = {k: v for k, v in lf.attrs.items() if k not in _OWN_ATTRS}
            seconds += schema.layer_cost(path, lf.attrs)["seconds"]  # factors and eigh, as recorded
        return cls(groups, attrs[layers[0]], seconds, attrs)


def eigenbases(factors: CollectedFactors, *, dtype: torch.dtype = torch.float64,
               device=None) -> Eigenbases:
    """Eigendecompose every factor, as `curvmem eigen` does (A and G, descending).

    Args:
        factors: From `collect`.
        dtype: Precision of eigh (float64, as `curvmem eigen`'s default); stored as float32.
        device: Where eigh runs (e.g. "cuda"); None: the CPU.

    Returns:
        The eigenbases of every module of `factors`.

    Raises:
        ValueError: When a factor is clearly not positive semi-definite (a broken factor).
    """
    t0 = time.perf_counter()
    cache: dict = {}  # gate_proj and up_proj share A: decompose it once (as curvmem eigen)
    groups = {}
    for key in factors.G:
        groups[key] = {}
        for side, matrix in (("A", factors.A[key]), ("G", factors.G[key])):
            m = np.ascontiguousarray(matrix.detach().cpu().numpy())
            ck = (side, m.shape, hashlib.blake2b(m).hexdigest())
            if ck not in cache:
                vals, vecs = eigh_descending(m, dtype=dtype, device=device)
                cache[ck] = (vals.cpu().numpy().astype(np.float32),
                             vecs.cpu().numpy().astype(np.float32))
            groups[key][f"{side}_eigenvalues"], groups[key][f"{side}_eigenvectors"] = cache[ck]
    attrs = {**factors.attrs, "eigh_dtype": str(dtype).removeprefix("torch.")}
    return Eigenbases(groups, attrs, factors.seconds + time.perf_counter() - t0)


# --------------------------------------------------------------------------- the edit


class Edit:
    """Edited weights of one model: `apply()` puts them in, `restore()` the original ones back.

    Also a context manager: `with edit:` applies it inside the block and restores after.

    Attributes:
        model: The model the edit was made for (and is applied to).
        tensors: {full parameter name: edited weight}, in the model's layout and dtype.
        meta: What the edit file's JSON sidecar records (method, spec, per-module stats, ...).
        cost: Seconds and peak RSS of the edit, with the factors and eigenbases it builds on
            (`<file>.cost.json` beside a saved edit).
    """

    def __init__(self, model, tensors: dict, meta: dict, cost: dict | None = None):
        """Hold an edit of `model` (see `make_edit`)."""
        self.model, self.tensors, self.meta, self.cost = model, tensors, meta, cost or {}
        self._original: dict | None = None
        self._checked: dict | None = None  # the model's tensors as they were when last checked

    @property
    def applied(self) -> bool:
        """Whether the edited weights are in the model now."""
        return self._original is not None

    def apply(self) -> Edit:
        """Copy the edited weights into the model, keeping the originals (no-op if applied).

        Returns:
            This edit.

        Raises:
            curvmem.io.StoreError: When the model's weights are no longer those the edit was
                made for.
        """
        if self.applied:
            return self
        if not _unchanged(self._tensor_states(), self._checked):  # since the last check
            check_identity(self.meta, self.model, "the edit", "curvmem.make_edit",
                           what="made for", redo="make it again")
            self._checked = self._tensor_states()
        params = dict(self.model.named_parameters())
        self._original = {n: params[n].detach().clone() for n in self.tensors}
        with torch.no_grad():
            for name, t in self.tensors.items():
                params[name].copy_(t)
        return self

    def restore(self) -> Edit:
        """Put the original weights back, exactly (no-op if not applied).

        Returns:
            This edit.
        """
        if self._original is not None:
            params = dict(self.model.named_parameters())
            before = self._tensor_states()
            with torch.no_grad():
                for name, t in self._original.items():
                    params[name].copy_(t)
            # The weights are the checked ones again, bit for bit, if nothing but `apply` changed
            # them: then the next `apply` need not hash the whole model again.
            only_applied = _unchanged(before, self._checked, changed=set(self._original))
            self._checked = self._tensor_states() if only_applied else None
            self._original = None
        return self

    def _tensor_states(self) -> dict:
        """{name: (tensor, its storage, its in-place version)} of the model's state."""
        return {n: (t, t.data_ptr(), t._version)
                for n, t in self.model.state_dict(keep_vars=True).items()}

    def __enter__(self) -> Edit:
        """Apply the edit."""
        return self.apply()

    def __exit__(self, *exc) -> None:
        """Restore the original weights."""
        self.restore()

    def save(self, path) -> Path:
        """Write the edit file `curvmem edit --out PATH` writes (weights, checksum, sidecar).

        `curvmem evaluate --edit PATH` and `curvmem.edit.apply(model, PATH)` load it.

        Args:
            path: FILE.safetensors; its JSON sidecar goes beside it.

        Returns:
            The path written.

        Raises:
            curvmem.io.StoreError: When `path` does not end in .safetensors.
            curvmem.io.OutputError: When a directory is in the way of `path`.
        """
        io.check_output(path, "path")
        schema.write_edit(path, self.tensors, self.meta)
        if self.cost:
            io.write_cost(path, self.cost)
        return Path(path)


def _unchanged(now: dict, then: dict | None, changed=frozenset()) -> bool:
    """Whether the model's tensors are those recorded in `then`.

    The same objects, with the same storage and in-place version, except for the values of the
    `changed` ones.
    """
    if then is None or now.keys() != then.keys():
        return False
    return all(now[n][0] is then[n][0] and (n in changed or now[n][1:] == then[n][1:])
               for n in now)


def _kfac_weights(model, spec: dict, bases: Eigenbases, keep: str, seed: int):
    """`build_edit`'s K-FAC weights and stats from eigenbases in memory (it reads eigen files)."""
    targets = [(m, check_rho(mods[m.name])) for layer, mods in sorted(spec.items())
               for m in mlp_modules(model, [layer], list(mods))]
    if keep not in KEEP_MODES:
        raise ValueError(f"keep must be one of {', '.join(KEEP_MODES)}, got '{keep}'")
    for layer, mods in spec.items():
        absent = [n for n in mods if (layer, n) not in bases.groups]
        if absent:
            raise ValueError(f"the eigenbases have no layer {layer} module(s) {absent}; they "
                             f"hold layers {bases.layers}")
        check_layer(bases.layer_file(layer), model, f"eigenbases of layer {layer}")
    tensors, stats = {}, {}
    for m, rho in targets:
        g = bases.groups[(m.layer, m.name)]
        mask = pair_mask(g["G_eigenvalues"], g["A_eigenvalues"], rho, keep, seed)
        UG, UA = g["G_eigenvectors"], g["A_eigenvectors"]
        if keep == "random-basis":  # the same spectra and mask in a basis that knows nothing
            UG = random_orthonormal(len(g["G_eigenvalues"]), seed)
            UA = random_orthonormal(len(g["A_eigenvalues"]), seed + 1)
        W_new, st = kfac_edit_weight(m.weight().detach(), UG, g["G_eigenvalues"], UA,
                                     g["A_eigenvalues"], mask)
        tensors[m.param_name] = m.to_stored_layout(W_new.to(m.module.weight.dtype))
        stats[m.param_name] = {**st, "rho": rho, "keep": keep}
    first = bases.layer_file(next(iter(spec))).attrs  # as build_edit: the spec's first layer
    factors = {k: first.get(k) for k in ("fisher", "n_tokens", "seq_len", "seed",
                                         "corpus_fingerprint", "shard")}
    return tensors, {"method": "kfac" if keep == "top" else f"kfac-{keep}",
                     "spec": {str(k): v for k, v in spec.items()}, "keep": keep, "seed": seed,
                     "modules": stats, **identity_record(model), "factors": factors}


def make_edit(model, bases=None, *, rho: float | None = None, layers=None, modules=None,
              method: str = "kfac", keep: str = "top", svd_drop: float | None = None,
              spec=None, seed: int = 0) -> Edit:
    """An edit of `model`'s MLP weights, as `curvmem edit` makes it; the model is not changed.

    K-FAC keeps, per module, the top-curvature pairs (λᵢμⱼ) holding a fraction `rho` of the
    mass: W' = U_G (C ⊙ M) U_Aᵀ with C = U_Gᵀ W U_A. SVD drops the smallest `svd_drop` fraction
    of singular values.

    Args:
        model: The model the eigenbases were computed on.
        bases: `Eigenbases` (from `eigenbases` or `Eigenbases.load`) or a directory of eigen
            files; needed for K-FAC.
        rho: Mass fraction kept, in (0, 1] (K-FAC).
        layers: Layers to edit; None: every layer of `bases`.
        modules: Modules to edit in each layer; None: those `bases` holds.
        method: "kfac" or "svd".
        keep: "top" (the edit) or a control of curvmem.presets.KEEP_MODES (docs/baselines.md).
        svd_drop: Fraction of singular values to drop, in [0, 1) (SVD).
        spec: {layer: {module: value}}, a rho (or drop) per layer and module, instead of
            `layers`, `modules` and one value.
        seed: Seed of the random controls.

    Returns:
        The edit, not yet applied.

    Raises:
        ValueError: For a bad value, layer, module or method, or eigenbases of other weights.
    """
    t0 = time.perf_counter()
    if method not in ("kfac", "svd"):
        raise ValueError(f"method must be 'kfac' or 'svd', got '{method}'")
    if method == "kfac" and svd_drop is not None:
        raise ValueError("svd_drop is for method='svd'")
    if method == "svd" and (keep != "top" or rho is not None):
        raise ValueError("rho and keep are for method='kfac'")
    value = rho if method == "kfac" else svd_drop
    if spec is not None:
        if layers is not None or modules is not None or value is not None:
            raise ValueError("give spec, or layers / modules and rho (svd_drop); not both")
        spec = parse_spec(spec)
    elif value is None:
        raise ValueError("give rho (K-FAC) or svd_drop (SVD)")
    if method == "svd" and bases is not None:
        raise ValueError("bases is for method='kfac' (an SVD edit needs no eigenbases)")
    if method == "kfac":
        if bases is None:
            raise ValueError("a K-FAC edit needs eigenbases (`eigenbases`, `Eigenbases.load` or "
                             "a directory of eigen files)")
        if not isinstance(bases, Eigenbases):
            wanted = sorted(spec) if spec is not None else None if layers is None \
                else _layer_list(layers)
            bases = Eigenbases.load(bases, wanted)
    if spec is None:
        spec = parse_spec(_uniform_spec(model, bases, layers, modules, value))
    if method == "svd":
        tensors, meta = build_edit(model, spec, method="svd")
    else:
        tensors, meta = _kfac_weights(model, spec, bases, keep, seed)
    meta["model"] = _name_of(model)
    meta["load_dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    seconds = time.perf_counter() - t0
    upstream = bases.seconds if isinstance(bases, Eigenbases) else 0.0
    rss = round(io.peak_rss_mb(), 1)
    return Edit(model, tensors, meta, {
        "seconds": round(upstream + seconds, 3), "peak_rss_mb": rss,
        "edit_seconds": round(seconds, 3), "upstream_seconds": round(upstream, 3),
        "upstream_peak_rss_mb": rss})


def _uniform_spec(model, bases, layers, modules, value) -> dict:
    """One value for each module of each layer: a {layer: {module: value}} spec.

    The given layers (else the eigenbases'), the given modules (else those the eigenbases hold for
    the layer, else every MLP module of it).
    """
    if layers is None and bases is None:
        raise ValueError("give layers (or spec) for an SVD edit")
    names = modules.split(",") if isinstance(modules, str) else modules
    names = None if names is None else _once([m.strip() for m in names], "modules")
    spec = {}
    for layer in bases.layers if layers is None else _layer_list(layers):
        held = bases.modules(layer) if bases is not None else [
            m.name for m in mlp_modules(model, [layer])]
        spec[layer] = {m: value for m in (names or held)}
    return spec


def _layer_list(layers) -> list[int]:
    try:
        return _once(parse_int_list(layers), "layers")
    except (TypeError, ValueError) as e:
        if "given twice" in str(e):
            raise
        raise ValueError(f"layers must be like [5, 6], '5,6' or '3-5', got {layers!r}") from None


def _once(items: list, what: str) -> list:
    """`items`, refused if one is given twice (it would be edited once, silently)."""
    twice = sorted({str(x) for x in items if items.count(x) > 1})
    if twice:
        raise ValueError(f"{what}: {', '.join(twice)} given twice")
    return items


# --------------------------------------------------------------------------- evaluations


@contextlib.contextmanager
def _evaluating(model):
    """Eval mode inside (no dropout); the caller's mode after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _rows(items, required=()) -> list[dict]:
    return io.read_jsonl(items, required) if isinstance(items, (str, Path)) else list(items)


def _texts(texts) -> list[str]:
    return evaluate.read_texts(texts) if isinstance(texts, (str, Path)) else list(texts)


def recitation(model, tokenizer, items, *, prefix_len: int = 64, suffix_len: int = 48,
               batch_size: int = 32) -> dict:
    """How much of each item's suffix the model recites greedily from its prefix.

    `curvmem evaluate memorization`: d is the token-level Levenshtein distance of the greedy
    continuation to the true suffix S; strict: d == 0, loose: 1 - d/|S| >= 0.75, avg_distance:
    the mean of d/|S|.

    Args:
        model: A causal LM (put in eval mode for the call).
        tokenizer: Its tokenizer.
        items: Dicts with prefix_ids/suffix_ids, prefix/suffix texts, or text (cut into
            prefix_len + suffix_len tokens); or the path of a JSONL file of them.
        prefix_len: Prefix tokens of a `text` item.
        suffix_len: Suffix tokens of a `text` item.
        batch_size: Items per generation batch.

    Returns:
        {"strict", "loose", "avg_distance", "n", "by_kind", "examples", ...}, the numbers of
        `curvmem evaluate memorization`'s JSON.

    Raises:
        ValueError: For an item in none of the formats, or too short.
    """
    rows = _rows(items)
    with _evaluating(model):
        return evaluate.evaluate_memorization(model, tokenizer, rows, prefix_len, suffix_len,
                                              batch_size, where="items")


def perplexity(model, tokenizer, texts, *, block_len: int = 112, batch_size: int = 8,
               max_tokens: int | None = None) -> dict:
    """Perplexity on held-out text, EOS-joined and cut into blocks (`evaluate perplexity`).

    Args:
        model: A causal LM (put in eval mode for the call).
        tokenizer: Its tokenizer.
        texts: Strings, or the path of a JSONL file with a "text" field.
        block_len: Tokens per block.
        batch_size: Blocks per batch.
        max_tokens: Cap on the evaluated tokens; None: all.

    Returns:
        {"perplexity", "perplexity_batch_mean", "mean_loss", "n_tokens", ...}.

    Raises:
        ValueError: When the texts hold fewer tokens than one block.
    """
    with _evaluating(model):
        return evaluate.evaluate_perplexity(model, tokenizer, _texts(texts), block_len,
                                            batch_size, max_tokens, where="texts")


def task_accuracy(model, tokenizer, items, *, batch_size: int = 32) -> dict:
    """Greedy exact-match accuracy of answers, per category (`evaluate tasks`).

    Args:
        model: A causal LM (put in eval mode for the call).
        tokenizer: Its tokenizer.
        items: Dicts with "category", "prompt" and "answer", or the path of a JSONL file.
        batch_size: Items per generation batch.

    Returns:
        {"accuracy": {category: fraction}, "overall", "n", "items", ...}.

    Raises:
        ValueError: For an item without those fields or with an empty prompt.
    """
    rows = _rows(items, ("category", "prompt", "answer"))
    missing = [i for i, r in enumerate(rows, 1) if not {"category", "prompt", "answer"} <= set(r)]
    if missing:
        raise ValueError(f"items: item {missing[0]} needs 'category', 'prompt' and 'answer'")
    with _evaluating(model):
        return evaluate.evaluate_tasks(model, tokenizer, rows, batch_size)


def coherence(model, tokenizer, texts, edit: Edit, *, k: int = 10, block_len: int = 112,
              batch_size: int = 8, max_tokens: int = 8192) -> dict:
    """nDCG@k of the edited model's top-k next tokens, graded by the unedited model's ranking.

    `curvmem evaluate coherence`. The model is left as it was (edited or not).

    Args:
        model: The model `edit` was made for.
        tokenizer: Its tokenizer.
        texts: Strings, or the path of a JSONL file with a "text" field.
        edit: From `make_edit`.
        k: Top tokens compared per position.
        block_len: Tokens per block.
        batch_size: Blocks per batch.
        max_tokens: Cap on the evaluated positions.

    Returns:
        {"ndcg10" (or f"ndcg{k}"), "top1_agreement", "n_positions", ...}.

    Raises:
        ValueError: When `edit` is of another model, or the texts hold less than one block.
    """
    if edit.model is not model:
        raise ValueError("coherence: the edit was made for another model object")
    was_applied = edit.applied
    edit.restore()
    try:
        with _evaluating(model):
            result = evaluate.evaluate_coherence(model, tokenizer, _texts(texts),
                                                 lambda m: edit.apply().meta, k=k,
                                                 block_len=block_len, batch_size=batch_size,
                                                 max_tokens=max_tokens, where="texts")
    finally:
        if not was_applied:
            edit.restore()
    result.pop("edit_meta", None)
    return result
