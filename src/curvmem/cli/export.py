"""CLI: export, a base model with an edit applied as a full Hugging Face checkpoint."""

from __future__ import annotations

import argparse
import json

from curvmem.cli.common import add_model_args


def run_export(args) -> None:
    from curvmem.edit.export import export_edited

    note = export_edited(args.model, args.edit, args.out, tokenizer=args.tokenizer,
                         dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    print(json.dumps({"out": args.out, **note}))


def register(sub, evaluate_sub) -> None:
    p = sub.add_parser(
        "export", help="write base + edit as a Hugging Face checkpoint directory",
        description="Apply an edit file (curvmem edit / baseline) to the base model and save the "
        "result with save_pretrained (safetensors), the tokenizer when --tokenizer is given or "
        "found beside the model, and config.curvmem_edit = {method, spec, edit_sha256, ...}. "
        "Written into a temp directory and renamed; an existing non-empty --out is refused.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_args(p)
    p.add_argument("--edit", required=True, help="edit file (.safetensors, with its .json sidecar)")
    p.add_argument("--out", required=True, help="new checkpoint directory")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer directory to include (default: the model's, if it has one)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="dtype of the saved weights (auto: the base checkpoint's own)")
    p.set_defaults(func=run_export)
