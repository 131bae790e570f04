"""The evaluate layer: LM evaluations (lm: memorization, perplexity, tasks, coherence) and the
ViT's Table 2 metrics (vit). Each returns a JSON-able dict; reports are curvmem.report."""
