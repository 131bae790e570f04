"""The paper's own numbers (Merullo et al. 2025), shown beside ours for shape only.

Their models are OLMo-2 7B/1B on Dolma and ViT-Base/16 on ImageNet; ours are a tiny OLMo-2 on a
toy world and a tiny ViT on digits. Reference values only, always labelled as the paper's.
"""

from curvmem.presets import TASK_CATEGORIES  # noqa: F401 (the categories every report scores)

# The paper's own numbers (Merullo et al. 2025, Table 1 and Figure 3; see PAPER.md), shown beside
# ours for shape only: their model is OLMo-2 7B/1B on Dolma, ours a tiny OLMo-2 on a toy world.
# Fractions, not percent. "forget" ~ the paper's Dolma memorized set, "untargeted" ~ its
# historical quotes (never given to any method).
PAPER_TABLE1 = {
    "7B base": {"forget": (0.999, 1.000, 0.002), "untargeted": (0.999, 1.000, 0.001), "ppl": 19.04},
    "7B BSN": {"forget": (0.060, 0.110, 0.860), "untargeted": (0.600, 0.790, 0.180), "ppl": 23.59},
    "7B K-FAC": {"forget": (0.034, 0.088, 0.704), "untargeted": (0.161, 0.238, 0.625), "ppl": 22.84},
    "7B SVD": {"forget": (0.030, 0.068, 0.754), "untargeted": (0.175, 0.304, 0.560), "ppl": 22.49},
    "1B base": {"forget": (0.9846, 0.9938, 0.005), "untargeted": (0.985, 0.9895, 0.006),
                "ppl": 23.19},
    "1B K-FAC": {"forget": (0.028, 0.072, 0.761), "untargeted": (0.277, 0.399, 0.470), "ppl": 26.53},
}
PAPER_NDCG10 = {"7B base": 1.00, "7B BSN": 0.97, "7B K-FAC": 0.91, "7B SVD": 0.91}
# The paper's final 7B edit: layers 23, 24 and 25 of 32 (gate_proj and up_proj, ρ 0.6); its
# relative depth is what curvmem.report.claims.paper_depth_edit matches in a smaller model
PAPER_EDIT_LAYERS = (23, 24, 25)
PAPER_N_LAYERS = 32
# Figure 3: K-FAC-edited 7B as a fraction of base, per category (our category -> paper range)
PAPER_RETENTION = {"logic": (0.95, 1.06), "open_book": (0.93, 0.99),
                   "closed_book": (0.74, 0.86), "arithmetic": (0.66, 0.74),
                   "memorization": (0.03, 0.16)}

# The paper's Table 1 (Merullo et al. 2025), copied from docs' PAPER.md: reference values only,
# printed beside ours and labelled as the paper's. Dolma = targeted memorized training sequences,
# Quotes = untargeted historical quotes; strict/loose in %, Avg Lev higher = less memorization.
PAPER_TABLE1_ROWS = [
    # model, method, Dolma strict, loose, avg lev, Quotes strict, loose, avg lev, PPL
    ("7B", "base", 99.9, 100.0, 0.002, 99.9, 100.0, 0.001, 19.04),
    ("7B", "BSN", 6.0, 11.0, 0.860, 60.0, 79.0, 0.180, 23.59),
    ("7B", "K-FAC", 3.4, 8.8, 0.704, 16.1, 23.8, 0.625, 22.84),
    ("7B", "SVD", 3.0, 6.8, 0.754, 17.5, 30.4, 0.560, 22.49),
    ("1B", "base", 98.46, 99.38, 0.005, 98.5, 98.95, 0.006, 23.19),
    ("1B", "BSN", 3.0, 5.0, 0.900, 57.0, 66.0, 0.250, 25.41),
    ("1B", "K-FAC", 2.8, 7.2, 0.761, 27.7, 39.9, 0.470, 26.53),
    ("1B", "SVD", 3.2, 6.3, 0.781, 39.6, 48.5, 0.401, 26.94),
]

# The paper's Table 2 (ViT-Base/16, ImageNet, 10 % noisy labels), in percent.
PAPER_TABLE2 = {
    "Baseline": {"memorized": 81.6, "train_gt_acc": 10.5, "val_acc": 67.0},
    "SVD": {"memorized": 3.5, "train_gt_acc": 58.9, "val_acc": 67.8},
    "K-FAC": {"memorized": 3.5, "train_gt_acc": 66.5, "val_acc": 71.7},
}
