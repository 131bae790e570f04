"""The report layer: the paper's numbers (paper), the LM report (lm), the ViT report (vit), the
method comparison (compare) and the figures they share (figures)."""
