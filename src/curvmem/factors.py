"""K-FAC factor collection: A = E[a aᵀ] over a module's inputs, G = E[g gᵀ] over its output gradients.

For each requested module, per position p that has a target:
    a_p = the module's input,   g_p = d(sum over positions of cross-entropy) / d(module output)_p
    A = Σ_p a_p a_pᵀ / n,       G = Σ_p g_p g_pᵀ / n
The loss is sum-reduced, so G does not depend on the batch size (the paper's code uses a batch
mean, which only rescales G). With fisher="sampled" the targets are drawn from the model's own
predictive distribution (the true Fisher, the paper's setting); "empirical" uses gold targets.

Cost. All weights are frozen, and the input of the lowest requested block is made a leaf that
requires grad, so autograd builds the graph only from there up and `autograd.grad` computes
activation gradients at the hooked outputs, never weight gradients and nothing below that block.
A is accumulated during the forward pass; gate_proj and up_proj, which read the same tensor,
share one A. For a plain LM head the gradient at the head's input is formed directly from the
softmax the sampler already needs (`LMTask.backward_roots`), and covariances are accumulated on
their block upper triangle only (`add_gram_`). Nothing is held beyond the current batch.

Effective sample size (ViT collections, `position_mass`). Each position's share of trace(G) is
w = ‖g_p‖² (of trace(A): ‖a_p‖²; of the trace of the exact weight-gradient Fisher: ‖a_p‖²‖g_p‖²).
ESS = (Σ w)² / Σ w² counts how many positions carry that mass: n when all carry the same, 1
when one carries all of it. Only Σ w and Σ w² are kept, so shards merge exactly.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from curvmem import schema
from curvmem.io import atomic_output, peak_rss_mb, write_cost
from curvmem.model import vit
from curvmem.model.adapters import (
    MLPModule,
    adapter_for,
    default_device,
    mlp_modules,
    model_device,
    model_id,
    plain_lm_head,
)
from curvmem.model.identity import model_identity
from curvmem.model.load import load_model, load_tokenizer
from curvmem.world import corpus, images


def _generator(device, seed: int, index: int) -> torch.Generator:
    # The CPU generator keeps only 32 bits of its seed: hash (seed, index) into them.
    mixed = int.from_bytes(hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=4).digest(), "little")
    return torch.Generator(device=device).manual_seed(mixed)


def sample_targets(logits: torch.Tensor, seed: int, first_index: int) -> torch.Tensor:
    """Targets drawn from softmax(logits), with one seeded generator per example.

    logits [B, ..., V] -> targets [B, ...]. Seeding by the example's global index (not by batch)
    makes the draws independent of batch size and of how the stream is sharded.
    """
    return sample_from_probs(torch.softmax(logits.detach().float(), dim=-1), seed, first_index)


def sample_from_probs(probs: torch.Tensor, seed: int, first_index: int) -> torch.Tensor:
    """`sample_targets` from probabilities [B, ..., V] (left unchanged).

    Inverse-CDF sampling needs one uniform number per position (multinomial would draw one per
    class).
    """
    flat = probs.reshape(probs.shape[0], -1, probs.shape[-1])
    u = torch.stack([torch.rand(flat.shape[1], generator=_generator("cpu", seed, first_index + b))
                     for b in range(flat.shape[0])]).to(flat.device)
    cdf = flat.cumsum(dim=-1)
    draw = torch.searchsorted(cdf, (u.to(cdf.dtype) * cdf[..., -1]).unsqueeze(-1), right=True)
    return draw.squeeze(-1).clamp_(max=probs.shape[-1] - 1).view(probs.shape[:-1])


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """The loss in float32 under bf16 autocast, but a float64 model keeps float64."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class LMTask:
    """Next-token prediction. Every position of a sequence but the last has a target."""

    name = "lm"

    def loss(self, model, batch, fisher: str, seed: int, first_index: int) -> torch.Tensor:
        logits = _at_least_float32(model(input_ids=batch).logits[:, :-1])
        if fisher == "empirical":
            targets = batch[:, 1:]
        else:
            targets = sample_targets(logits.detach(), seed, first_index)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               reduction="sum")

    def backward_roots(self, model, batch, fisher: str, seed: int, first_index: int):
        """(tensor, its gradient) to backpropagate from: the loss, or the LM head's input.

        For a plain head (logits = z = h Wᵀ) the gradient of the summed cross-entropy at h is
        (softmax(z) - onehot(y)) W. Forming it directly reuses the softmax the sampler needs and
        skips the log-softmax, its backward and the last position's logits: less time, and a
        third of the vocabulary-sized memory.
        """
        parts = plain_lm_head(model)
        if parts is None:
            return self.loss(model, batch, fisher, seed, first_index), None
        base, head = parts
        hidden = base(input_ids=batch).last_hidden_state[:, :-1]
        with torch.no_grad():
            probs = torch.softmax(_at_least_float32(head(hidden)), dim=-1)
            if fisher == "empirical":
                targets = batch[:, 1:]
            else:
                targets = sample_from_probs(probs, seed, first_index)
            probs.scatter_add_(-1, targets.unsqueeze(-1),
                               torch.full(targets.shape + (1,), -1.0, dtype=probs.dtype,
                                          device=probs.device))
            grad_hidden = probs.to(head.weight.dtype) @ head.weight
        return hidden, grad_hidden.to(hidden.dtype)

    def positions(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :-1].reshape(-1, x.shape[-1])

    def batch_size(self, batch) -> int:
        return batch.shape[0]

    def n_positions(self, batch) -> int:
        return batch.shape[0] * (batch.shape[1] - 1)

    def to(self, batch, device):
        return batch.to(device)


