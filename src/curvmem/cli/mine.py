"""CLI: mine, the memorized windows of a corpus (the set `evaluate memorization` reads)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from curvmem.cli.common import add_model_args
from curvmem.io import cost


def _check_args(args) -> None:
    """Every argument checked before the model is loaded or anything is written."""
    from curvmem.evaluate.mine import check_lengths

    outs = [args.out] + ([args.validation_out] if args.validation_out else [])
    for out in outs:
        if Path(out).suffix != ".jsonl":
            raise ValueError(f"output files must be .jsonl, got {out}")
    if args.validation_out and Path(args.validation_out).resolve() == Path(args.out).resolve():
        raise ValueError("--validation-out must differ from --out")
    if args.validation_fraction is not None and not args.validation_out:
        raise ValueError("--validation-fraction needs --validation-out")
    if args.validation_out and not 0.0 < (args.validation_fraction or 0.5) < 1.0:
        raise ValueError(f"--validation-fraction must be in (0, 1), got {args.validation_fraction}")
    check_lengths(args.prefix_len, args.suffix_len, args.stride, args.batch_size)
    if args.tokens is not None and args.tokens < 1:
        raise ValueError(f"--tokens must be positive, got {args.tokens}")
    if args.max_rows is not None and args.max_rows < 1:
        raise ValueError(f"--max-rows must be positive, got {args.max_rows}")
    data = str(args.data)
    if data.endswith(".npy"):
        raise ValueError(f"{data}: mining needs documents (text), not a token array")
    if not data.startswith("hf:") and not Path(data).exists():
        raise ValueError(f"{data}: no such corpus file or directory")


def run_mine(args) -> None:
    import random

    import torch

    from curvmem.evaluate import mine
    from curvmem.io import write_cost, write_json
    from curvmem.model import default_device, load_model, load_tokenizer
    from curvmem.world import corpus

    _check_args(args)
    torch.set_num_threads(args.threads)
    with cost() as c:
        model = load_model(args.model, dtype=getattr(torch, args.dtype),
                           trust_remote_code=args.trust_remote_code,
                           device=default_device(args.device))
        tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
        rows, stats = mine.mine(model, tokenizer, corpus.iter_texts(args.data),
                                args.prefix_len, args.suffix_len, args.stride, args.batch_size,
                                args.tokens, progress=True)
    if args.max_rows is not None and len(rows) > args.max_rows:
        # a seeded sample, so a cap does not favour the start of the corpus
        keep = sorted(random.Random(args.seed).sample(range(len(rows)), args.max_rows))
        rows = [rows[i] for i in keep]
    fraction = args.validation_fraction if args.validation_fraction is not None else 0.5
    train, val = (mine.split_rows(rows, fraction, args.seed) if args.validation_out
                  else (rows, []))
    mine.write_rows(args.out, train)
    if args.validation_out:
        mine.write_rows(args.validation_out, val)
    summary = {"out": args.out, "validation_out": args.validation_out, "model": args.model,
               "data": args.data, "prefix_len": args.prefix_len, "suffix_len": args.suffix_len,
               "stride": args.stride, **stats, "rows": len(train), "validation_rows": len(val),
               "seed": args.seed}
    write_json(Path(args.out).with_suffix(".meta.json"), summary)
    write_cost(args.out, c)  # measured: beside the rows, not in their meta
    print(json.dumps({**summary, "cost": c}))


def register(sub, evaluate_sub) -> None:
    p = sub.add_parser(
        "mine", help="find memorized windows of a corpus (JSONL for evaluate memorization)",
        description="Slide prefix+suffix windows over every document; keep those whose suffix "
        "the model's teacher-forced argmax reproduces token for token (= greedy recitation); "
        "deduplicate by suffix ids; split train/validation with a seed. Rows: prefix_ids, "
        "suffix_ids, prefix_text, suffix_text, prefix_len, suffix_len, doc_index, token_offset. "
        "Also writes OUT.meta.json (counts) and OUT.cost.json (seconds, peak RSS).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_args(p)
    p.add_argument("--data", required=True,
                   help="corpus of documents: JSONL ('text'), text file, `datasets` directory, "
                   "or hf:NAME[/CONFIG][:SPLIT][@REVISION][#FIELD] (streamed)")
    p.add_argument("--out", required=True, help="FILE.jsonl (the train part when split)")
    p.add_argument("--prefix-len", type=int, default=64)
    p.add_argument("--suffix-len", type=int, default=48)
    p.add_argument("--stride", type=int, default=32, help="tokens between window starts")
    p.add_argument("--tokens", type=int, default=None,
                   help="stop reading the corpus after this many tokens (default: all)")
    p.add_argument("--batch-size", type=int, default=32, help="windows per forward pass")
    p.add_argument("--max-rows", type=int, default=None,
                   help="keep a seeded sample of at most this many windows (the paper: 1000)")
    p.add_argument("--validation-out", default=None,
                   help="FILE.jsonl for the validation part (default: no split)")
    p.add_argument("--validation-fraction", type=float, default=None,
                   help="fraction of rows in --validation-out (default 0.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and of --max-rows")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="dtype to load the model in (use the one it will be evaluated in: "
                   "argmax ties can differ between dtypes)")
    p.set_defaults(func=run_mine)
