"""Throughput of curvmem's factor collector against a straightforward hook collector.

The straightforward collector is the approach of the paper's own code: every parameter requires
grad, the loss is backpropagated all the way to the embeddings (weight gradients included), and
gate_proj and up_proj each accumulate their own A. curvmem's collector freezes the weights, starts
the graph at the lowest requested block, computes activation gradients only, and shares one A
between gate_proj and up_proj. Both use the sampled Fisher with the same per-sequence seeds, so
their factors must agree to float32 rounding.

    python benchmarks/bench_collect.py                      # docs/benchmarks.md's figures (CPU)
    python benchmarks/bench_collect.py --device cuda        # adds the FLOP-floor comparison
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from curvmem.factors import LMTask, batched, collect, sample_targets
from curvmem.model import mlp_modules


def tiny_olmo2(layers, d, ff, vocab, device):
    from transformers import Olmo2Config, Olmo2ForCausalLM

    torch.manual_seed(0)
    cfg = Olmo2Config(vocab_size=vocab, hidden_size=d, intermediate_size=ff,
                      num_hidden_layers=layers, num_attention_heads=max(1, d // 64),
                      num_key_value_heads=max(1, d // 64), max_position_embeddings=4096,
                      pad_token_id=None, bos_token_id=None, eos_token_id=0)
    return Olmo2ForCausalLM(cfg).to(device).eval()


def straightforward_collect(model, batches, modules, seed, autocast):
    """Hooks on every module, full backward with weight gradients, one A per module."""
    device = next(model.parameters()).device
    A = {(m.layer, m.name): torch.zeros(m.d_in, m.d_in, device=device) for m in modules}
    G = {(m.layer, m.name): torch.zeros(m.d_out, m.d_out, device=device) for m in modules}
    n = 0
    handles = []
    for m in modules:
        key = (m.layer, m.name)

        def fwd(mod, args, out, key=key):
            a = args[0].detach()[:, :-1].reshape(-1, args[0].shape[-1]).float()
            A[key].addmm_(a.T, a)

        def bwd(mod, grad_in, grad_out, key=key):
            g = grad_out[0][:, :-1].reshape(-1, grad_out[0].shape[-1]).float()
            G[key].addmm_(g.T, g)

        handles += [m.module.register_forward_hook(fwd), m.module.register_full_backward_hook(bwd)]
    for p in model.parameters():
        p.requires_grad_(True)
    index = 0
    for batch in batches:
        batch = batch.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(input_ids=batch).logits[:, :-1].float()
        targets = sample_targets(logits.detach(), seed, index)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               reduction="sum")
        model.zero_grad(set_to_none=True)
        loss.backward()
        n += batch.shape[0] * (batch.shape[1] - 1)
        index += batch.shape[0]
    for h in handles:
        h.remove()
    for p in model.parameters():
        p.requires_grad_(False)
    return {k: v / n for k, v in A.items()}, {k: v / n for k, v in G.items()}


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def bf16_matmul_tflops(device, n=8192, reps=20):
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def flops_per_token(args) -> dict:
    """Matmul FLOPs per position of each collector (elementwise work is not counted).

    Both run the same forward. The straightforward collector backpropagates through every block
    with weight gradients (about twice the forward) and forms six full covariances per layer;
    curvmem backpropagates activation gradients only, through the LM head, the blocks above the
    lowest requested one and that block's down_proj, and forms five covariances, each on its block
    upper triangle (`curvmem.factors.add_gram_`).
    """
    from curvmem.factors import GRAM_BLOCK

    d, ff, L, V = args.d, args.ff, args.layers, args.vocab
    block = 2 * (4 * d * d + 3 * d * ff)  # attention projections + gated MLP
    attn = 2 * 2 * args.seq_len * d // 2  # scores and weighted sum, causal: half the positions
    head = 2 * d * V
    forward = L * (block + attn) + head
    k = len(args.collect_layers)

    def gram(n):  # FLOPs of xᵀx per row on the blocks on and above the diagonal
        blocks = -(-n // GRAM_BLOCK)
        return 2 * n * n * (blocks + 1) / (2 * blocks)

    straightforward = forward + 2 * forward + k * 2 * (3 * d * d + 3 * ff * ff)
    above = L - min(args.collect_layers) - 1
    # input gradients only: the projections cost one forward, attention two (dQ, dK, dV, dP)
    kept = head + above * (block + 2 * attn) + 2 * d * ff
    curvmem = forward + kept + k * (2 * gram(d) + 3 * gram(ff))
    return {"straightforward": straightforward, "curvmem": curvmem}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--ff", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--collect-layers", type=int, nargs="+", default=[5, 6])
    p.add_argument("--tokens", type=int, default=65536)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    autocast = device.type == "cuda"
    model = tiny_olmo2(args.layers, args.d, args.ff, args.vocab, device)
    n_seq = args.tokens // args.seq_len
    tokens = torch.randint(0, args.vocab, (n_seq, args.seq_len),
                           generator=torch.Generator().manual_seed(0))
    batches = batched(tokens, args.batch_size)
    modules = mlp_modules(model, args.collect_layers)
    n_pos = n_seq * (args.seq_len - 1)

    ours, t_ours = timed(lambda: collect(model, batches, modules, LMTask(), fisher="sampled",
                                         seed=0, autocast=autocast), device)
    (A_ref, G_ref), t_ref = timed(
        lambda: straightforward_collect(model, batches, modules, 0, autocast), device)
    err = 0.0
    for k in A_ref:
        for mine, ref in ((ours.A[k], A_ref[k]), (ours.G[k], G_ref[k])):
            err = max(err, ((mine - ref).abs().max() / ref.abs().max()).item())
    print(f"model: OLMo-2 {args.layers} layers, d={args.d}, ff={args.ff}, vocab={args.vocab}; "
          f"layers {args.collect_layers}; {n_seq} x {args.seq_len} tokens; device {device}; "
          f"threads {torch.get_num_threads()}")
    print(f"curvmem collector:         {n_pos / t_ours:10.0f} tok/s  ({t_ours:.2f} s)")
    print(f"straightforward collector: {n_pos / t_ref:10.0f} tok/s  ({t_ref:.2f} s)")
    print(f"speed-up: {t_ref / t_ours:.2f}x; max relative difference of factors: {err:.2e}")
    flops = flops_per_token(args)
    print(f"matmul work per position: curvmem {flops['curvmem'] / 1e6:.1f} MFLOP, straightforward "
          f"{flops['straightforward'] / 1e6:.1f} MFLOP -> FLOP ratio "
          f"{flops['straightforward'] / flops['curvmem']:.2f}x; achieved "
          f"{flops['curvmem'] * n_pos / t_ours / 1e9:.0f} and "
          f"{flops['straightforward'] * n_pos / t_ref / 1e9:.0f} GFLOP/s")
    if device.type == "cuda":
        tflops = bf16_matmul_tflops(device)
        floor = flops["curvmem"] * n_pos / (tflops * 1e12)
        print(f"measured bf16 matmul rate: {tflops:.0f} TFLOP/s; FLOP floor {floor:.3f} s "
              f"-> {n_pos / floor:.0f} tok/s; curvmem at {100 * floor / t_ours:.1f} % of the floor")


if __name__ == "__main__":
    main()
