"""The tiny OLMo-2 of the embedded world: its BPE tokenizer, the model, the optimizers (AdamW, or
Muon for hidden matrices with AdamW for the rest) and the training loop, on CPU.

The world it trains on is curvmem.world.lm; the presets are curvmem.presets.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch

from curvmem import io
from curvmem.io import atomic_dir, read_jsonl, write_checksum
from curvmem.model.load import load_tokenizer
from curvmem.model.muon import Muon
from curvmem.presets import TrainConfig

# --------------------------------------------------------------------------- tokenizer

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def train_tokenizer(corpus, out, vocab_size: int = 1024) -> dict:
    """Byte-level BPE on the `text` of `corpus` (JSONL); digits split one by one (arithmetic).

    Saved as a transformers fast tokenizer, so AutoTokenizer.from_pretrained(out) loads it.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise ValueError(f"--vocab-size must be >= 300 (256 bytes + specials + merges), "
                         f"got {vocab_size}")
    texts = [r["text"] for r in read_jsonl(corpus, ("text",))]
    t0 = time.perf_counter()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)
    with atomic_dir(out) as tmp:
        fast.save_pretrained(str(tmp))
    seconds = round(time.perf_counter() - t0, 3)
    io.write_cost(out, {"seconds": seconds})  # beside the tokenizer directory
    return {"vocab_size": fast.vocab_size, "seconds": seconds}


# --------------------------------------------------------------------------- the tiny model


def build_model(cfg: TrainConfig, vocab_size: int, eos_id: int, pad_id: int):
    from transformers import Olmo2Config, Olmo2ForCausalLM

    torch.manual_seed(cfg.seed)
    config = Olmo2Config(vocab_size=vocab_size, hidden_size=cfg.d_model,
                         intermediate_size=cfg.d_ff, num_hidden_layers=cfg.n_layers,
                         num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_heads,
                         max_position_embeddings=max(512, cfg.seq_len), pad_token_id=pad_id,
                         bos_token_id=None, eos_token_id=eos_id, tie_word_embeddings=False)
    return Olmo2ForCausalLM(config)


def pack_documents(docs: list[list[int]], seq_len: int, eos_id: int, pad_id: int) -> torch.Tensor:
    """Documents (+ EOS) packed into [n, seq_len] blocks without splitting any that fits.

    A document starts at the beginning of a block whenever it would not fit in the rest of the
    current one, so a canary is always trained with its whole 64-token prefix in context, as it
    is queried. Longer documents continue in the next block. The tail is `pad_id` (no loss).
    """
    blocks, current = [], []
    for doc in docs:
        doc = doc + [eos_id]
        if current and len(current) + len(doc) > seq_len:
            blocks.append(current + [pad_id] * (seq_len - len(current)))
            current = []
        while len(doc) > seq_len:
            blocks.append(doc[:seq_len])
            doc = doc[seq_len:]
        current += doc
    if current:
        blocks.append(current + [pad_id] * (seq_len - len(current)))
    return torch.tensor(blocks, dtype=torch.long)


def _compiled(model):
    """torch.compile(model), after checking for the C++ compiler Inductor's CPU kernels need.

    Compiling fuses the many small element-wise ops of a tiny OLMo-2 (RMSNorms, rotary, SwiGLU),
    about a fifth of a training step on CPU; benchmarks/bench_train.py measures it.
    """
    from torch._inductor import cpp_builder

    try:
        cxx = cpp_builder.get_cpp_compiler()
    except Exception as e:  # noqa: BLE001 - Inductor raises several kinds when none is found
        raise ValueError(f"compile: true needs a C++ compiler for torch.compile ({e}); install "
                         f"g++ or clang++, or train with compile: false (`--no-compile`)") from None
    if shutil.which(cxx) is None and not Path(cxx).is_file():
        raise ValueError(f"compile: true needs the C++ compiler '{cxx}' for torch.compile; install "
                         f"it, or train with compile: false (`--no-compile`)")
    return torch.compile(model)


