"""Helpers shared by the CLI command groups."""

from __future__ import annotations


def add_model_args(p, required: bool = True) -> None:
    p.add_argument("--model", required=required,
                   help="HF causal LM path or hub id, or a curvmem/timm vision model directory")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the model's own code from the hub (off by default)")
