"""BalancedSubnet (BSN), the learned-mask unlearning baseline for the K-FAC edit.

BalancedSubnet (Sakarvadia et al., "Mitigating Memorization in Language Models", ICLR 2025; the
OLMo-2 port of Merullo et al. 2025): every MLP input and output matrix W of every block gets a
learnable score S per weight (Kaiming-uniform init); W itself stays frozen. The forward pass uses
W ⊙ mask(S), where the mask zeroes the `ratio` fraction of W's entries with the smallest |S|; the
gradient passes straight through the (non-differentiable) mask to |S|. Per batch of mixed forget
and retain sequences the loss is

    −(1 − α) · mean CE(forget sequences) + α · mean CE(retain sequences)

(mean over the sequences of the batch of each sequence's mean next-token CE), minimised by SGD
(momentum 0.9, weight decay 5e-4) on the scores. The final hard mask is baked into the weights
and written as an ordinary curvmem edit (`curvmem.schema.write_edit`).

The model's code is left alone: masked weights are handed to `torch.func.functional_call`.

The comparison of all methods is curvmem.report.compare.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from curvmem import io, schema
from curvmem.model.adapters import (
    MLPModule,
    adapter_for,
    default_device,
    mlp_modules,
    model_device,
)
from curvmem.model.identity import identity_record
from curvmem.model.load import load_model, load_tokenizer

PAD = -1  # padding value inside token-id tensors: never fed to the model, ignored by the loss


# --------------------------------------------------------------------------- BSN configuration


@dataclass(frozen=True)
class BSNConfig:
    """BalancedSubnet hyper-parameters; the defaults are the paper's best OLMo-2 setting."""

    ratio: float = 0.0015  # fraction of each matrix pruned
    alpha: float = 0.7  # weight of the retain term (1 − alpha on the forget term)
    epochs: int = 5
    lr: float = 0.3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 32
    seed: int = 0
    include_gate: bool = True  # gated MLPs: mask gate_proj too (it is an MLP input matrix)

    def validate(self) -> None:
        if not (isinstance(self.ratio, (int, float)) and 0 < self.ratio < 1):
            raise ValueError(f"--ratio must lie strictly between 0 and 1 (the fraction of each "
                             f"MLP matrix to prune), got {self.ratio}; the paper uses 0.0015")
        if not (isinstance(self.alpha, (int, float)) and 0 <= self.alpha <= 1):
            raise ValueError(f"--alpha must lie in [0, 1] (the weight of the retain loss), got "
                             f"{self.alpha}; the paper uses 0.7")
        if int(self.epochs) != self.epochs or self.epochs < 1:
            raise ValueError(f"--epochs must be a positive integer, got {self.epochs}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr must be a positive number, got {self.lr}")
        if int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise ValueError(f"--batch-size must be a positive integer, got {self.batch_size}")


def pruned_count(numel: int, ratio: float) -> int:
    """Entries pruned from a matrix of `numel` weights: round(ratio · numel), at least 1 and at
    most numel − 1, so a tiny matrix is still masked and never wiped out."""
    return int(min(max(round(ratio * numel), 1), numel - 1))


def bsn_modules(model: nn.Module, include_gate: bool = True) -> list[MLPModule]:
    """Every MLP input and output matrix of every block (gate_proj only if `include_gate`)."""
    names = [n for n in adapter_for(model).modules
             if include_gate or not n.endswith("gate_proj")]
    return mlp_modules(model, modules=names)


# --------------------------------------------------------------------------- the score mask


class _StraightThroughMask(torch.autograd.Function):
    """Hard mask from magnitudes (0 for the `n_pruned` smallest, 1 elsewhere); the backward pass
    hands the incoming gradient to the magnitudes unchanged (straight-through estimator)."""

    @staticmethod
    def forward(ctx, magnitude: torch.Tensor, n_pruned: int) -> torch.Tensor:
        flat = torch.ones(magnitude.numel(), dtype=magnitude.dtype, device=magnitude.device)
        smallest = torch.topk(magnitude.detach().flatten(), n_pruned, largest=False).indices
        flat[smallest] = 0
        return flat.view_as(magnitude)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def score_mask(scores: torch.Tensor, n_pruned: int) -> torch.Tensor:
    """{0,1} mask pruning exactly `n_pruned` entries with the smallest |score|."""
    return _StraightThroughMask.apply(scores.abs(), n_pruned)


def init_scores(module: MLPModule, generator: torch.Generator) -> torch.Tensor:
    """Kaiming-uniform scores (fan-in = d_in, as for an nn.Linear weight), in the parameter's own
    stored layout so they multiply it elementwise (GPT-2 Conv1D stores (d_in, d_out))."""
    scores = torch.empty(module.d_out, module.d_in)
    nn.init.kaiming_uniform_(scores, a=math.sqrt(5), generator=generator)
    return module.to_stored_layout(scores)


