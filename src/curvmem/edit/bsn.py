"""Baselines for the K-FAC edit: BalancedSubnet (BSN), and the comparison of all methods.

BalancedSubnet (Sakarvadia et al., "Mitigating Memorization in Language Models", ICLR 2025; the
OLMo-2 port of Merullo et al. 2025): every MLP input and output matrix W of every block gets a
learnable score S per weight (Kaiming-uniform init); W itself stays frozen. The forward pass uses
W ⊙ mask(S), where the mask zeroes the `ratio` fraction of W's entries with the smallest |S|; the
gradient passes straight through the (non-differentiable) mask to |S|. Per batch of mixed forget
and retain sequences the loss is

    −(1 − α) · mean CE(forget sequences) + α · mean CE(retain sequences)

(mean over the sequences of the batch of each sequence's mean next-token CE), minimised by SGD
(momentum 0.9, weight decay 5e-4) on the scores. The final hard mask is baked into the weights
and written as an ordinary curvmem edit (`store.write_edit`).

The model's code is left alone: masked weights are handed to `torch.func.functional_call`.

The comparison reads `results/lm_summary.json` (written by `curvmem report-lm`) and sets every
edit beside the base model and beside the paper's Table 1: memorization, perplexity, task
retention and the cost of producing the edit, plus a Pareto figure (untargeted strict recitation
against perplexity, one curve per method and recipe: BSN's training length, an edit's layer set).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from curvmem import store
from curvmem.models import MLPModule, adapter_for, mlp_modules, model_device, model_fingerprint

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
    texts = [str(r["text"]) for r in store.iter_jsonl(path, ("text",)) if str(r["text"]).strip()]
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
    from curvmem.cli.common import cost
    from curvmem.models import default_device, load_model, load_tokenizer

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
    with cost() as c:
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
            "model_fingerprint": model_fingerprint(model), "seconds": c["seconds"],
            "peak_rss_mb": c["peak_rss_mb"], "history": history}
    store.write_edit(out, tensors, meta)
    return meta


# --------------------------------------------------------------------------- the comparison

# The paper's Table 1 (Merullo et al. 2025), copied from docs' PAPER.md: reference values only,
# printed beside ours and labelled as the paper's. Dolma = targeted memorized training sequences,
# Quotes = untargeted historical quotes; strict/loose in %, Avg Lev higher = less memorization.
PAPER_TABLE1 = [
    # model, method, Dolma strict, loose, avg lev, Quotes strict, loose, avg lev, PPL
    ("7B", "base", 99.9, 100.0, 0.002, 99.9, 100.0, 0.001, 19.04),
    ("7B", "BSN", 6.0, 11.0, 0.860, 60.0, 79.0, 0.180, 23.59),
    ("7B", "K-FAC", 3.4, 8.8, 0.704, 16.1, 23.8, 0.625, 22.84),
    ("7B", "SVD", 3.0, 6.8, 0.754, 17.5, 30.4, 0.560, 22.49),
    ("1B", "base", 98.46, 99.38, 0.005, 98.5, 98.95, 0.006, 23.19),
    ("1B", "BSN", 3.0, 5.0, 0.900, 57.0, 66.0, 0.250, 25.41),
    ("1B", "K-FAC", 2.8, 7.2, 0.761, 27.7, 39.9, 0.470, 26.53),
    ("1B", "SVD", 3.2, 6.3, 0.781, 39.6, 48.5, 0.401, 26.94),
]

# Each method's knob, in the order the spec keys are looked up, and the table/plot label.
KNOBS = {
    "kfac": ("rho", ("rho",)),
    "kfac-bottom": ("rho", ("rho",)),
    "kfac-random": ("rho", ("rho",)),
    "kfac-shard": ("rho", ("rho",)),
    "svd": ("drop", ("svd_drop", "drop", "fraction")),
    "bsn": ("ratio", ("ratio",)),
}
METHOD_ORDER = ("base", "kfac", "svd", "bsn", "kfac-bottom", "kfac-random", "kfac-shard")
CONTROLS = ("kfac-bottom", "kfac-random", "kfac-shard")
TASK_CATEGORIES = ("closed_book", "open_book", "arithmetic", "logic")
MATCH_TOLERANCE = 0.05  # perplexities "match" when the larger is within 5 % of the smaller


def _number(x, keys=("value", "mean", "accuracy", "score", "perplexity")):
    """A metric as a float: a number, or the first numeric entry of a dict among `keys`."""
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, dict):
        for k in keys:
            if k in x:
                return _number(x[k], keys)
    return None


def knob(method: str, spec: dict):
    """(knob name, value) of an edit from its sidecar spec; value None when absent.

    BSN's spec names its knob (`ratio`); `curvmem edit` writes {layer: {module: value}} (ρ or the
    SVD drop fraction). Where modules got different values, the knob is their largest.
    """
    name, keys = KNOBS.get(method, ("", ()))
    spec = spec or {}
    for k in keys:
        v = _number(spec.get(k))
        if v is not None:
            return name, v
    per_module = [_number(v) for mods in spec.values() if isinstance(mods, dict)
                  for v in mods.values()]
    per_module = [v for v in per_module if v is not None]
    return name, (max(per_module) if per_module else None)


def curve_variant(spec: dict) -> str:
    """What tells curves of one method apart: BSN's training length ("50 epochs"), or the layer
    set of an edit written by `curvmem edit` ("L4+5"); "" when neither is recorded."""
    epochs = _number(spec.get("epochs"))
    if epochs is not None:
        return f"{epochs:g} epochs"
    from curvmem.edit import layer_set_label

    return layer_set_label(spec)


def comparison_rows(summary: dict) -> list[dict]:
    """One row per model of an lm_summary: metrics, knob, task retention relative to base."""
    models = summary.get("models") if isinstance(summary, dict) else None
    if not isinstance(models, dict) or "base" not in models:
        raise ValueError("the summary needs {\"models\": {\"base\": ..., \"<edit>\": ...}} as "
                         "written by `curvmem report-lm`; it has no base model")
    base_tasks = {c: _number((models["base"].get("tasks") or {}).get(c)) for c in TASK_CATEGORIES}
    rows = []
    for name, m in models.items():
        if not isinstance(m, dict):
            raise ValueError(f"summary entry '{name}' is not an object")  # noqa: TRY004
        method = "base" if name == "base" else str(m.get("method") or name)
        knob_name, knob_value = knob(method, m.get("spec") or {})
        row = {"name": name, "method": method, "knob_name": knob_name, "knob": knob_value,
               "selected": name == summary.get("selected")}  # report-lm's chosen K-FAC edit
        for split in ("forget", "untargeted", "control"):
            metrics = m.get(split) or {}
            for key in ("strict", "loose", "avg_distance"):
                row[f"{split}_{key}"] = _number(metrics.get(key))
        row["perplexity"] = _number(m.get("perplexity"))
        row["ndcg10"] = _number(m.get("ndcg10"))
        for cat in TASK_CATEGORIES:
            v, b = _number((m.get("tasks") or {}).get(cat)), base_tasks[cat]
            row[f"{cat}_retention"] = 100 * v / b if v is not None and b else None
        row["seconds"] = _number(m.get("seconds"))
        row["peak_rss_mb"] = _number(m.get("peak_rss_mb"))
        rows.append(row)
    # One curve per recipe: BSN at 5 and at 50 epochs are two curves, and so are K-FAC edits of
    # different layer sets (a knob sweep only makes a curve within one recipe).
    variants = [curve_variant(m.get("spec") or {}) for m in models.values()]
    recipes = {}
    for r, v in zip(rows, variants):
        recipes.setdefault(r["method"], set()).add(v)
    for r, v in zip(rows, variants):
        r["recipe"] = v if len(recipes[r["method"]]) > 1 else ""
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    rows.sort(key=lambda r: (rank.get(r["method"], len(rank)), r["method"],
                             r["knob"] if r["knob"] is not None else math.inf, r["name"]))
    return rows


def matched_perplexity_verdict(rows: list[dict], tolerance: float = MATCH_TOLERANCE) -> dict:
    """Is K-FAC's untargeted strict recitation lower than BSN's at matched perplexity?

    For each BSN point, the K-FAC points whose perplexity is within `tolerance` (larger/smaller
    ≤ 1 + tolerance) are its matches; the best of them (lowest untargeted strict, then lowest
    perplexity) is compared with it. Verdict: "yes" if K-FAC is lower at every matched BSN point,
    "no" if at none, "mixed" otherwise, "no match" if no BSN point has a K-FAC match.
    """
    def usable(r):
        return r["perplexity"] is not None and r["untargeted_strict"] is not None

    kfac = [r for r in rows if r["method"] == "kfac" and usable(r)]
    bsn = [r for r in rows if r["method"] == "bsn" and usable(r)]
    pairs = []
    for b in bsn:
        near = [k for k in kfac
                if max(k["perplexity"], b["perplexity"])
                <= (1 + tolerance) * min(k["perplexity"], b["perplexity"])]
        if not near:
            continue
        k = min(near, key=lambda r: (r["untargeted_strict"], r["perplexity"]))
        pairs.append({"bsn": b["name"], "kfac": k["name"],
                      "bsn_perplexity": b["perplexity"], "kfac_perplexity": k["perplexity"],
                      "bsn_untargeted_strict": b["untargeted_strict"],
                      "kfac_untargeted_strict": k["untargeted_strict"],
                      "kfac_lower": k["untargeted_strict"] < b["untargeted_strict"]})
    lower = sum(p["kfac_lower"] for p in pairs)
    if not pairs:
        verdict = "no match"
    elif lower == len(pairs):
        verdict = "yes"
    elif lower == 0:
        verdict = "no"
    else:
        verdict = "mixed"
    return {"verdict": verdict, "tolerance": tolerance, "pairs": pairs,
            "n_kfac": len(kfac), "n_bsn": len(bsn)}


def _fmt(v, digits=1, scale=1.0):
    return "–" if v is None else f"{v * scale:.{digits}f}"


def _pct_scale(rows: list[dict]) -> float:
    """Strict/loose come as fractions (→ ×100) unless some value already exceeds 1 (percent)."""
    vals = [r[f"{s}_{k}"] for r in rows for s in ("forget", "untargeted")
            for k in ("strict", "loose") if r[f"{s}_{k}"] is not None]
    return 1.0 if any(v > 1 for v in vals) else 100.0


def comparison_table(rows: list[dict], verdict: dict, source: str = "") -> str:
    """Markdown: our Table 1 (with cost and task retention), the verdict, the paper's Table 1."""
    pct = _pct_scale(rows)
    head = ("| entry | method | knob | forget strict % | loose % | Avg Lev | untargeted strict % "
            "| loose % | Avg Lev | PPL | nDCG@10 | closed-book | open-book | arithmetic | logic "
            "| edit s | peak MB |")
    lines = [f"## This run{f' ({source})' if source else ''}", "",
             ("Forget = the canaries given to the methods (the paper's Dolma column); untargeted "
             "= canaries never given to any method (the paper's Quotes column). Task columns: "
             "score as % of the base model's. Edit s / peak MB: wall time and peak RSS of "
             "producing the edit. (selected) = report-lm's chosen K-FAC edit (forget set and "
             "perplexity only)."), "", head, "|" + "---|" * 17]
    for r in rows:
        k = "" if r["knob"] is None else f"{r['knob_name']}={r['knob']:g}"
        cells = [r["name"] + (" (selected)" if r["selected"] else ""), r["method"], k,
                 _fmt(r["forget_strict"], 1, pct), _fmt(r["forget_loose"], 1, pct),
                 _fmt(r["forget_avg_distance"], 3),
                 _fmt(r["untargeted_strict"], 1, pct), _fmt(r["untargeted_loose"], 1, pct),
                 _fmt(r["untargeted_avg_distance"], 3), _fmt(r["perplexity"], 2),
                 _fmt(r["ndcg10"], 3)]
        cells += [_fmt(r[f"{c}_retention"], 1) for c in TASK_CATEGORIES]
        cells += [_fmt(r["seconds"], 1), _fmt(r["peak_rss_mb"], 0)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", (f"**Matched perplexity (within {verdict['tolerance']:.0%}): is K-FAC's "
              f"untargeted strict recitation lower than BSN's? {verdict['verdict']}.**")]
    if verdict["pairs"]:
        lower = sum(p["kfac_lower"] for p in verdict["pairs"])
        lines.append(f"K-FAC is lower at {lower} of {len(verdict['pairs'])} BSN settings that "
                     "have a K-FAC setting at matched perplexity:")
        for p in verdict["pairs"]:
            lines.append(f"- {p['bsn']} (PPL {p['bsn_perplexity']:.2f}, untargeted strict "
                         f"{p['bsn_untargeted_strict'] * pct:.1f} %) vs {p['kfac']} (PPL "
                         f"{p['kfac_perplexity']:.2f}, {p['kfac_untargeted_strict'] * pct:.1f} %)")
    else:
        lines.append(f"No BSN setting has a K-FAC setting within {verdict['tolerance']:.0%} "
                     f"perplexity ({verdict['n_bsn']} BSN, {verdict['n_kfac']} K-FAC points): "
                     "widen the sweeps to compare.")
    lines += ["", "## The paper's Table 1 (Merullo et al. 2025, OLMo-2; not this run)", "",
              ("| model | method | Dolma strict % | loose % | Avg Lev | Quotes strict % | loose % "
              "| Avg Lev | PPL |"), "|" + "---|" * 9]
    for model, method, *v in PAPER_TABLE1:
        cells = [f"{v[0]:g}", f"{v[1]:g}", f"{v[2]:.3f}", f"{v[3]:g}", f"{v[4]:g}",
                 f"{v[5]:.3f}", f"{v[6]:.2f}"]
        lines.append(f"| {model} | {method} | " + " | ".join(cells) + " |")
    lines += ["", ("Paper, nDCG@10 (7B): base 1.00, BSN 0.97, K-FAC 0.91, SVD 0.91. The paper "
              "reports no cost of producing the edits.")]
    return "\n".join(lines) + "\n"