class ClassificationTask:
    """Image classification (ViT): the loss on the logits, factors at the CLS position only."""

    name = "cls"

    def __init__(self, position: int = 0):
        self.position = position

    def loss(self, model, batch, fisher: str, seed: int, first_index: int) -> torch.Tensor:
        images, labels = batch
        logits = _at_least_float32(model(images))
        if fisher == "empirical":
            targets = labels
        else:
            targets = sample_targets(logits.detach(), seed, first_index)
        return F.cross_entropy(logits, targets, reduction="sum")

    def backward_roots(self, model, batch, fisher: str, seed: int, first_index: int):
        return self.loss(model, batch, fisher, seed, first_index), None

    def positions(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.position]

    def batch_size(self, batch) -> int:
        return batch[0].shape[0]

    def n_positions(self, batch) -> int:
        return batch[0].shape[0]

    def to(self, batch, device):
        return tuple(t.to(device) for t in batch)


# Covariances are symmetric: accumulate only the upper triangle of blocks of this many rows.
# At d = 1024 that is 10 of 16 blocks (62 % of the FLOPs of a full xᵀx); toward 50 % as d grows.
GRAM_BLOCK = 256


def add_gram_(acc: torch.Tensor, x: torch.Tensor, block: int = GRAM_BLOCK) -> None:
    """acc += xᵀx on the blocks on and above the diagonal; `symmetrized` completes it."""
    n = x.shape[1]
    for s in range(0, n, block):
        e = min(s + block, n)
        acc[s:e, s:].addmm_(x[:, s:e].T, x[:, s:])


def symmetrized(acc: torch.Tensor) -> torch.Tensor:
    """The full symmetric matrix from what `add_gram_` filled (exactly symmetric)."""
    return torch.triu(acc) + torch.triu(acc, 1).T


@dataclass
class Factors:
    """Running sums (block upper triangles, see `add_gram_`) of A and G, keyed by (layer, module
    name); `means` returns the full matrices divided by the number of positions."""

    A: dict = field(default_factory=dict)
    G: dict = field(default_factory=dict)
    n_tokens: int = 0
    batches_done: int = 0
    # (side, layer, module name) -> float64 [Σ w, Σ w²] of the positions' trace shares (side A,
    # G, or W: the weight gradient); empty unless `collect(position_mass=True)`
    mass: dict = field(default_factory=dict)

    def means(self) -> Factors:
        if self.n_tokens == 0:
            raise ValueError("no positions were collected")
        return Factors({k: symmetrized(v) / self.n_tokens for k, v in self.A.items()},
                       {k: symmetrized(v) / self.n_tokens for k, v in self.G.items()},
                       self.n_tokens,
                       self.batches_done,
                       dict(self.mass))


