"""Model adapters: which modules each family exposes, their (d_out, d_in) layout, and errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from conftest import tiny_gpt2, tiny_neox, tiny_olmo2
from curvmem.model import (
    AdapterError,
    adapter_for,
    mlp_modules,
    model_fingerprint,
    parse_int_list,
)

# What each family must expose, written out by hand from the HF / timm source (d = 16, ff = 24).
EXPECTED = {
    "olmo2": ("llama-like", "model.layers", {
        "mlp.gate_proj": (16, 24, "mlp.gate_proj"),
        "mlp.up_proj": (16, 24, "mlp.gate_proj"),  # OLMo-2: up_proj reads gate_proj's input
        "mlp.down_proj": (24, 16, "mlp.down_proj"),
    }),
    "gpt2": ("gpt2", "transformer.h", {
        "mlp.c_fc": (16, 24, "mlp.c_fc"),
        "mlp.c_proj": (24, 16, "mlp.c_proj"),
    }),
    "neox": ("gpt-neox", "gpt_neox.layers", {
        "mlp.dense_h_to_4h": (16, 24, "mlp.dense_h_to_4h"),
        "mlp.dense_4h_to_h": (24, 16, "mlp.dense_4h_to_h"),
    }),
}


def tiny_vit(depth: int = 2):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(img_size=8, patch_size=4, embed_dim=16, depth=depth, num_heads=2,
                             num_classes=3, mlp_ratio=1.5).eval()


def test_adapter_lists_each_family(tiny_lm):
    family, model = tiny_lm
    fam_name, blocks_path, expected = EXPECTED[family]
    adapter = adapter_for(model)
    assert adapter.family == fam_name
    assert adapter.blocks_path == blocks_path
    mods = mlp_modules(model)
    assert [(m.layer, m.name) for m in mods] == [(layer, n) for layer in range(3) for n in expected]
    params = dict(model.named_parameters())
    for m in mods:
        d_in, d_out, input_of = expected[m.name]
        assert (m.d_in, m.d_out, m.input_of) == (d_in, d_out, input_of)
        assert m.param_name == f"{blocks_path}.{m.layer}.{m.name}.weight"
        assert params[m.param_name] is m.module.weight
        assert m.weight().shape == (d_out, d_in)


def test_weight_is_the_map_in_dout_din_layout(tiny_lm):
    """module(x) = x Wᵀ + b with W = MLPModule.weight(): the (d_out, d_in) convention, Conv1D too."""
    _, model = tiny_lm
    for m in mlp_modules(model, [1]):
        x_in = torch.randn(5, m.d_in)
        bias = getattr(m.module, "bias", None)
        expected = x_in @ m.weight().T + (0 if bias is None else bias)
        torch.testing.assert_close(m.module(x_in), expected, rtol=0, atol=1e-6)
        w_new = torch.randn(m.d_out, m.d_in)
        stored = m.to_stored_layout(w_new)
        assert stored.shape == m.module.weight.shape
        assert stored.is_contiguous()
        torch.testing.assert_close(stored.T if m.transposed else stored, w_new, rtol=0, atol=0)


def test_gpt2_conv1d_is_transposed_and_others_are_not():
    assert all(m.transposed for m in mlp_modules(tiny_gpt2()))
    assert not any(m.transposed for m in mlp_modules(tiny_olmo2()))
    assert not any(m.transposed for m in mlp_modules(tiny_neox()))


def test_selecting_layers_and_modules():
    model = tiny_olmo2(layers=4)
    mods = mlp_modules(model, "3,1", "mlp.up_proj, mlp.gate_proj")
    assert [(m.layer, m.name) for m in mods] == [
        (1, "mlp.up_proj"), (1, "mlp.gate_proj"), (3, "mlp.up_proj"), (3, "mlp.gate_proj")]
    assert [m.layer for m in mlp_modules(model, "1-2", ["mlp.down_proj"])] == [1, 2]
    assert parse_int_list("3-5,7") == [3, 4, 5, 7]
    assert parse_int_list([2, "4"]) == [2, 4]


def test_timm_vit_blocks_fc1_fc2():
    vit = tiny_vit()
    adapter = adapter_for(vit)
    assert adapter.family == "timm-vit"
    mods = mlp_modules(vit, [1], ["mlp.fc1"])
    assert len(mods) == 1
    m = mods[0]
    assert m.param_name == "blocks.1.mlp.fc1.weight"
    assert m.module is vit.blocks[1].mlp.fc1
    assert (m.d_in, m.d_out, m.transposed) == (16, 24, False)


@pytest.mark.parametrize("layers, modules, words", [
    ([3], None, ["layer 3", "out of range", "3 blocks"]),
    ([-1], None, ["layer -1", "out of range"]),
    ([], None, ["no layers"]),
    ([0], ["mlp.gate"], ["unknown module", "mlp.gate", "mlp.gate_proj"]),
    ([0], "mlp.c_fc", ["unknown module", "mlp.c_fc", "mlp.down_proj"]),
])
def test_bad_layer_or_module_names_say_what_exists(layers, modules, words):
    with pytest.raises(AdapterError) as e:
        mlp_modules(tiny_olmo2(), layers, modules)
    assert isinstance(e.value, ValueError)  # the CLI prints ValueErrors on one line, exit 2
    for w in words:
        assert w in str(e.value)


class Mystery(nn.Module):
    """An architecture curvmem does not know: blocks at `stack`, MLP `ff.inp`/`ff.out`."""

    def __init__(self):
        super().__init__()
        self.stack = nn.ModuleList(
            nn.ModuleDict({"ff": nn.ModuleDict({"inp": nn.Linear(4, 6), "out": nn.Linear(6, 4)})})
            for _ in range(2))


def test_unknown_architecture_names_class_and_how_to_name_modules():
    with pytest.raises(AdapterError) as e:
        mlp_modules(Mystery())
    msg = str(e.value)
    assert "Mystery" in msg
    assert "--blocks-path" in msg and "--modules" in msg and "adapter_for" in msg


def test_modules_named_by_hand():
    model = Mystery()
    adapter = adapter_for(model, blocks_path="stack", modules=["ff.inp", "ff.out"])
    mods = mlp_modules(model, [1], None, adapter=adapter)
    assert [(m.name, m.d_in, m.d_out) for m in mods] == [("ff.inp", 4, 6), ("ff.out", 6, 4)]
    assert mods[0].module is model.stack[1]["ff"]["inp"]
    with pytest.raises(AdapterError, match="no block list at 'blocks'"):
        adapter_for(model, blocks_path="blocks", modules=["ff.inp"])
    with pytest.raises(AdapterError, match="no linear module 'ff.mid'"):
        adapter_for(model, blocks_path="stack", modules=["ff.mid"])
    with pytest.raises(AdapterError, match="needs --modules"):
        adapter_for(model, blocks_path="stack")


def test_fingerprint_is_stable_and_sees_weight_changes():
    a, b = tiny_olmo2(seed=0), tiny_olmo2(seed=0)
    assert model_fingerprint(a) == model_fingerprint(b)
    assert model_fingerprint(a) != model_fingerprint(tiny_olmo2(seed=1))
    with torch.no_grad():
        mlp_modules(b, [2], ["mlp.down_proj"])[0].module.weight.mul_(1.01)
    assert model_fingerprint(a) != model_fingerprint(b)


def test_fingerprint_does_not_depend_on_the_load_dtype():
    """`curvmem collect` loads the model in bfloat16 on a GPU (cli/core.py run_collect) and stamps
    the factors with that fingerprint; `curvmem edit` loads float32 on the CPU and checks the eigen
    files against its own fingerprint. The same checkpoint must give the same fingerprint both
    ways, or a GPU-collected run can never be edited."""
    model = tiny_olmo2()
    assert model_fingerprint(model) == model_fingerprint(copy.deepcopy(model).to(torch.bfloat16))