STYLES = {  # method -> (label, colour, marker, joined by a line)
    "kfac": ("K-FAC (top curvature)", "tab:blue", "o", True),
    "svd": ("SVD", "tab:orange", "s", True),
    "bsn": ("BalancedSubnet", "tab:green", "^", True),
    "kfac-bottom": ("control: K-FAC bottom", "tab:red", "v", False),
    "kfac-random": ("control: K-FAC random", "tab:purple", "X", False),
    "kfac-shard": ("control: K-FAC other shard", "tab:brown", "D", False),
}


def comparison_figure(rows: list[dict], path, verdict: dict | None = None) -> None:
    """Untargeted strict recitation vs perplexity: one curve per method and recipe, base and controls marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from curvmem.plots import RECIPE_MARKERS, log_x_if_wide, recipe_order, shade

    pct = _pct_scale(rows)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    drawable = [r for r in rows if r["method"] != "base" and r["perplexity"] is not None
                and r["untargeted_strict"] is not None]
    methods = list(dict.fromkeys(r["method"] for r in drawable))
    curves = sorted(dict.fromkeys((r["method"], r.get("recipe", "")) for r in drawable),
                    key=lambda c: (methods.index(c[0]), recipe_order(c[1])))
    base = next((r for r in rows if r["method"] == "base"), None)
    if base and base["perplexity"] is not None and base["untargeted_strict"] is not None:
        # drawn first and hollow, so an edit sitting on the base point stays visible
        ax.plot([base["perplexity"]], [base["untargeted_strict"] * pct], marker="*",
                markerfacecolor="none", markeredgecolor="black", markersize=20,
                linestyle="none", label="base model", zorder=1)
    n_recipes = {m: sum(1 for c in curves if c[0] == m) for m, _ in curves}
    seen = {}
    for i, (method, recipe) in enumerate(curves):
        pts = [r for r in drawable if r["method"] == method and r.get("recipe", "") == recipe]
        label, colour, marker, line = STYLES.get(method, (method, "tab:gray", "P", True))
        k = seen[method] = seen.get(method, -1) + 1
        if n_recipes[method] > 1:  # a method's recipes: shades of its colour, each its own marker
            colour = shade(colour, k / (n_recipes[method] - 1))
            marker = RECIPE_MARKERS[k % len(RECIPE_MARKERS)]
        pts.sort(key=lambda r: r["knob"] if r["knob"] is not None else math.inf)
        xs = [r["perplexity"] for r in pts]
        ys = [r["untargeted_strict"] * pct for r in pts]
        ax.plot(xs, ys, marker=marker, color=colour, label=f"{label}, {recipe}" if recipe else label,
                markersize=7, linestyle="-" if line else "none", alpha=0.85, zorder=2)
        for r, x, y in zip(pts, xs, ys):
            if r["knob"] is not None:  # labels of different methods stacked apart vertically
                ax.annotate(f"{r['knob']:g}", (x, y), textcoords="offset points",
                            xytext=(4, 5 + 9 * (i % 4)), fontsize=7, color=colour)
    log_x_if_wide(ax, [r["perplexity"] for r in rows])
    ax.margins(y=0.15)  # room for the knob labels above the points
    ax.set_xlabel("perplexity on held-out text (lower is better); point labels: the method's "
                  "knob (rho, drop, ratio)")
    ax.set_ylabel("untargeted strict recitation, % (lower is better)")
    title = "Memorization removed vs. cost in perplexity (lower-left is better)"
    if verdict is not None:
        title += (f"\nK-FAC below BSN at matched perplexity (±{verdict['tolerance']:.0%}): "
                  f"{verdict['verdict']}")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    with store.atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    plt.close(fig)


def compare(summary_path, figure=None, table=None) -> dict:
    """`curvmem compare`: rows, matched-perplexity verdict, figure and Markdown table."""
    for path, suffix, flag in ((figure, ".png", "--figure"), (table, ".md", "--table")):
        if path is not None and Path(path).suffix != suffix:
            raise ValueError(f"{flag} {path}: expected a {suffix} file")
    summary = store.read_json(summary_path)
    rows = comparison_rows(summary)
    verdict = matched_perplexity_verdict(rows)
    text = comparison_table(rows, verdict, source=str(summary_path))
    if figure is not None:
        comparison_figure(rows, figure, verdict)
    if table is not None:
        with store.atomic_output(table) as tmp:
            tmp.write_text(text)
    return {"rows": rows, "verdict": verdict, "table": text}