MASS_SIDES = ("A", "G", "W")


def effective_sample_size(w_sum: float, w_sq_sum: float) -> float:
    """(Σ w)² / Σ w²: how many positions carry the mass Σ w (0 when there is none)."""
    return float(w_sum) ** 2 / float(w_sq_sum) if w_sq_sum > 0 else 0.0


def mass_summary(mass: dict, layer: int, names) -> dict:
    """{module: {side: {ess, w_sum, w_sq_sum}}} of one layer from `Factors.mass` (the
    `effective_sample_size` attribute of a factor file)."""
    out = {}
    for name in names:
        out[name] = {}
        for side in MASS_SIDES:
            w_sum, w_sq = (float(x) for x in mass[(side, layer, name)])
            out[name][side] = {"ess": effective_sample_size(w_sum, w_sq), "w_sum": w_sum,
                               "w_sq_sum": w_sq}
    return out


def _add_mass_(mass: dict, key: tuple, w: torch.Tensor) -> None:
    w = w.double()
    add = torch.stack([w.sum(), w.pow(2).sum()]).cpu()
    mass[key] = mass[key] + add if key in mass else add


def _replace_hidden_input(args, kwargs):
    """Make the block's hidden-state input a fresh leaf that requires grad."""
    if args and torch.is_tensor(args[0]):
        return (args[0].detach().requires_grad_(True),) + tuple(args[1:]), kwargs
    key = "hidden_states" if "hidden_states" in kwargs else "x"
    kwargs = dict(kwargs)
    kwargs[key] = kwargs[key].detach().requires_grad_(True)
    return args, kwargs


# --------------------------------------------------------------------------- checkpoints


# A checkpoint carries the sha256 of its metadata and tensors in its own metadata ("sha256"):
# resuming from a flipped byte would write a wrong factor file with a fresh, valid checksum, so a
# checkpoint that does not match it (or cannot be read: truncated) is discarded with one line.


def _checkpoint_digest(tensors: dict, meta: dict) -> str:
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _save_checkpoint(path: Path, sums: Factors, key: str) -> None:
    from safetensors.torch import save_file

    tensors = {f"A|{layer}|{name}": t for (layer, name), t in sums.A.items()}
    tensors.update({f"G|{layer}|{name}": t for (layer, name), t in sums.G.items()})
    tensors.update({f"mass_{side}|{layer}|{name}": t
                    for (side, layer, name), t in sums.mass.items()})
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {"key": key, "n_tokens": str(sums.n_tokens), "batches_done": str(sums.batches_done)}
    meta["sha256"] = _checkpoint_digest(tensors, meta)
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def _discard_checkpoint(path: Path, reason: str) -> None:
    tqdm.write(f"curvmem: note: {path}: {reason}; discarded, collecting from the start",
               file=sys.stderr)
    path.unlink(missing_ok=True)


def _load_checkpoint(path: Path, key: str, device, n_batches: int | None = None) \
        -> Factors | None:
    """The running sums saved at `path` by a run with the same `key`; None when there is none,
    it is another run's, or it is corrupt or truncated (then it is removed, with one line)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            if meta.get("key") != key:
                return None  # a checkpoint of another run: ignore it, it will be overwritten
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except Exception as e:  # noqa: BLE001 (safetensors raises several types for a bad file)
        _discard_checkpoint(path, f"unreadable, truncated or corrupt ({type(e).__name__})")
        return None
    recorded = meta.pop("sha256", None)
    if recorded != _checkpoint_digest(tensors, meta):
        _discard_checkpoint(path, "corrupt (its sha256 differs from its contents)"
                            if recorded else "has no checksum (an older curvmem's)")
        return None
    try:
        sums = Factors(n_tokens=int(meta["n_tokens"]), batches_done=int(meta["batches_done"]))
        for name, t in tensors.items():
            kind, layer, module = name.split("|")
            if kind.startswith("mass_"):
                sums.mass[(kind.removeprefix("mass_"), int(layer), module)] = t
            else:
                getattr(sums, kind)[(int(layer), module)] = t.to(device)
    except (KeyError, ValueError, AttributeError, TypeError) as e:
        _discard_checkpoint(path, f"not a collection checkpoint ({type(e).__name__}: {e})")
        return None
    if n_batches is not None and not 0 < sums.batches_done < n_batches:
        _discard_checkpoint(path, f"holds {sums.batches_done} batches of {n_batches}")
        return None
    return sums


def run_key(**settings) -> str:
    """A fingerprint of everything that determines a collection run (for checkpoint reuse)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------- the collector


