"""Analyses of the curvature edit, each a small module with one function returning a JSON-able
dict (with its "definition" and parameters) and one figure function:

    activation_ratio   memorized ÷ clean output norm per curvature band, K-FAC vs SVD (Fig. 2)
    task_interaction   the same per task category, against its retention (Fig. 4)
    spectra            eigenvalues of A and G, the λᵢμⱼ mass curve, effective ranks, ρ cut-offs
    per_example        each sequence's own gradient in the K-FAC eigenbasis, by band
    stability          eigenbasis / kept-pair agreement across token slices and seeds
    stress             positional perturbations of memorized prompts (Table 6)
    vit                the ViT's activation ratio and per-example curvature (CLS position,
                       noisy- vs clean-labelled images)
"""