class MuonWithAdamW:
    """Muon for the transformer blocks' weight matrices, AdamW for everything else.

    Muon orthogonalizes each matrix's momentum (Newton-Schulz), which suits hidden matrices only;
    embeddings, the LM head and the norm weights keep AdamW, as Muon's authors advise. Muon's
    step is scaled to AdamW's update RMS ("match_rms_adamw"), so both share one learning rate and
    train_lm's schedule sets it on every group alike. The Newton-Schulz iterations run in bf16
    where the hardware multiplies bf16 natively and in float32 elsewhere (curvmem.model.muon).
    """

    def __init__(self, model, cfg: TrainConfig):
        hidden, rest = [], []
        for name, p in model.named_parameters():
            (hidden if p.ndim == 2 and ".layers." in name else rest).append(p)
        self.muon = Muon(hidden, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.optimizers = [
            self.muon,
            torch.optim.AdamW(rest, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0,
                              fused=cfg.fused_adamw or None)]
        self.param_groups = [g for opt in self.optimizers for g in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)


def make_optimizer(model, cfg: TrainConfig):
    """cfg.optimizer "adamw": AdamW (betas 0.9, 0.95), weight decay on matrices only, fused when
    the config asks. "muon": MuonWithAdamW."""
    if cfg.optimizer == "muon":
        return MuonWithAdamW(model, cfg)
    if cfg.optimizer != "adamw":
        raise ValueError(f"unknown optimizer '{cfg.optimizer}'; choose adamw or muon")
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(0.9, 0.95), fused=cfg.fused_adamw or None)


def train_step(forward, model, opt, input_ids, labels) -> torch.Tensor:
    """One optimizer step (gradients clipped to norm 1) through `forward`, the model or its
    compiled wrapper; returns the loss."""
    loss = forward(input_ids=input_ids, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


@contextmanager
def _deterministic(on: bool):
    """torch.use_deterministic_algorithms(True) inside the block when `on`; the caller's setting
    is restored after."""
    if not on:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def train_lm(world_dir, tokenizer_dir, out, cfg: TrainConfig, progress: bool = True) -> dict:
    """Train the tiny OLMo-2 on world_dir/train.jsonl; save model + tokenizer to `out`. Returns
    the training log (`out`/train_log.json) and its "seconds", which go to the cost file beside
    `out` (`<out>.cost.json`): a measured time is no part of the model."""
    from tqdm import tqdm

    train_path = Path(world_dir) / "train.jsonl"
    rows = read_jsonl(train_path, ("text",))
    if not (Path(tokenizer_dir) / "tokenizer.json").is_file():
        raise ValueError(f"{tokenizer_dir}: no tokenizer.json; run `curvmem tokenizer` first")
    tokenizer = load_tokenizer(tokenizer_dir)
    if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
        raise ValueError(f"{tokenizer_dir}: the tokenizer needs eos and pad tokens")
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    ids = tokenizer([r["text"] for r in rows], add_special_tokens=False)["input_ids"]
    blocks = pack_documents(ids, cfg.seq_len, tokenizer.eos_token_id, tokenizer.pad_token_id)
    steps_per_epoch = math.ceil(len(blocks) / cfg.batch_size)
    steps = cfg.steps or cfg.epochs * steps_per_epoch

    model = build_model(cfg, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    io.note_model_ready()
    model.train()
    opt = make_optimizer(model, cfg)
    forward = _compiled(model) if cfg.compile else model

    def lr_at(step):  # linear warmup, cosine decay to 10 %
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        frac = (step - cfg.warmup) / max(1, steps - cfg.warmup)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.empty(0, dtype=torch.long)
    losses = []
    bar = tqdm(range(steps), desc="train-lm", disable=not progress, mininterval=1.0)
    # Inductor's CPU kernels accumulate some gradients with atomic adds, so a compiled step on
    # 2+ threads differs run to run unless deterministic algorithms are asked for (tested).
    with _deterministic(cfg.compile):
        for step in bar:
            if len(order) < cfg.batch_size:  # reshuffle the blocks each epoch
                order = torch.cat([order, torch.randperm(len(blocks), generator=gen)])
            batch, order = blocks[order[: cfg.batch_size]], order[cfg.batch_size:]
            labels = batch.masked_fill(batch == tokenizer.pad_token_id, -100)
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            loss = train_step(forward, model, opt, batch, labels)
            losses.append(round(loss.item(), 4))
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    seconds = round(time.perf_counter() - t0, 3)  # a cost: beside the model, not in its log
    log = {"config": asdict(cfg), "steps": steps, "blocks": len(blocks),
           "tokens_per_step": cfg.batch_size * cfg.seq_len, "final_loss": losses[-1],
           "losses": losses, "parameters": sum(p.numel() for p in model.parameters())}
    if isinstance(opt, MuonWithAdamW):  # the trained weights depend on it (curvmem.model.muon)
        log["muon_ns_dtype"] = str(opt.muon.ns_dtype).removeprefix("torch.")
    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
        for weights in tmp.glob("*.safetensors"):  # load_model verifies them
            write_checksum(weights)
    io.write_cost(out, {"seconds": seconds})
    return {**log, "seconds": seconds}