def collect(model, batches, modules: list[MLPModule], task, *, fisher: str = "sampled",
            seed: int = 0, dtype: torch.dtype = torch.float32, first_index: int = 0,
            progress: bool = False, autocast: bool | None = None, checkpoint=None,
            checkpoint_every: int = 0, checkpoint_key: str = "",
            position_mass: bool = False) -> Factors:
    """Accumulate A and G over `batches` (a sequence) for `modules`; returns the means.

    checkpoint / checkpoint_every: save the running sums every N batches to `checkpoint`
    (safetensors) and, when a checkpoint with the same `checkpoint_key` exists, resume after the
    batches it already holds. The result equals an uninterrupted run.
    position_mass: also keep Σ w and Σ w² of each position's trace share (`Factors.mass`, see
    the module docstring: the effective sample size).
    """
    if fisher not in ("sampled", "empirical"):
        raise ValueError(f"--fisher must be 'sampled' or 'empirical', got '{fisher}'")
    if not modules:
        raise ValueError("no modules to collect")
    device = model_device(model)
    if autocast is None:
        autocast = device.type == "cuda"
    blocks = adapter_for(model).blocks(model)
    lowest = min(m.layer for m in modules)

    sums = None
    if checkpoint is not None:
        sums = _load_checkpoint(Path(checkpoint), checkpoint_key, device, len(batches))
        if sums is not None:
            tqdm.write(f"resuming from {checkpoint}: {sums.batches_done} batches, "
                       f"{sums.n_tokens} positions already collected", file=sys.stderr)
        if sums is not None and position_mass and not sums.mass:  # it cannot give the ESS
            _discard_checkpoint(Path(checkpoint), "holds no position masses")
            sums = None
    if sums is None:
        sums = Factors()
        for m in modules:
            if m.input_of == m.name:
                sums.A[(m.layer, m.name)] = torch.zeros(m.d_in, m.d_in, dtype=dtype, device=device)
            sums.G[(m.layer, m.name)] = torch.zeros(m.d_out, m.d_out, dtype=dtype, device=device)
    for m in modules:  # a module whose input is shared needs its source collected too
        if (m.layer, m.input_of) not in sums.A:
            sums.A[(m.layer, m.input_of)] = torch.zeros(m.d_in, m.d_in, dtype=dtype,
                                                        device=device)

    outputs: dict = {}
    input_norms: dict = {}  # this batch's ‖a_p‖² per input source (position_mass only)
    source_of = {(m.layer, m.name): (m.layer, m.input_of) for m in modules}

    def input_hook(key):
        def hook(module, args):
            x = task.positions(args[0].detach()).to(dtype)
            add_gram_(sums.A[key], x)
            if position_mass:
                input_norms[key] = x.double().pow(2).sum(-1)
        return hook

    def output_hook(key):
        def hook(module, args, out):
            outputs[key] = out
        return hook

    handles = [blocks[lowest].register_forward_pre_hook(
        lambda mod, args, kwargs: _replace_hidden_input(args, kwargs), with_kwargs=True)]
    for m in modules:
        handles.append(m.module.register_forward_hook(output_hook((m.layer, m.name))))
    for layer, name in {(m.layer, m.input_of) for m in modules}:
        source = blocks[layer].get_submodule(name)
        handles.append(source.register_forward_pre_hook(input_hook((layer, name))))
    requires_grad = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)

    total = sum(task.n_positions(b) for b in batches)
    bar = tqdm(total=total, unit="tok", unit_scale=True, disable=not progress,
               desc="collect", dynamic_ncols=True)
    bar.update(sum(task.n_positions(b) for b in batches[: sums.batches_done]))
    index = first_index + sum(task.batch_size(b) for b in batches[: sums.batches_done])
    try:
        for i in range(sums.batches_done, len(batches)):
            batch = task.to(batches[i], device)
            outputs.clear()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                root, grad_root = task.backward_roots(model, batch, fisher, seed, index)
            keys = list(outputs)
            grads = torch.autograd.grad(root, [outputs[k] for k in keys], grad_outputs=grad_root)
            for k, g in zip(keys, grads):
                rows = task.positions(g).to(dtype)
                add_gram_(sums.G[k], rows)
                if position_mass:
                    g_norms, a_norms = rows.double().pow(2).sum(-1), input_norms[source_of[k]]
                    _add_mass_(sums.mass, ("A", *k), a_norms)
                    _add_mass_(sums.mass, ("G", *k), g_norms)
                    _add_mass_(sums.mass, ("W", *k), a_norms * g_norms)
            outputs.clear()
            input_norms.clear()
            sums.n_tokens += task.n_positions(batch)
            sums.batches_done = i + 1
            index += task.batch_size(batch)
            bar.update(task.n_positions(batch))
            if checkpoint is not None and checkpoint_every and sums.batches_done % checkpoint_every == 0 \
                    and sums.batches_done < len(batches):
                _save_checkpoint(Path(checkpoint), sums, checkpoint_key)
    finally:
        bar.close()
        for h in handles:
            h.remove()
        for p, flag in zip(model.parameters(), requires_grad):
            p.requires_grad_(flag)
    means = sums.means()
    for m in modules:  # shared inputs: the same A under both names
        means.A[(m.layer, m.name)] = means.A[(m.layer, m.input_of)]
    wanted = {(m.layer, m.name) for m in modules}
    means.A = {k: v for k, v in means.A.items() if k in wanted}
    return means