class BalancedSubnet:
    """Learnable scores over a model's frozen MLP weights; see the module docstring."""

    def __init__(self, model: nn.Module, config: BSNConfig):
        config.validate()
        self.model = model
        self.config = config
        self.modules = bsn_modules(model, config.include_gate)
        generator = torch.Generator().manual_seed(config.seed)
        self.scores = {m.param_name: nn.Parameter(init_scores(m, generator))
                       for m in self.modules}
        self.n_pruned = {m.param_name: pruned_count(m.module.weight.numel(), config.ratio)
                         for m in self.modules}

    def masked_weights(self) -> dict:
        """Full parameter name -> W ⊙ mask (stored layout), differentiable in the scores."""
        return {m.param_name: m.module.weight.detach() * score_mask(self.scores[m.param_name],
                                                                  self.n_pruned[m.param_name])
                for m in self.modules}

    def sequence_losses(self, ids: torch.Tensor, masked: bool = True) -> torch.Tensor:
        """Mean next-token CE of each sequence ([B, T] ids, PAD-padded) -> [B]."""
        inputs = ids.clamp(min=0)  # PAD sits after the real tokens; causal attention ignores it
        if masked:
            logits = torch.func.functional_call(self.model, self.masked_weights(), (),
                                                {"input_ids": inputs}).logits
        else:
            logits = self.model(input_ids=inputs).logits
        return sequence_ce(logits, ids)

    def baked(self) -> dict:
        """Full parameter name -> W ⊙ final mask, in the model's own layout (the edit)."""
        with torch.no_grad():
            return {name: w.detach().clone() for name, w in self.masked_weights().items()}

    def stats(self) -> dict:
        return {m.param_name: {"pruned": self.n_pruned[m.param_name],
                               "total": m.module.weight.numel()} for m in self.modules}


