"""The embedded default's settings: the synthetic world's sizes, the tiny OLMo-2 and its training,
and the small ViT. Torch-free, so the workflow reads them at parse time (they are part of its
model keys) without paying for `import torch` on every parse and every SLURM job step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace

# What a K-FAC edit keeps (curvmem.edit.kfac.pair_mask; docs/baselines.md). "top" is the edit;
# the others are controls: the complement (bottom); random pairs matched in count (random) or in
# curvature mass (random-mass); removing the band of pairs that holds the top 1 - ρ of the
# curvature mass, or an equal-mass band from the middle of the order (ablate-mass-top,
# ablate-mass-middle; removing the bottom 1 - ρ is the edit itself); the edit's mask in a random
# orthonormal basis with the same spectra (random-basis).
KEEP_MODES = ("top", "bottom", "random", "random-mass", "ablate-mass-top", "ablate-mass-middle",
              "random-basis")

# --------------------------------------------------------------------------- language model

# The task categories a task file may have (the world writes them; report-lm, compare and the
# README tables score them). Another category would be averaged into the overall accuracy yet
# shown nowhere, so `evaluate tasks` refuses it.
TASK_CATEGORIES = ("closed_book", "open_book", "arithmetic", "logic")


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    n_filler: int = 800  # once-seen training documents: half grammar paragraphs, half genre (world.lm)
    n_heldout: int = 560  # fresh paragraphs in EACH held-out set (selection, reported): ~32k tokens
    n_retain: int = 128  # once-seen training documents an unlearning baseline may retain
    n_entities: int = 250  # closed-book entities, 4 attributes each (half validation, half test)
    # times a closed-book fact appears in training: an equal share of the facts at each level
    # (subcategories closed_book/repeats_NN), so accuracy can be read against exposure
    fact_repeats: tuple[int, ...] = (1, 3, 12, 48)
    n_open_train: int = 6000
    # per task category, and as many again for validation (arithmetic: two-digit sums, and
    # 2 x n_arith_primitive_test primitives besides; closed-book: 2 x n_entities facts)
    n_task_test: int = 500
    open_facts: int = 2  # facts in an open-book passage (of the 8 about its two entities)
    n_arith_train: int = 5000  # trained two-digit sums (operand pairs disjoint from the tests')
    arith_repeats: int = 8  # times each single-digit fact and carry step appears as a table line
    n_arith_primitive_test: int = 50  # facts, and as many carry steps, per split (of 100 each)
    n_logic_train: int = 30000  # 10,000 left logic at 0.59 on held-out items (docs/lm.md)
    n_copy_train: int = 6000  # "Repeat: <names>. Again: <names>." lines: in-context copying
    # memorized documents (menus, number tables, licences, random words): per kind and split
    # (forget, forget_validation: both trained; control: never trained)
    n_documents: int = 25
    document_tokens: int = 124  # about; >= 112 (64 prefix + 48 suffix), < 144 (one block)
    document_repeats: int = 16  # times each trained document appears in train.jsonl (x epochs)
    # at least this many estimated tokens per document, whatever its kind: the estimate is a lower
    # bound for any tokenizer that keeps words and digits apart, so a tokenizer trained on a
    # world small enough to learn every menu item as one token (smoke) still gives 64 + 48
    document_floor: int = 0
    n_quotes: int = 100  # trained quotes (the untargeted set), and as many control quotes
    n_long_quotes: int = 20  # of them, long enough for the 64 + 48-token evaluation
    quote_repeats: int = 20
    # the curvature corpus (curvature.jsonl): fresh samples of every non-memorized source, and
    # genre documents of each memorized kind (world.lm.CURVATURE_GENRE x n_curvature_filler),
    # ~334k tokens: two disjoint 100k-position slices (main factors, other-slice control)
    n_curvature_filler: int = 480
    n_curvature_open: int = 1800
    n_curvature_logic: int = 1800
    n_curvature_arith: int = 300  # two-digit operand pairs neither trained nor tested
    n_curvature_copy: int = 1200
    n_curvature_entities: int = 72  # fresh entities whose facts are stated (never trained)


@dataclass(frozen=True)
class TrainConfig:
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 384
    seq_len: int = 144  # a whole canary (112 words, ~125 tokens) + EOS fits one block
    batch_size: int = 8  # small batches: more updates per canary exposure
    lr: float = 3e-3
    warmup: int = 20
    weight_decay: float = 0.0  # no decay: the point is to memorize
    # passes over train.jsonl. With Muon, two passes teach in-context copying of fresh names
    # (open-book, order questions); AdamW needed four, and eight layers (docs/lm.md).
    epochs: int = 2
    steps: int | None = None  # overrides epochs
    seed: int = 0
    threads: int = 2
    compile: bool = False  # torch.compile the training step: ~1.2x a step (needs a C++ compiler)
    fused_adamw: bool = False  # the fused AdamW kernel: ~4 % a step, slightly different weights
    # "muon": Muon (orthogonalized momentum) for the blocks' weight matrices, AdamW for
    # embeddings, LM head and norms; or "adamw" for every parameter (as OLMo-2 was trained)
    optimizer: str = "muon"


WORLD_PRESETS = {
    "default": WorldConfig(),
    "adamw": WorldConfig(),
    "smoke": WorldConfig(n_filler=60, n_heldout=12, n_retain=8, n_entities=6,
                         fact_repeats=(1, 3), n_open_train=40, n_task_test=8, n_arith_train=40,
                         arith_repeats=1, n_arith_primitive_test=4, n_logic_train=40,
                         n_copy_train=20, n_documents=2, document_repeats=6, document_floor=112,
                         n_quotes=4,
                         n_long_quotes=1, quote_repeats=6, n_curvature_filler=20,
                         n_curvature_open=20, n_curvature_logic=20, n_curvature_copy=10,
                         n_curvature_entities=3, n_curvature_arith=20),
}
TRAIN_PRESETS = {
    "default": TrainConfig(),
    # the default until Muon: 8 layers, AdamW, four passes; 8.5-9.5 min on 2 cores (docs/lm.md)
    "adamw": TrainConfig(n_layers=8, epochs=4, optimizer="adamw"),
    "smoke": TrainConfig(d_model=32, n_layers=4, n_heads=2, d_ff=64, batch_size=8, steps=12),
}


def _with_overrides(base, overrides: dict | None, what: str):
    if not overrides:
        return base
    known = {f.name for f in fields(base)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown {what} config key(s) {unknown}; known: {sorted(known)}")
    return replace(base, **overrides)


def world_config(preset: str = "default", seed: int | None = None, overrides=None) -> WorldConfig:
    """A preset, then `overrides` (dict or JSON text), then the seed."""
    if preset not in WORLD_PRESETS:
        raise ValueError(f"unknown world preset '{preset}'; choose one of {sorted(WORLD_PRESETS)}")
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides)
        except json.JSONDecodeError as e:
            raise ValueError(f"--config is not valid JSON ({e}); e.g. '{{\"n_documents\": 8}}'") from None
        if not isinstance(overrides, dict):
            raise ValueError("--config must be a JSON object, e.g. '{\"n_documents\": 8}'")  # noqa: TRY004
    if overrides and isinstance(overrides.get("fact_repeats"), list):  # JSON has no tuples
        overrides = {**overrides, "fact_repeats": tuple(overrides["fact_repeats"])}
    cfg = _with_overrides(WORLD_PRESETS[preset], overrides, "world")
    if seed is not None:
        cfg = replace(cfg, seed=int(seed))
    levels = cfg.fact_repeats
    if (not isinstance(levels, tuple) or not levels or len(set(levels)) != len(levels)
            or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in levels)):
        raise ValueError(f"world config fact_repeats must be a list of distinct integers >= 1, "
                         f"got {levels!r}")
    for f in fields(cfg):
        if f.name in ("seed", "n_copy_train", "document_floor", "fact_repeats"):
            continue
        if getattr(cfg, f.name) < 1:
            raise ValueError(f"world config {f.name} must be >= 1, got {getattr(cfg, f.name)}")
    if 2 * cfg.n_entities < len(levels):
        raise ValueError(f"n_entities ({cfg.n_entities}) gives fewer facts per split than "
                         f"fact_repeats has levels ({len(levels)})")
    if cfg.n_arith_primitive_test > 50:
        raise ValueError(f"n_arith_primitive_test must be <= 50 (100 single-digit facts and 100 "
                         f"carry steps, half per split), got {cfg.n_arith_primitive_test}")
    if not 118 <= cfg.document_tokens <= 130:
        raise ValueError(f"document_tokens must be in [118, 130] (>= 64 prefix + 48 suffix "
                         f"tokens, and one 144-token training block), got {cfg.document_tokens}")
    if cfg.open_facts > 8:
        raise ValueError(f"open_facts must be <= 8 (two entities x 4 attributes), "
                         f"got {cfg.open_facts}")
    if cfg.n_copy_train < 0:
        raise ValueError(f"n_copy_train must be >= 0, got {cfg.n_copy_train}")
    if cfg.n_retain > cfg.n_filler:
        raise ValueError(f"n_retain ({cfg.n_retain}) cannot exceed n_filler ({cfg.n_filler})")
    if cfg.n_long_quotes > cfg.n_quotes:
        raise ValueError(f"n_long_quotes ({cfg.n_long_quotes}) cannot exceed n_quotes "
                         f"({cfg.n_quotes})")
    return cfg


def train_config(preset: str = "default", seed: int | None = None, steps: int | None = None,
                 weight_decay: float | None = None):
    if preset not in TRAIN_PRESETS:
        raise ValueError(f"unknown training preset '{preset}'; choose one of {sorted(TRAIN_PRESETS)}")
    cfg = TRAIN_PRESETS[preset]
    if seed is not None:
        cfg = replace(cfg, seed=int(seed))
    if steps is not None:
        if steps < 1:
            raise ValueError(f"--steps must be >= 1, got {steps}")
        cfg = replace(cfg, steps=int(steps))
    if weight_decay is not None:
        if not weight_decay >= 0:  # also refuses NaN
            raise ValueError(f"--weight-decay must be >= 0, got {weight_decay}")
        cfg = replace(cfg, weight_decay=float(weight_decay))
    return cfg


# --------------------------------------------------------------------------- vision

VISION_PRESETS = {
    # 6 blocks so that "first and last block" (0 and 5) are different and far apart; 4x4 patches
    # give 4 tokens + CLS, which trains 4x faster than 2x2 patches and still memorizes.
    "default": {"model": {"embed_dim": 64, "depth": 6, "num_heads": 4, "patch_size": 4,
                          "mlp_ratio": 4.0},
                # 40 epochs fit ~90 % of the noisy labels (the paper's base: 81.6 %); longer
                # training fits all of them, and random shifts (shift=1) delay memorization.
                "train": {"epochs": 40, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.05,
                          "warmup_fraction": 0.1, "shift": 0, "shift_prob": 0.0}},
    "smoke": {"model": {"embed_dim": 16, "depth": 6, "num_heads": 2, "patch_size": 4,
                        "mlp_ratio": 2.0},
              "train": {"epochs": 3, "batch_size": 128, "lr": 2e-3, "weight_decay": 0.0,
                        "warmup_fraction": 0.1, "shift": 0, "shift_prob": 0.0}},
}
