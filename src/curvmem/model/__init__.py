"""The model layer: adapters (where the blocks and MLP linear maps of a transformer are), loading
(HF causal LMs, curvmem ViT directories, factor files checked against a model), and the training
of the embedded models (vit; the tiny OLMo-2 in lm).
"""

from curvmem.model.adapters import (
    FAMILIES,
    Adapter,
    AdapterError,
    Family,
    MLPModule,
    adapter_for,
    default_device,
    mlp_modules,
    model_device,
    model_fingerprint,
    model_id,
    parse_int_list,
    plain_lm_head,
)
from curvmem.model.identity import check_identity, identity_record, model_digest, model_identity
from curvmem.model.load import check_layer, load_model, load_tokenizer, read_layer

__all__ = ["FAMILIES", "Adapter", "AdapterError", "Family", "MLPModule", "adapter_for",
           "check_identity", "check_layer", "default_device", "identity_record", "load_model",
           "load_tokenizer", "mlp_modules", "model_device", "model_digest", "model_fingerprint",
           "model_id", "model_identity", "parse_int_list", "plain_lm_head", "read_layer"]