def sequence_ce(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per-sequence mean CE of predicting ids[:, 1:] from logits[:, :-1]; PAD targets ignored."""
    targets = ids[:, 1:]
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                         targets.reshape(-1), ignore_index=PAD, reduction="none")
    ce = ce.view_as(targets)
    counted = (targets != PAD).sum(dim=1).clamp(min=1)
    return ce.sum(dim=1) / counted


# --------------------------------------------------------------------------- BSN training


def _pad_to(ids: torch.Tensor, length: int) -> torch.Tensor:
    if ids.shape[1] == length:
        return ids
    pad = torch.full((ids.shape[0], length - ids.shape[1]), PAD, dtype=ids.dtype)
    return torch.cat([ids, pad], dim=1)


def _check_ids(ids: torch.Tensor, what: str) -> None:
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] < 2:
        raise ValueError(f"the {what} set needs at least one sequence of >= 2 tokens, got token "
                         f"ids of shape {tuple(ids.shape)}")


def train_bsn(model: nn.Module, forget_ids: torch.Tensor, retain_ids: torch.Tensor,
              config: BSNConfig = BSNConfig(), progress: bool = False) -> tuple:
    """Train BSN scores on `model` (weights untouched). Returns (BalancedSubnet, history).

    forget_ids / retain_ids: LongTensor [n, T], padded with PAD. Forget and retain sequences are
    shuffled together into batches (as in BSN's code); a batch lacking one kind skips that term.
    history: per epoch, the mean masked CE on forget and on retain sequences seen in training.
    """
    from tqdm.auto import tqdm

    config.validate()
    _check_ids(forget_ids, "forget")
    _check_ids(retain_ids, "retain")
    subnet = BalancedSubnet(model, config)
    device = model_device(model)  # batches go where the model is
    length = max(forget_ids.shape[1], retain_ids.shape[1])
    data = torch.cat([_pad_to(forget_ids, length), _pad_to(retain_ids, length)])
    is_forget = torch.cat([torch.ones(len(forget_ids), dtype=torch.bool),
                           torch.zeros(len(retain_ids), dtype=torch.bool)])
    optimizer = torch.optim.SGD(list(subnet.scores.values()), lr=config.lr,
                                momentum=config.momentum, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    n_batches = math.ceil(len(data) / config.batch_size)
    history = []
    # Only the scores learn: switch off gradients of the model's own weights (restored after).
    requires_grad = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        bar = tqdm(total=config.epochs * n_batches, desc="bsn", disable=not progress)
        for epoch in range(config.epochs):
            sums = {"forget": [0.0, 0], "retain": [0.0, 0]}
            order = torch.randperm(len(data), generator=generator)
            for start in range(0, len(data), config.batch_size):
                idx = order[start:start + config.batch_size]
                losses = subnet.sequence_losses(data[idx].to(device))
                forget = is_forget[idx].to(device)
                loss = losses.new_zeros(())
                if forget.any():
                    loss = loss - (1 - config.alpha) * losses[forget].mean()
                if (~forget).any():
                    loss = loss + config.alpha * losses[~forget].mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                for kind, sel in (("forget", forget), ("retain", ~forget)):
                    sums[kind][0] += losses[sel].detach().sum().item()
                    sums[kind][1] += int(sel.sum())
                bar.update(1)
            history.append({"epoch": epoch + 1,
                            **{f"{k}_ce": s / max(n, 1) for k, (s, n) in sums.items()}})
            bar.set_postfix(forget=f"{history[-1]['forget_ce']:.3f}",
                            retain=f"{history[-1]['retain_ce']:.3f}")
        bar.close()
    finally:
        for p, flag in requires_grad.items():
            p.requires_grad_(flag)
    return subnet, history


# --------------------------------------------------------------------------- BSN from files


def read_texts(path) -> list[str]:
    """The non-empty "text" fields of a JSONL file (one JSON object per line)."""
    texts = [str(r["text"]) for r in io.iter_jsonl(path, ("text",)) if str(r["text"]).strip()]
    if not texts:
        raise ValueError(f"{path}: no texts (the file is empty or every \"text\" is blank); BSN "
                         "needs at least one forget and one retain sequence")
    return texts


def tokenize_texts(texts: list[str], tokenizer, seq_len: int, pack: bool = False) -> torch.Tensor:
    """Token sequences [n, ≤ seq_len], PAD-padded.

    pack=False (forget set): one sequence per text, texts longer than seq_len cut into chunks,
    so a memorized canary stays one training example. pack=True (retain set): the texts form one
    stream (EOS between documents, when the tokenizer has one) cut into seq_len blocks, as an LM
    sees clean text in training; this also avoids paying for padding on short paragraphs.
    No special tokens are added: the embedded world trains on documents without BOS, so a
    canary's tokens here are the ones the model memorized.
    """
    if seq_len < 2:
        raise ValueError(f"--seq-len must be at least 2, got {seq_len}")
    docs = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    if pack:
        eos = getattr(tokenizer, "eos_token_id", None)
        docs = [[t for d in docs for t in [*d, *([eos] if eos is not None else [])]]]
    chunks = [d[i:i + seq_len] for d in docs for i in range(0, len(d), seq_len)]
    chunks = [c for c in chunks if len(c) >= 2]
    if not chunks:
        raise ValueError("no text has 2 or more tokens; nothing to train on")
    out = torch.full((len(chunks), max(map(len, chunks))), PAD, dtype=torch.long)
    for row, c in enumerate(chunks):
        out[row, :len(c)] = torch.tensor(c, dtype=torch.long)
    return out


def file_fingerprint(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def run_bsn(model_path, forget, retain, out, config: BSNConfig = BSNConfig(), seq_len: int = 128,
            tokenizer_path=None, progress: bool = True, trust_remote_code: bool = False,
            device: str | None = None) -> dict:
    """`curvmem baseline bsn`: train BSN on files and write the edit + sidecar. Returns the meta."""
    config.validate()
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {out}: an edit file must end in .safetensors")
    if seq_len < 2:
        raise ValueError(f"--seq-len must be at least 2, got {seq_len}")
    forget_texts, retain_texts = read_texts(forget), read_texts(retain)
    try:
        tokenizer = load_tokenizer(tokenizer_path or model_path, trust_remote_code)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load a tokenizer from {tokenizer_path or model_path} ({e}); "
                         "pass --tokenizer DIR") from None
    model = load_model(model_path, trust_remote_code=trust_remote_code,
                       device=default_device(device))
    with io.cost() as c:
        forget_ids = tokenize_texts(forget_texts, tokenizer, seq_len)
        retain_ids = tokenize_texts(retain_texts, tokenizer, seq_len, pack=True)
        subnet, history = train_bsn(model, forget_ids, retain_ids, config, progress=progress)
        tensors = subnet.baked()
    spec = {**asdict(config), "seq_len": seq_len,
            "modules": sorted({m.name for m in subnet.modules}),
            "layers": sorted({m.layer for m in subnet.modules}),
            "forget": str(forget), "forget_fingerprint": file_fingerprint(forget),
            "forget_sequences": len(forget_ids),
            "retain": str(retain), "retain_fingerprint": file_fingerprint(retain),
            "retain_sequences": len(retain_ids)}
    meta = {"method": "bsn", "spec": spec, "modules": subnet.stats(),
            **identity_record(model), "history": history}
    schema.write_edit(out, tensors, meta)
    io.write_cost(out, c)  # seconds, peak RSS: beside the edit, never in its sidecar
    return meta
