"""Seconds per training step of the embedded tiny OLMo-2, eager against torch.compile.

The model, batch shape, optimizer and step are train-lm's for the preset (curvmem.presets:
default, 4 layers and Muon; adamw, 8 layers and AdamW); the batches are random tokens, so no
world is needed. Compiling fuses the many small element-wise kernels (RMSNorms, rotary embeddings, SwiGLU)
that take about a fifth of an eager step on CPU; the matrix products are the same either way.

    python benchmarks/bench_train.py                 # docs/benchmarks.md's figures (2 threads)
    python benchmarks/bench_train.py --preset adamw --default-steps 5856
    python benchmarks/bench_train.py --threads 1 --steps 50
    python benchmarks/bench_train.py --ns-dtype bfloat16   # Muon as torch runs it (bf16 iterations)
    python benchmarks/bench_train.py --eager-only --steps 30
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        python benchmarks/bench_train.py     # this CPU run as an AVX2-only one

It prints the CPU's capability and whether it multiplies bf16 natively (AVX512-BF16 or AMX):
Muon's Newton-Schulz iterations run in bf16 only there (curvmem.model.muon), in float32 elsewhere.

Inductor caches compiled kernels (by default under /tmp); the benchmark points it at a fresh
directory, so "first steps" is a cold compilation, as on a fresh machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace

os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench_train_inductor_")

import torch
from bench_default import AVX2_ONLY, cpu_model  # this directory: run as a script

from curvmem import presets
from curvmem.model import muon
from curvmem.model.lm import _compiled, _deterministic, build_model, make_optimizer, train_step


def seconds_per_step(cfg, vocab: int, compile: bool, steps: int, warmup: int, ns_dtype: str):
    """(seconds of the first `warmup` steps, mean seconds per step after them)."""
    model = build_model(cfg, vocab, eos_id=0, pad_id=1)
    model.train()
    opt = make_optimizer(model, cfg)
    if cfg.optimizer == "muon":
        opt.muon.ns_dtype = muon.resolve_ns_dtype(ns_dtype, "cpu")
    forward = _compiled(model) if compile else model
    gen = torch.Generator().manual_seed(0)
    batches = torch.randint(2, vocab, (warmup + steps, cfg.batch_size, cfg.seq_len), generator=gen)
    t0 = time.perf_counter()
    with _deterministic(compile):  # as train_lm runs a compiled step
        for i, batch in enumerate(batches):
            if i == warmup:
                t_warm = time.perf_counter() - t0
                t0 = time.perf_counter()
            train_step(forward, model, opt, batch, batch)
    return t_warm, (time.perf_counter() - t0) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="default", help="default | adamw")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=100, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=3, help="untimed first steps (compilation)")
    p.add_argument("--vocab", type=int, default=1024, help="the default tokenizer's size")
    p.add_argument("--default-steps", type=int, default=2928,
                   help="steps of a training run (default preset: 2928), for the projected "
                   "totals")
    p.add_argument("--ns-dtype", default="auto", help="Muon's Newton-Schulz precision: auto "
                   "(train-lm's choice) | float32 | bfloat16")
    p.add_argument("--eager-only", action="store_true", help="skip the compiled variant")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = replace(presets.train_config(args.preset), threads=args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), preset {args.preset}: "
          f"{cfg.n_layers} layers, {cfg.optimizer}, "
          f"d {cfg.d_model}, MLP {cfg.d_ff}, batch {cfg.batch_size} x {cfg.seq_len} tokens")
    native = muon.cpu_has_native_bf16()
    caps = {k: os.environ[k] for k in AVX2_ONLY if k in os.environ}
    print(f"CPU model: {cpu_model()}" + (f"; capped: {caps}" if caps else ""))
    print(f"CPU: {torch.backends.cpu.get_cpu_capability()}, native bf16 matmul: "
          f"{'yes' if native else 'no (AVX512-BF16/AMX absent: bf16 is emulated)'}"
          + (f"; Muon's Newton-Schulz iterations in "
             f"{str(muon.resolve_ns_dtype(args.ns_dtype, 'cpu')).removeprefix('torch.')}"
             if cfg.optimizer == "muon" else ""))
    results = {}
    for compile in (False,) if args.eager_only else (False, True):
        warm, step = seconds_per_step(cfg, args.vocab, compile, args.steps, args.warmup,
                                      args.ns_dtype)
        results[compile] = step
        name = "compiled" if compile else "eager"
        total = warm + step * (args.default_steps - args.warmup)
        print(f"{name:>8}: {step * 1e3:6.1f} ms/step ({cfg.batch_size * cfg.seq_len / step:,.0f} "
              f"tokens/s); first {args.warmup} steps {warm:5.1f} s; "
              f"{args.default_steps} steps ~ {total / 60:.1f} min")
    if True in results:
        print(f"speed-up per step: {results[False] / results[True]:.2f}x")


if __name__ == "__main__":
    main()
