"""curvmem: memorization and loss curvature (K-FAC) in transformers.

Reproduces Merullo, Vatsavaya, Bushnaq, Lewis (2025), "From Memorization to Reasoning in the
Spectrum of Loss Curvature". The library never imports snakemake; the workflow calls the CLI.
"""

__version__ = "0.1.0"
