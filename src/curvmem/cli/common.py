"""Helpers shared by the CLI command groups."""

from __future__ import annotations

import resource
import sys
import time
from contextlib import contextmanager


def add_model_args(p, required: bool = True) -> None:
    p.add_argument("--model", required=required,
                   help="HF causal LM path or hub id, or a curvmem/timm vision model directory")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the model's own code from the hub (off by default)")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


@contextmanager
def cost():
    """Measure wall seconds and peak RSS of a block: `with cost() as c: ...; c["seconds"]`."""
    c = {}
    t0 = time.perf_counter()
    yield c
    c["seconds"] = round(time.perf_counter() - t0, 3)
    c["peak_rss_mb"] = round(peak_rss_mb(), 1)
