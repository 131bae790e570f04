"""The edit layer: weights edited in the K-FAC eigenbasis (kfac), the SVD baseline (svd), the
BalancedSubnet baseline (bsn), and an edit as a file (build: spec, build_edit, apply).

`curvmem.edit.apply(model, path)` loads any edit file into a model.
"""

from curvmem.edit.build import apply, build_edit, layer_set_label, parse_spec, restored_after
from curvmem.edit.kfac import (
    BAND_LIMIT,
    band_mask,
    check_rho,
    kfac_edit_weight,
    pair_mask,
    select_pairs,
)
from curvmem.edit.svd import svd_truncate

__all__ = ["BAND_LIMIT", "apply", "band_mask", "build_edit", "check_rho", "kfac_edit_weight",
           "layer_set_label", "pair_mask", "parse_spec", "restored_after", "select_pairs",
           "svd_truncate"]
