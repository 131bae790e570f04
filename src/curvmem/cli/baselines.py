"""CLI: `curvmem baseline bsn` (BalancedSubnet) and `curvmem compare` (all methods side by side)."""

from __future__ import annotations

import argparse
import json

from curvmem.cli.common import add_model_args, check_memorized_file, check_seq_len


def register(sub, evaluate_sub) -> None:
    baseline = sub.add_parser("baseline", help="baseline memorization edits (BalancedSubnet)",
                              description="Baselines written in the same edit format as "
                              "`curvmem edit`, so `evaluate --edit` and report-lm take them.")
    baseline_sub = baseline.add_subparsers(dest="baseline", metavar="BASELINE", required=True)

    from curvmem.edit.bsn import BSNConfig

    d = BSNConfig()
    p = baseline_sub.add_parser(
        "bsn", help="BalancedSubnet: learn a sparse mask over MLP weights (Sakarvadia et al.)",
        description="Learn a score per MLP weight of every block (weights frozen); the mask "
        "prunes the fraction --ratio with the smallest |score|. Loss per batch: "
        "-(1-alpha)*CE(forget) + alpha*CE(retain), SGD momentum 0.9, weight decay 5e-4. "
        "Defaults are the paper's best OLMo-2 setting.")
    add_model_args(p)
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer directory (default: the --model directory)")
    p.add_argument("--forget", required=True,
                   help="JSONL with a \"text\" field: the memorized sequences to forget")
    p.add_argument("--retain", required=True,
                   help="JSONL with a \"text\" field: clean text whose loss is kept low")
    p.add_argument("--ratio", type=float, default=d.ratio,
                   help=f"fraction of each MLP matrix to prune, in (0, 1) (default {d.ratio})")
    p.add_argument("--alpha", type=float, default=d.alpha,
                   help=f"weight of the retain loss, in [0, 1] (default {d.alpha})")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"default {d.epochs}")
    p.add_argument("--lr", type=float, default=d.lr, help=f"SGD learning rate (default {d.lr})")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"sequences per batch, forget and retain mixed (default {d.batch_size})")
    p.add_argument("--seq-len", type=int, default=128,
                   help="tokens per sequence; longer texts are cut into chunks (default 128)")
    gate = p.add_mutually_exclusive_group()
    gate.add_argument("--include-gate", dest="include_gate", action="store_true", default=True,
                      help="gated MLPs: mask gate_proj too (default)")
    gate.add_argument("--no-gate", dest="include_gate", action="store_false",
                      help="gated MLPs: leave gate_proj unmasked")
    p.add_argument("--seed", type=int, default=d.seed, help="score init and batch order")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    p.add_argument("--out", required=True, help="edit file, FILE.safetensors (+ FILE.json)")
    p.set_defaults(func=_bsn)

    p = sub.add_parser(
        "compare", help="K-FAC vs SVD vs BalancedSubnet (and controls): table and Pareto figure",
        description="Read results/lm_summary.json (from report-lm); write a Table-1-shaped "
        "Markdown table (the paper's numbers beside) and a figure of untargeted strict "
        "recitation against perplexity, one curve per method. States whether K-FAC's untargeted "
        "strict recitation is lower than BSN's at matched perplexity (within 5 %).")
    p.add_argument("--summary", required=True, help="lm_summary.json written by report-lm")
    p.add_argument("--figure", required=True, help="output PNG")
    p.add_argument("--table", default=None, help="output Markdown table (default: stdout only)")
    p.set_defaults(func=_compare)


def _bsn(args: argparse.Namespace) -> None:
    from curvmem.edit.bsn import BSNConfig, run_bsn
    from curvmem.io import read_cost

    config = BSNConfig(ratio=args.ratio, alpha=args.alpha, epochs=args.epochs, lr=args.lr,
                       batch_size=args.batch_size, seed=args.seed,
                       include_gate=args.include_gate)
    check_seq_len(args.model, args.seq_len)
    check_memorized_file(args.forget, "--forget")
    meta = run_bsn(args.model, args.forget, args.retain, args.out, config=config,
                   seq_len=args.seq_len, tokenizer_path=args.tokenizer,
                   trust_remote_code=args.trust_remote_code, device=args.device)
    pruned = sum(s["pruned"] for s in meta["modules"].values())
    total = sum(s["total"] for s in meta["modules"].values())
    print(json.dumps({"out": args.out, "modules": len(meta["modules"]), "pruned": pruned,
                      "total": total, **(read_cost(args.out) or {}),
                      "last_epoch": meta["history"][-1]}))


def _compare(args: argparse.Namespace) -> None:
    from curvmem.report.compare import compare

    result = compare(args.summary, figure=args.figure, table=args.table)
    print(result["table"], end="")
