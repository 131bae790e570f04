"""curvmem: memorization and loss curvature (K-FAC) in transformers.

Reproduces Merullo, Vatsavaya, Bushnaq, Lewis (2025), "From Memorization to Reasoning in the
Spectrum of Loss Curvature". The library never imports snakemake; the workflow calls the CLI.

The Python API (`curvmem.api`, docs/api.md) is re-exported here: `curvmem.collect`,
`curvmem.eigenbases`, `curvmem.make_edit`, `curvmem.recitation`, ... It is imported on first
use, so `import curvmem` (and the torch-free planner) stays cheap.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# what curvmem.api exports, re-exported lazily (PEP 562)
_API = ("CollectedFactors", "Edit", "Eigenbases", "coherence", "collect", "eigenbases",
        "make_edit", "perplexity", "recitation", "task_accuracy")

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        # Imported by name, not by an import statement: schema and edit.export read __version__
        # from this package, so a static import of the API (which reads them) would close an
        # import cycle, though the API only loads once this package is complete.
        return getattr(importlib.import_module(f"{__name__}.api"), name)
    raise AttributeError(f"module 'curvmem' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
