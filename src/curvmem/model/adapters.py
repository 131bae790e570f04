"""Model adapters: where the transformer blocks are and which linear modules make up their MLPs.

Every other module speaks in (layer, module name inside the block), e.g. (23, "mlp.gate_proj"),
and asks this one for the torch module, its weight in (d_out, d_in) layout and its full parameter
name. GPT-2's Conv1D stores its weight as (d_in, d_out); that transpose is handled here only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from curvmem.model.identity import model_fingerprint  # noqa: F401 (the adapters' API)


@dataclass(frozen=True)
class Family:
    """How one architecture family lays out its blocks and MLPs."""

    name: str
    blocks_paths: tuple[str, ...]  # candidate attribute paths of the block list, tried in order
    modules: tuple[str, ...]  # MLP linear modules, relative to a block, in forward order
    shared_inputs: dict = field(default_factory=dict)  # module -> module whose input it reads


FAMILIES: tuple[Family, ...] = (
    # OLMo-2, Llama, Qwen2, Mistral (and OLMo-1, Gemma) share the gated-MLP layout. OLMo-2 puts its
    # RMSNorm after the MLP, so gate_proj and up_proj read the same tensor: one A serves both.
    Family(
        "llama-like",
        ("model.layers", "layers"),
        ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
        {"mlp.up_proj": "mlp.gate_proj"},
    ),
    Family("gpt2", ("transformer.h", "h"), ("mlp.c_fc", "mlp.c_proj")),
    Family("gpt-neox", ("gpt_neox.layers", "layers"), ("mlp.dense_h_to_4h", "mlp.dense_4h_to_h")),
    Family("timm-vit", ("blocks",), ("mlp.fc1", "mlp.fc2")),
)


class AdapterError(ValueError):
    """A model, layer or module that curvmem cannot map."""


@dataclass(frozen=True)
class MLPModule:
    """One MLP linear map W (d_out x d_in) of one block."""

    layer: int
    name: str  # path inside the block, e.g. "mlp.gate_proj"; also the netCDF group name
    param_name: str  # full parameter name of the weight, e.g. "model.layers.23.mlp.gate_proj.weight"
    module: nn.Module
    d_in: int
    d_out: int
    transposed: bool  # GPT-2 Conv1D: stored weight is (d_in, d_out)
    input_of: str  # the module whose input this one reads (itself unless shared)

    def weight(self) -> torch.Tensor:
        """The weight in (d_out, d_in) layout (a view of the parameter, no copy)."""
        w = self.module.weight
        return w.T if self.transposed else w

    def to_stored_layout(self, w: torch.Tensor) -> torch.Tensor:
        """(d_out, d_in) -> the layout the parameter is stored in."""
        return w.T.contiguous() if self.transposed else w.contiguous()


def _get_path(obj, path: str):
    for part in path.split("."):
        if not hasattr(obj, part):
            return None
        obj = getattr(obj, part)
    return obj


def _is_linear_like(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"


@dataclass(frozen=True)
class Adapter:
    family: str
    blocks_path: str
    modules: tuple[str, ...]
    shared_inputs: dict

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return _get_path(model, self.blocks_path)

    def num_layers(self, model: nn.Module) -> int:
        return len(self.blocks(model))


def _hand_naming_hint(model: nn.Module) -> str:
    return (
        f"curvmem has no adapter for {type(model).__name__}. Name the modules by hand: "
        "pass --blocks-path (the attribute path of the block list, e.g. 'transformer.h') and "
        "--modules (linear modules inside a block, e.g. 'mlp.c_fc,mlp.c_proj'), or call "
        "curvmem.model.adapter_for(model, blocks_path=..., modules=[...])."
    )


def adapter_for(model: nn.Module, blocks_path: str | None = None, modules=None) -> Adapter:
    """Find the adapter for `model`, or build one from hand-given names."""
    if blocks_path is not None:
        blocks = _get_path(model, blocks_path)
        if not isinstance(blocks, (nn.ModuleList, nn.Sequential)) or len(blocks) == 0:
            raise AdapterError(f"{type(model).__name__} has no block list at '{blocks_path}'")
        if not modules:
            raise AdapterError("--blocks-path needs --modules (linear modules inside a block)")
        for name in modules:
            m = _get_path(blocks[0], name)
            if m is None or not _is_linear_like(m):
                raise AdapterError(f"block 0 at '{blocks_path}' has no linear module '{name}'")
        return Adapter("custom", blocks_path, tuple(modules), {})
    for fam in FAMILIES:
        for path in fam.blocks_paths:
            blocks = _get_path(model, path)
            if not isinstance(blocks, (nn.ModuleList, nn.Sequential)) or len(blocks) == 0:
                continue
            if all(_is_linear_like(_get_path(blocks[0], n) or nn.Identity()) for n in fam.modules):
                return Adapter(fam.name, path, fam.modules, dict(fam.shared_inputs))
    raise AdapterError(_hand_naming_hint(model))


def parse_int_list(text) -> list[int]:
    """'5,6' / '3-5' / [5, 6] -> [5, 6]."""
    if isinstance(text, (list, tuple)):
        return [int(x) for x in text]
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part[1:]:
            lo, hi = part.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1))
        else:
            out.append(int(part))
    return out


def mlp_modules(
    model: nn.Module, layers=None, modules=None, adapter: Adapter | None = None
) -> list[MLPModule]:
    """The requested MLP modules, validated. layers=None means all, modules=None all of the block."""
    adapter = adapter or adapter_for(model)
    blocks = adapter.blocks(model)
    n = len(blocks)
    layers = list(range(n)) if layers is None else parse_int_list(layers)
    if not layers:
        raise AdapterError("no layers requested")
    twice = sorted({x for x in layers if layers.count(x) > 1})
    if twice:  # collected or edited once, though asked for twice: a typo, refused
        raise AdapterError(f"layer(s) {twice} requested twice")
    for layer in layers:
        if not 0 <= layer < n:
            raise AdapterError(f"layer {layer} is out of range: {type(model).__name__} has {n} "
                               f"blocks (0..{n - 1})")
    if modules is None:
        names = list(adapter.modules)
    else:
        names = [m.strip() for m in (modules.split(",") if isinstance(modules, str) else modules)]
        twice = sorted({m for m in names if names.count(m) > 1})
        if twice:
            raise AdapterError(f"module(s) {twice} requested twice")
        unknown = [m for m in names if m not in adapter.modules]
        if unknown:
            raise AdapterError(f"unknown module(s) {unknown} for {type(model).__name__} "
                               f"({adapter.family}); known: {list(adapter.modules)}")
    out = []
    for layer in sorted(set(layers)):
        for name in names:
            mod = _get_path(blocks[layer], name)
            if type(mod).__name__ == "Conv1D":
                d_in, d_out = mod.weight.shape
                transposed = True
            else:
                d_out, d_in = mod.weight.shape
                transposed = False
            source = adapter.shared_inputs.get(name, name)
            out.append(MLPModule(layer, name, f"{adapter.blocks_path}.{layer}.{name}.weight", mod,
                                 d_in, d_out, transposed, source))
    return out


# Causal LMs whose logits are exactly lm_head(base_model(...).last_hidden_state): no logit scaling
# or soft-capping. For them the collector forms the gradient at the head's input directly.
PLAIN_HEAD_TYPES = frozenset({"olmo", "olmo2", "llama", "qwen2", "mistral", "gpt2", "gpt_neox"})


def plain_lm_head(model: nn.Module):
    """(base model, head) when logits = head(base(...).last_hidden_state) exactly, else None."""
    if getattr(getattr(model, "config", None), "model_type", None) not in PLAIN_HEAD_TYPES:
        return None
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear) or head.bias is not None:
        return None
    return model.base_model, head


def default_device(device: str | None = None) -> str:
    """`device` as given (checked: a name torch knows, and present), else cuda when present, else
    cpu."""
    if not device:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device}: not a device name (cpu, cuda, cuda:1, ...)") \
            from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {device}: curvmem runs on cpu or cuda")
    return device


def model_device(model) -> torch.device:
    """Where the model's weights are (inputs go there); CPU for a model without parameters."""
    first = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    return first.device if first is not None else torch.device("cpu")


def model_id(path_or_id) -> str:
    """The model as an artifact names it: the path or hub id as given (the workflow gives paths
    relative to its root), so two checkouts that make the same file make the same bytes and a
    shared file names no one's home directory. Which model it was is the fingerprint's to say."""
    return str(path_or_id)