def batched(items, batch_size: int) -> list:
    """Split a tensor (or a tuple of tensors sharing dim 0) into a list of batches (views)."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    n = items[0].shape[0] if isinstance(items, tuple) else items.shape[0]
    out = []
    for s in range(0, n, batch_size):
        out.append(tuple(t[s:s + batch_size] for t in items) if isinstance(items, tuple)
                   else items[s:s + batch_size])
    return out


# --------------------------------------------------------------------------- factor files


def collect_layer_files(model_path, data, layers: list[int], out, *, tokens: int, modules=None,
                        blocks_path=None, seq_len: int = 512, batch_size: int = 8,
                        fisher: str = "sampled", seed: int = 0, shard: str | None = None,
                        dtype: str = "float32", checkpoint_every: int = 0, device=None,
                        trust_remote_code: bool = False,
                        memorized=None, image_set: str = "train",
                        augment_seed: int = 0) -> tuple[int, list[int]]:
    """`curvmem collect`: load the model and data, collect, write OUT/layer_<L>.nc per layer.

    A ViT directory (`train-vit`) reads `data` as its vision dataset file, uses the
    classification loss and the CLS position only, and `tokens` counts images; `image_set` picks
    them (IMAGE_SETS: all training images with their noisy labels, the paper's; the clean ones
    only; the held-out split), optionally with augmented copies (`SET+augK[sS]`,
    `vit.fisher_image_set`: the first `tokens` images of SET and K copies of them shifted by up to
    S pixels, seeded by `augment_seed`). A ViT's files also record the Fisher's effective sample
    size (`effective_sample_size`: per module, how many images carry trace(A), trace(G) and the
    weight-gradient trace; `Factors.mass`). With
    `checkpoint_every`, running sums are saved in OUT/.checkpoint-<key>.safetensors, resumed when
    rerun with the same settings and deleted once the layer files are written. `memorized`
    (JSONL files of memorized items, LM only) makes each file record how many collected positions
    are memorized content (`memorized_positions`; -1: not counted). Returns (positions, layers).
    """
    t0 = time.perf_counter()
    if tokens < 1:
        raise ValueError(f"--tokens must be positive, got {tokens}")
    device = default_device(device)
    is_vit = vit.is_vision_model(model_path)
    if memorized and is_vit:
        raise ValueError("--memorized counts memorized text in an LM corpus; not for a ViT")
    model = load_model(model_path, dtype=torch.bfloat16 if device.startswith("cuda") else None,
                       trust_remote_code=trust_remote_code, device=device)
    adapter = adapter_for(model, blocks_path, modules)
    modules = mlp_modules(model, layers, modules, adapter=adapter)
    augment = {}
    if is_vit:
        try:
            base_set, copies, shift = vit.fisher_image_set(image_set, images.IMAGE_SETS)
        except ValueError as e:
            raise ValueError(f"--images: {e}") from None
        imgs, labels = images.load_images(data, split=base_set)
        if imgs.shape[0] == 0:
            raise ValueError(f"{data}: no {base_set} images")
        _require_images(data, tokens, imgs.shape[0], base_set)
        imgs, labels = vit.augmented_copies(imgs[:tokens], labels[:tokens], copies, shift,
                                            augment_seed)
        if copies:
            augment = {"augment": {"copies": copies, "shift": shift, "seed": augment_seed}}
        full = torch.cat([imgs.reshape(imgs.shape[0], -1), labels[:, None].float()], 1)
        start, stop = corpus.shard_bounds(imgs.shape[0], shard)
        items, task, seq_len = (imgs[start:stop], labels[start:stop]), ClassificationTask(), 1
        corpus_fp = corpus.fingerprint_tensor(full)
    else:
        items, start, corpus_fp = _lm_shard(model_path, data, seq_len, tokens, shard,
                                            trust_remote_code)
        task, seq_len = LMTask(), items.shape[1]
        vocab = model.get_input_embeddings().num_embeddings
        if items.numel() and (int(items.min()) < 0 or int(items.max()) >= vocab):
            raise ValueError(f"--data {data}: token ids from {int(items.min())} to "
                             f"{int(items.max())}, but the model's vocabulary is 0..{vocab - 1}")
    memorized = list(memorized or [])
    n_memorized = -1
    if memorized:
        tok = load_tokenizer(model_path, trust_remote_code)
        n_memorized = corpus.count_memorized_positions(items,
                                                       corpus.memorized_windows(memorized, tok))
    batches = batched(items, batch_size)
    fp, digest = model_identity(model)
    out = Path(out)
    key = run_key(model=fp, digest=digest, corpus=corpus_fp, layers=sorted({m.layer for m in modules}),
                  modules=[m.name for m in modules], fisher=fisher, seed=seed, shard=shard,
                  batch_size=batch_size, dtype=dtype)
    checkpoint = out / f".checkpoint-{key[:12]}.safetensors" if checkpoint_every else None
    result = collect(model, batches, modules, task, fisher=fisher, seed=seed,
                     dtype=getattr(torch, dtype), first_index=start, progress=True,
                     checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                     checkpoint_key=key, position_mass=is_vit)
    layers = write_layer_files(out, result, modules, {
        "model_id": model_id(model_path), "model_fingerprint": fp, "model_digest": digest,
        "fisher": fisher, "n_tokens": result.n_tokens, "seq_len": seq_len,
        "corpus_fingerprint": corpus_fp, "seed": seed, "shard": shard or "",
        "task": task.name, "data": str(data), "corpus": str(data), "dtype": dtype,
        "memorized_positions": n_memorized, "memorized_sets": ",".join(map(str, memorized)),
        **({"images": image_set} if is_vit and image_set != "train" else {}), **augment},
        time.perf_counter() - t0)
    if checkpoint is not None and checkpoint.exists():
        checkpoint.unlink()
    return result.n_tokens, layers


def _lm_shard(model_path, data, seq_len, tokens, shard, trust_remote_code):
    """(sequences of shard k/n, index of the first, corpus fingerprint) of an LM corpus.

    A .npy token file is memory-mapped and only the shard's rows are read; a streamed `hf:`
    corpus read in shards reads no document past the shard's end (`load_token_shard`), and is
    fingerprinted by what it is (source, packing, budget, tokenizer), since no shard sees the
    whole stream; a local text file is packed whole and sliced, as before.
    """
    data = str(data)
    if data.endswith(".npy"):
        found = corpus.token_array_shard(data, seq_len, tokens, shard)
        ids = np.load(data, mmap_mode="r", allow_pickle=False)
        length = ids.shape[1] if ids.ndim == 2 else seq_len
        _require_tokens(data, tokens, length, ids.shape[0] if ids.ndim == 2
                        else ids.shape[0] // length)
        return found
    tok = load_tokenizer(model_path, trust_remote_code)
    if data.startswith("hf:") and shard:
        seqs, start = corpus.load_token_shard(data, seq_len, tok, tokens, shard)
        planned = corpus.shard_bounds(tokens // seq_len, shard)
        if seqs.shape[0] < planned[1] - planned[0]:  # the stream ended inside this shard
            _require_tokens(data, tokens, seq_len, start + seqs.shape[0])
        vocab = hashlib.sha256(json.dumps(sorted(tok.get_vocab().items())).encode()).hexdigest()
        fp = run_key(source=data, seq_len=seq_len, tokens=tokens, eos=tok.eos_token_id,
                     vocab=vocab)[:16]
        return seqs, start, fp
    full = corpus.load_token_sequences(data, seq_len, tok, tokens)
    _require_tokens(data, tokens, seq_len, full.shape[0])
    start, stop = corpus.shard_bounds(full.shape[0], shard)
    return full[start:stop], start, corpus.fingerprint_tensor(full)


def _require_tokens(data, tokens: int, seq_len: int, available: int) -> None:
    """Refuse a --tokens budget the corpus cannot fill (`available` whole sequences), before any
    compute: fewer positions than asked would be collected, and the files would say so only in
    their n_tokens."""
    if available < tokens // seq_len:
        raise ValueError(f"--tokens {tokens}: the corpus {data} holds only {available * seq_len} "
                         f"tokens in whole sequences of --seq-len {seq_len} ({available} "
                         f"sequences, {tokens // seq_len} needed); lower --tokens to at most "
                         f"{available * seq_len} or give a larger corpus")


def _require_images(data, tokens: int, available: int, image_set: str = "train") -> None:
    """`_require_tokens` for a ViT, whose --tokens counts images."""
    if available < tokens:
        raise ValueError(f"--tokens {tokens}: the dataset {data} holds only {available} "
                         f"{image_set} images (for a ViT --tokens counts images); lower --tokens "
                         f"to at most {available}")


def write_layer_files(out, means: Factors, modules: list[MLPModule], attrs: dict,
                      seconds: float) -> list[int]:
    """OUT/layer_<L>.nc per layer of `modules` from collected means; each file's cost file
    (`<file>.cost.json`, not the file: a measurement differs between runs) carries its share of
    `seconds`. Returns the layers."""
    layers = sorted({m.layer for m in modules})
    share = seconds / len(layers)
    for layer in layers:
        groups = {m.name: {"A": means.A[(layer, m.name)].cpu().numpy(),
                           "G": means.G[(layer, m.name)].cpu().numpy()}
                  for m in modules if m.layer == layer}
        path = schema.layer_path(out, layer)
        layer_attrs = dict(attrs, effective_sample_size=mass_summary(
            means.mass, layer, groups)) if means.mass else attrs
        schema.write_layer(path, "factors", layer, groups, layer_attrs)
        write_cost(path, {"seconds": round(share, 3), "peak_rss_mb": round(peak_rss_mb(), 1)})
    return layers


def merged_mass(summaries: list[dict]) -> dict:
    """The `effective_sample_size` attribute of the union of shards from theirs (`mass_summary`):
    their Σ w and Σ w² add up."""
    out = {}
    for name, sides in summaries[0].items():
        out[name] = {}
        for side in sides:
            w_sum = sum(s[name][side]["w_sum"] for s in summaries)
            w_sq = sum(s[name][side]["w_sq_sum"] for s in summaries)
            out[name][side] = {"ess": effective_sample_size(w_sum, w_sq), "w_sum": w_sum,
                               "w_sq_sum": w_sq}
    return out


# root attributes older curvmem versions wrote their costs in (now in `<file>.cost.json`)
COST_ATTRS = ("cost_seconds", "cost_peak_rss_mb")


@dataclass
class CollectionData:
    """What `collect` cuts its shards from: the first `tokens` items of the data (packed token
    sequences, or (images, labels) for a ViT), the task scoring them and the fingerprint of that
    whole budget (shards of one run share it)."""

    items: object
    task: object
    seq_len: int
    fingerprint: str

    @property
    def n_items(self) -> int:
        return (self.items[0] if isinstance(self.items, tuple) else self.items).shape[0]

    def cut(self, start: int, stop: int):
        if isinstance(self.items, tuple):
            return tuple(t[start:stop] for t in self.items)
        return self.items[start:stop]


def collection_data(model_path, data, tokens: int, seq_len: int,
                    trust_remote_code: bool = False) -> CollectionData:
    """The items of a `collect --tokens N` run: for a ViT directory the first N training images
    with their (noisy) labels, scored at the CLS position; else the first N // seq_len packed
    sequences of the corpus. A smaller budget gives a prefix of a larger one's items."""
    if vit.is_vision_model(model_path):
        imgs, labels = images.load_images(data, split="train")
        if imgs.shape[0] == 0:
            raise ValueError(f"{data}: no training images")
        _require_images(data, tokens, imgs.shape[0])
        imgs, labels = imgs[:tokens], labels[:tokens]
        full = torch.cat([imgs.reshape(imgs.shape[0], -1), labels[:, None].float()], 1)
        return CollectionData((imgs, labels), ClassificationTask(), 1,
                              corpus.fingerprint_tensor(full))
    tok = None if str(data).endswith(".npy") else load_tokenizer(model_path, trust_remote_code)
    full = corpus.load_token_sequences(data, seq_len, tok, tokens)
    _require_tokens(data, tokens, full.shape[1], full.shape[0])
    return CollectionData(full, LMTask(), full.shape[1], corpus.fingerprint_tensor(full))


