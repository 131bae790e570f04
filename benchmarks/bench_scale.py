"""The 1B path at full width: time and peak memory of each CLI step on an OLMo-2-1B-shaped model.

A randomly initialised model of OLMo-2-0425-1B's shape (16 layers, d 2048, MLP 8192, vocab 100352,
16 heads; built from Olmo2Config, nothing downloaded) goes through the same commands a real run
uses, each in its own process so its peak RSS is its own:

    collect     a few thousand tokens of random ids, ONE layer, gate_proj + up_proj
    eigen       float64 eigh of A (2048²) and G (8192², once per module)
    edit        K-FAC, that layer, rho 0.6
    perplexity  the edited model on held-out text
    (bsn)       with --bsn: one BalancedSubnet epoch on a few sequences
    (7B eigen)  with --with-7b-eigen: eigh of one 7B-shaped layer (A 4096², G 11008²)

and the collection is projected to 20M tokens on an H100 from FLOPs. Random weights cost what
trained ones cost, except eigh, whose divide-and-conquer deflates more on the fast-decaying
spectra of real factors (so these eigen times are an upper bound).

    python benchmarks/bench_scale.py                       # CPU, the README's figures (~10 min)
    python benchmarks/bench_scale.py --tiny                # a seconds-long check of the script
    python benchmarks/bench_scale.py --device cuda --bsn   # benchmarks/gpu_check.sh runs this
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_collect import flops_per_token  # the collector's FLOP model, in one place

SHAPES = {  # layers, d, ff, vocab, heads
    "1b": (16, 2048, 8192, 100352, 16),
    "7b": (32, 4096, 11008, 100352, 32),
    "tiny": (4, 64, 256, 1024, 4),
}
H100_BF16_DENSE = 989e12  # FLOP/s, H100 SXM bf16 dense peak
ASSUMED_MFU = 0.40  # fraction of that peak a collect step reaches (matmul-heavy, 512-token rows)
MODULES = "mlp.gate_proj,mlp.up_proj"


# --------------------------------------------------------------------------- building the inputs


def build(out: Path, shape: str, tokens: int, seq_len: int) -> None:
    """Random OLMo-2 of `shape` (saved in bf16, as OLMo-2 checkpoints are), a BPE tokenizer,
    random token ids for collection, and grammar text for perplexity and BSN."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer, Olmo2Config, Olmo2ForCausalLM

    from curvmem.model.lm import train_tokenizer
    from curvmem.world.lm import paragraph

    layers, d, ff, vocab, heads = SHAPES[shape]
    rng = random.Random(0)
    texts = [paragraph(rng, (6, 10)) for _ in range(200)]
    (out / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    for name, part in (("forget", texts[:16]), ("retain", texts[16:32])):  # BSN: 4 steps
        (out / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in part))
    train_tokenizer(out / "texts.jsonl", out / "tok", 512)
    tok = AutoTokenizer.from_pretrained(out / "tok")
    torch.manual_seed(0)
    cfg = Olmo2Config(vocab_size=vocab, hidden_size=d, intermediate_size=ff,
                      num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=heads, max_position_embeddings=4096,
                      pad_token_id=tok.pad_token_id, bos_token_id=None,
                      eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    Olmo2ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    ids = np.random.default_rng(0).integers(0, vocab, (tokens // seq_len, seq_len))
    np.save(out / "ids.npy", ids.astype(np.int64))


def write_random_factors(path: Path, d_in: int, d_out: int) -> None:
    """A factors file of random PSD matrices (for the 7B eigen step: no 7B model needed)."""
    import numpy as np

    from curvmem import schema

    rng = np.random.default_rng(0)

    def psd(n):  # a symmetric Wigner matrix shifted past its spectral edge: PSD, cheap to make
        r = rng.standard_normal((n, n), dtype=np.float32)
        m = (r + r.T) / 2
        m[np.diag_indices(n)] += 3 * np.sqrt(n)
        return m

    attrs = {"model_id": "random-7b-layer", "model_fingerprint": "0" * 16, "fisher": "sampled",
             "n_tokens": 1, "seq_len": 512, "corpus_fingerprint": "random", "seed": 0}
    schema.write_layer(path, "factors", 0, {"mlp.up_proj": {"A": psd(d_in), "G": psd(d_out)}},
                       attrs)


# --------------------------------------------------------------------------- timing a step


def run_step(name: str, argv: list[str], results: list) -> None:
    """Run one step in a child process; record its wall time and its own peak RSS."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stdout.write(out[-4000:])
        raise SystemExit(f"step {name} failed (exit {proc.returncode})")
    rss_gb = usage.ru_maxrss / 2**20  # KB on Linux
    results.append({"step": name, "seconds": seconds, "peak_rss_gb": rss_gb, "output": out})
    print(f"{name:<12} {seconds:8.1f} s   peak RSS {rss_gb:6.2f} GB", flush=True)


def cli(*args) -> list[str]:
    """argv of a `curvmem` command, run by this interpreter."""
    code = "import sys; from curvmem.cli import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, *map(str, args)]


def this(function: str, *args) -> list[str]:
    """argv that runs one of this file's functions in a child process (see `internal`)."""
    return [sys.executable, str(Path(__file__).resolve()), "--internal", function, *map(str, args)]


def internal(argv: list[str]) -> None:
    function, args = argv[0], argv[1:]
    if function == "build":
        build(Path(args[0]), args[1], int(args[2]), int(args[3]))
    elif function == "collect_rate":
        collect_rate(Path(args[0]), int(args[1]), args[2], int(args[3]), Path(args[4]))
    else:
        raise SystemExit(f"unknown internal step {function}")


# --------------------------------------------------------------------------- collection rate


def collect_rate(work: Path, layer: int, device: str, batch_size: int, out: Path) -> None:
    """`factors.collect` alone (model loaded as `curvmem collect` loads it, one warm-up batch,
    CUDA synchronised), so the rate excludes start-up; written to `out` as JSON."""
    import numpy as np
    import torch

    from curvmem.factors import LMTask, batched, collect
    from curvmem.model import load_model, mlp_modules

    model = load_model(work / "model", dtype=torch.bfloat16 if device.startswith("cuda")
                       else None, device=device)
    ids = torch.as_tensor(np.load(work / "ids.npy"))
    batches = batched(ids, batch_size)
    modules = mlp_modules(model, [layer], MODULES.split(","))
    collect(model, batches[:1], modules, LMTask())  # warm-up: kernels, allocator
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    collect(model, batches, modules, LMTask())
    sync()
    seconds = time.perf_counter() - t0
    result = {"positions": ids.shape[0] * (ids.shape[1] - 1), "seconds": seconds}
    if device.startswith("cuda"):
        from bench_collect import bf16_matmul_tflops

        result["bf16_matmul_tflops"] = bf16_matmul_tflops(torch.device(device))
        result["gpu"] = torch.cuda.get_device_name(device)
    out.write_text(json.dumps(result))


# --------------------------------------------------------------------------- projection


def project(shape: str, layers: list[int], seq_len: int, tokens: float = 20e6) -> dict:
    n_layers, d, ff, vocab, _ = SHAPES[shape]
    ns = argparse.Namespace(d=d, ff=ff, layers=n_layers, vocab=vocab, seq_len=seq_len,
                            collect_layers=layers)
    flops = flops_per_token(ns)["curvmem"]
    seconds = flops * tokens / (H100_BF16_DENSE * ASSUMED_MFU)
    return {"flops_per_token": flops, "seconds": seconds}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    p.add_argument("--tiny", action="store_true", help="shape tiny, few tokens: check the script")
    p.add_argument("--layer", type=int, default=None, help="layer to collect and edit (middle)")
    p.add_argument("--tokens", type=int, default=2048, help="collection tokens")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--ppl-tokens", type=int, default=448, help="perplexity tokens (112-blocks)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--edit-dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="curvmem edit --dtype (auto: the checkpoint's bf16)")
    p.add_argument("--eval-dtype", default=None, choices=["float32", "bfloat16"],
                   help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--bsn", action="store_true", help="also one BalancedSubnet epoch")
    p.add_argument("--with-7b-eigen", action="store_true",
                   help="also eigh one 7B-shaped layer (A 4096², G 11008²; ~10 min on 2 cores)")
    p.add_argument("--work", default=None, help="working directory (default: a temp dir)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args()
    if args.tiny:
        args.shape, args.tokens, args.seq_len, args.ppl_tokens = "tiny", 256, 64, 224
    n_layers, d, ff, vocab, heads = SHAPES[args.shape]
    layer = n_layers // 2 if args.layer is None else args.layer
    eval_dtype = args.eval_dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"OLMo-2 {args.shape}-shaped: {n_layers} layers, d {d}, MLP {ff}, vocab {vocab}, "
          f"{heads} heads; layer {layer} ({MODULES}); {args.tokens} tokens x seq {args.seq_len}; "
          f"device {args.device}; {os.cpu_count()} CPUs; work dir {work}", flush=True)
    results: list = []
    run_step("build", this("build", work, args.shape, args.tokens, args.seq_len), results)
    m = work / "model"
    run_step("collect", cli("collect", "--model", m, "--data", work / "ids.npy", "--layers",
                            layer, "--modules", MODULES, "--tokens", args.tokens, "--seq-len",
                            args.seq_len, "--batch-size", args.batch_size, "--device",
                            args.device, "--out", work / "factors"), results)
    run_step("collect-rate", this("collect_rate", work, layer, args.device, args.batch_size,
                                  work / "rate.json"), results)
    run_step("eigen", cli("eigen", "--factors", work / f"factors/layer_{layer}.nc", "--out",
                          work / f"eigen/layer_{layer}.nc", "--device", args.device), results)
    run_step("edit", cli("edit", "--model", m, "--eigen", work / "eigen", "--layers", layer,
                         "--modules", MODULES, "--rho", "0.6", "--dtype", args.edit_dtype,
                         "--out", work / "kfac.safetensors"), results)
    run_step("perplexity", cli("evaluate", "perplexity", "--model", m, "--edit",
                               work / "kfac.safetensors", "--data", work / "texts.jsonl",
                               "--out", work / "ppl.json", "--max-tokens", args.ppl_tokens,
                               "--batch-size", 4, "--device", args.device, "--dtype",
                               eval_dtype, "--threads", os.cpu_count()), results)
    if args.bsn:
        run_step("bsn", cli("baseline", "bsn", "--model", m, "--forget", work / "forget.jsonl",
                            "--retain", work / "retain.jsonl", "--epochs", 1, "--batch-size", 8,
                            "--seq-len", 128, "--device", args.device,
                            "--out", work / "bsn.safetensors"), results)
    if args.with_7b_eigen:
        _, d7, ff7, _, _ = SHAPES["tiny" if args.tiny else "7b"]
        write_random_factors(work / "f7b/layer_0.nc", d7, ff7)
        run_step("eigen 7B", cli("eigen", "--factors", work / "f7b/layer_0.nc", "--out",
                                 work / "e7b/layer_0.nc", "--device", args.device), results)

    rate = json.loads((work / "rate.json").read_text())
    proj = project(args.shape, [layer], args.seq_len)
    tok_s = rate["positions"] / rate["seconds"]
    print(f"\ncollect (factors.collect alone, after a warm-up batch): {rate['positions']} "
          f"positions in {rate['seconds']:.2f} s = {tok_s:.0f} tok/s; "
          f"{proj['flops_per_token'] / 1e9:.2f} GFLOP/token (the curvmem collector's matmul "
          f"FLOPs, benchmarks/bench_collect.py) -> {tok_s * proj['flops_per_token'] / 1e12:.2f} "
          "TFLOP/s achieved")
    if "bf16_matmul_tflops" in rate:
        floor = rate["bf16_matmul_tflops"] * 1e12 / proj["flops_per_token"]
        print(f"{rate['gpu']}: measured bf16 matmul {rate['bf16_matmul_tflops']:.0f} TFLOP/s -> "
              f"FLOP floor {floor:.0f} tok/s; collect at {100 * tok_s / floor:.1f} % of it")
    print(f"projection, 20M tokens on one H100 (bf16 dense peak {H100_BF16_DENSE / 1e12:.0f} "
          f"TFLOP/s, assumed {ASSUMED_MFU:.0%} utilisation):")
    for shape, layers in (("1b", [layer if args.shape == "1b" else 8]), ("1b", list(range(16))),
                          ("7b", [23, 24, 25])):
        pr = project(shape, layers, args.seq_len)
        print(f"  {shape} layers {layers if len(layers) < 5 else f'0-{layers[-1]}'}: "
              f"{pr['flops_per_token'] / 1e9:6.2f} GFLOP/token -> {pr['seconds'] / 60:6.1f} min")
    ppl = json.loads((work / "ppl.json").read_text())
    print(f"perplexity of the edited random model: {ppl['perplexity']:.0f} "
          f"({ppl['n_tokens']} tokens; random weights: meaningless, only the cost counts)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "steps": [
            {k: v for k, v in r.items() if k != "output"} for r in results],
            "projection": proj, "collect_rate": rate}, indent=1) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--internal"]:
        internal(sys.argv[2:])
    else:
        main()
