"""Muon: momentum, orthogonalized by a Newton-Schulz iteration, in a precision that suits the device.

The update is torch.optim.Muon's (Nesterov momentum 0.95, Keller Jordan's quintic coefficients,
five iterations, decoupled weight decay, the step scaled to AdamW's update RMS). torch runs the
iterations in bfloat16. On a CPU without native bf16 matrix instructions (no AVX512-BF16, no AMX)
a bf16 matmul is emulated: 11-15x slower than float32 at the tiny LM's 128 x 384 (measured on an
AVX2 EPYC), which made Muon's iterations 84 % of a training step. So `ns_dtype="auto"` iterates
in bf16 where the hardware has it (CUDA, or such a CPU) and in float32 elsewhere; with
`ns_dtype=torch.bfloat16` this optimizer's steps equal torch.optim.Muon's bit for bit (tested).
"""

from __future__ import annotations

import math

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # quintic, maximal slope at zero (Jordan, 2024)
NS_STEPS = 5
NS_EPS = 1e-7


def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX tiles) and torch
    may use AVX-512: `ATEN_CPU_CAPABILITY=avx2` (how one runs a machine as an AVX2-only CPU, e.g.
    to measure such a CPU's figures) makes it False, as on an AVX2-only CPU."""
    cpu = torch.cpu
    hardware = bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                    or getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    return hardware and torch.backends.cpu.get_cpu_capability().startswith(("AVX512", "AMX"))


def resolve_ns_dtype(ns_dtype, device) -> torch.dtype:
    """"auto" -> bfloat16 on CUDA or on a CPU with native bf16, float32 elsewhere; or the dtype
    asked for ("float32", "bfloat16", or a torch.dtype)."""
    if isinstance(ns_dtype, torch.dtype):
        dtype = ns_dtype
    elif ns_dtype == "auto":
        native = torch.device(device).type == "cuda" or cpu_has_native_bf16()
        dtype = torch.bfloat16 if native else torch.float32
    else:
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                 "float64": torch.float64}.get(ns_dtype)
    if dtype not in (torch.float32, torch.bfloat16, torch.float64):
        raise ValueError(f"Muon ns_dtype must be auto, float32, bfloat16 or float64, "
                         f"got {ns_dtype!r}")
    return dtype


def newton_schulz(update: torch.Tensor, dtype: torch.dtype, steps: int = NS_STEPS,
                  eps: float = NS_EPS) -> torch.Tensor:
    """An approximate polar factor U Vᵀ of `update` (singular values land in about (0.5, 1.5)),
    computed in `dtype`; the same operations, in the same order, as torch.optim.Muon's."""
    a, b, c = NS_COEFFICIENTS
    x = update.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:  # iterate on the wide orientation: the Gram matrix is the smaller one
        x = x.T
    x = x / x.norm().clamp(min=eps)  # Frobenius norm >= spectral norm: singular values <= 1
    for _ in range(steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, poly, x, beta=a)
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """Muon for 2-D weight matrices (hidden layers only; embeddings and heads want AdamW)."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.95,
                 nesterov: bool = True, ns_dtype="auto"):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum,
                                  "nesterov": nesterov})
        devices = {p.device for g in self.param_groups for p in g["params"]}
        for g in self.param_groups:
            for p in g["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon optimizes 2-D matrices only, got shape {tuple(p.shape)}")
        self.ns_dtype = resolve_ns_dtype(ns_dtype, next(iter(devices), torch.device("cpu")))

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = newton_schulz(update, self.ns_dtype)
                # "match_rms_adamw" (Moonshot): the update's RMS matches AdamW's, so AdamW's
                # learning rate and schedule carry over unchanged
                adjusted_lr = lr * (0.2 * math.sqrt(max(p.shape)))
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-adjusted_lr)