# --------------------------------------------------------------------------- merge


def merge_layer_files(paths, out) -> None:
    """Combine shard files of one layer exactly: token-weighted means, in float64."""
    import numpy as np

    if not paths:
        raise ValueError("merge needs at least one factors file")
    files = [schema.read_layer(p, "factors") for p in paths]
    first = files[0]
    same = ("model_fingerprint", "model_digest", "layer", "fisher", "seq_len", "seed",
            "corpus_fingerprint")
    for f, p in zip(files, paths):
        for key in same:
            if f.attrs.get(key) != first.attrs.get(key):
                raise ValueError(f"{p}: {key} = {f.attrs.get(key)} differs from {paths[0]} "
                                 f"({first.attrs.get(key)}); only shards of one run merge")
        if sorted(f.groups) != sorted(first.groups):
            raise ValueError(f"{p}: modules {sorted(f.groups)} differ from {sorted(first.groups)}")
    shards = [corpus.parse_shard(f.attrs.get("shard") or None) for f in files]
    n = {s[1] for s in shards}
    if len(n) != 1 or sorted(s[0] for s in shards) != list(range(n.pop())):
        raise ValueError(f"shards {[f.attrs.get('shard') for f in files]} are not exactly "
                         "0/n ... (n-1)/n of one run")
    total = sum(int(f.attrs["n_tokens"]) for f in files)
    groups = {}
    for name in first.groups:
        groups[name] = {}
        for var in ("A", "G"):
            acc = sum(np.asarray(f.groups[name][var], np.float64) * int(f.attrs["n_tokens"])
                      for f in files)
            groups[name][var] = (acc / total).astype(first.groups[name][var].dtype)
    attrs = {k: v for k, v in first.attrs.items()
             if k not in ("kind", "schema_version", "layer", "curvmem_version", *COST_ATTRS)}
    counts = [int(f.attrs.get("memorized_positions", -1)) for f in files]
    attrs.update(n_tokens=total, shard="",
                 memorized_positions=-1 if min(counts) < 0 else sum(counts))
    attrs.pop("effective_sample_size", None)  # the shards' masses add up; their ESS do not
    masses = [f.attrs.get("effective_sample_size") for f in files]
    if all(masses):
        attrs["effective_sample_size"] = merged_mass([json.loads(m) for m in masses])
    schema.write_layer(out, "factors", int(first.layer), groups, attrs)
    shard_costs = [schema.layer_cost(p, f.attrs) for p, f in zip(paths, files)]  # merged: the shards'
    write_cost(out, {"seconds": round(sum(c["seconds"] for c in shard_costs), 3),
                     "peak_rss_mb": max(c["peak_rss_mb"] for c in shard_costs)})
