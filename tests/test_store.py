"""The artifact schema: layer netCDF round trips, refusals, atomic writes, edit files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import tiny_gpt2, tiny_olmo2
from curvmem import io, schema
from curvmem.model import model_fingerprint
from curvmem.model.load import read_layer


def spd(n: int, rng, dtype=np.float32) -> np.ndarray:
    x = rng.standard_normal((n + 3, n))
    return (x.T @ x / (n + 3)).astype(dtype)


def root_attrs(model, layer: int, **over) -> dict:
    attrs = {"model_id": "tiny", "model_fingerprint": model_fingerprint(model), "layer": layer,
             "fisher": "sampled", "n_tokens": 66, "seq_len": 12, "corpus_fingerprint": "abc",
             "seed": 0}
    attrs.update(over)
    return attrs


def olmo_factor_groups(rng, dtype=np.float32) -> dict:
    """Factor groups shaped like tiny OLMo-2's MLP (d = 16, ff = 24)."""
    return {"mlp.gate_proj": {"A": spd(16, rng, dtype), "G": spd(24, rng, dtype)},
            "mlp.down_proj": {"A": spd(24, rng, dtype), "G": spd(16, rng, dtype)}}


def eigen_groups(factor_groups: dict) -> dict:
    out = {}
    for name, g in factor_groups.items():
        out[name] = {}
        for side in ("A", "G"):
            vals, vecs = np.linalg.eigh(g[side].astype(np.float64))
            out[name][f"{side}_eigenvalues"] = vals[::-1].copy()
            out[name][f"{side}_eigenvectors"] = vecs[:, ::-1].copy()
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_factor_file_round_trip(tmp_path, dtype):
    model = tiny_olmo2()
    groups = olmo_factor_groups(np.random.default_rng(0), dtype)
    path = schema.layer_path(tmp_path, 1)
    assert path.name == "layer_1.nc"
    schema.write_layer(path, "factors", 1, groups, root_attrs(model, 1))
    got = read_layer(path, "factors", model=model, modules=["mlp.gate_proj"])
    assert got.kind == "factors" and got.layer == 1
    assert sorted(got.modules()) == sorted(groups)
    for name in groups:
        for var in ("A", "G"):
            assert got.groups[name][var].dtype == dtype
            np.testing.assert_array_equal(got.groups[name][var], groups[name][var])
    assert got.attrs["n_tokens"] == 66 and got.attrs["fisher"] == "sampled"
    assert got.attrs["model_fingerprint"] == model_fingerprint(model)
    assert got.attrs["schema_version"] == schema.SCHEMA_VERSION
    # no temp file left behind; the checksum sidecar beside the file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layer_1.nc", "layer_1.nc.sha256"]


def test_eigen_file_round_trip(tmp_path):
    model = tiny_olmo2()
    groups = eigen_groups(olmo_factor_groups(np.random.default_rng(1)))
    path = tmp_path / "eigen" / "layer_2.nc"  # parent directories are created
    schema.write_layer(path, "eigen", 2, groups, root_attrs(model, 2))
    got = read_layer(path, "eigen", model=model)
    for name, vars_ in groups.items():
        for var, arr in vars_.items():
            np.testing.assert_array_equal(got.groups[name][var], arr)


def test_reading_refuses_another_models_file(tmp_path):
    model = tiny_olmo2(seed=0)
    path = tmp_path / "layer_1.nc"
    schema.write_layer(path, "factors", 1, olmo_factor_groups(np.random.default_rng(0)),
                      root_attrs(model, 1))
    with pytest.raises(io.StoreError) as e:
        read_layer(path, "factors", model=tiny_olmo2(seed=1))
    assert "fingerprint" in str(e.value) and model_fingerprint(model) in str(e.value)


def test_reading_refuses_wrong_shapes(tmp_path):
    """A file whose modules have other dims than the model's (same fingerprint forged)."""
    model = tiny_olmo2()
    rng = np.random.default_rng(0)
    groups = {"mlp.gate_proj": {"A": spd(16, rng), "G": spd(20, rng)}}  # ff is 24, not 20
    path = tmp_path / "layer_0.nc"
    schema.write_layer(path, "factors", 0, groups, root_attrs(model, 0))
    with pytest.raises(io.StoreError, match=r"\(16, 20\).*\(16, 24\)"):
        read_layer(path, "factors", model=model)


def test_reading_refuses_missing_module_and_wrong_kind(tmp_path):
    model = tiny_olmo2()
    path = tmp_path / "layer_0.nc"
    schema.write_layer(path, "factors", 0, olmo_factor_groups(np.random.default_rng(0)),
                      root_attrs(model, 0))
    with pytest.raises(io.StoreError, match="mlp.up_proj"):
        read_layer(path, "factors", modules=["mlp.gate_proj", "mlp.up_proj"])
    with pytest.raises(io.StoreError, match="expected 'eigen'"):
        read_layer(path, "eigen")
    with pytest.raises(io.StoreError, match="no such"):
        read_layer(tmp_path / "layer_9.nc", "factors")


def test_reading_refuses_truncated_and_foreign_files(tmp_path):
    model = tiny_olmo2()
    good = tmp_path / "layer_0.nc"
    schema.write_layer(good, "factors", 0, olmo_factor_groups(np.random.default_rng(0)),
                      root_attrs(model, 0))
    data = good.read_bytes()
    truncated = tmp_path / "truncated.nc"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(io.StoreError, match="incomplete"):  # no checksum sidecar
        read_layer(truncated, "factors")
    io.write_checksum(truncated)  # the reader still refuses a bad file whose checksum matches
    with pytest.raises(io.StoreError, match="truncated"):
        read_layer(truncated, "factors")
    text = tmp_path / "text.nc"
    text.write_text("not netcdf\n")
    io.write_checksum(text)
    with pytest.raises(io.StoreError, match="cannot read"):
        read_layer(text, "factors")


@pytest.mark.parametrize("groups, words", [
    ({"m": {"A": np.full((3, 3), np.nan, np.float32), "G": np.eye(2, dtype=np.float32)}},
     "NaN or inf"),
    ({"m": {"A": np.ones((3, 2), np.float32), "G": np.eye(2, dtype=np.float32)}}, "not square"),
    ({"m": {"A": np.eye(3, dtype=np.float32)}}, "lacks variable 'G'"),
    ({}, "no module groups"),
])
def test_writing_refuses_bad_groups_and_leaves_no_file(tmp_path, groups, words):
    model = tiny_olmo2()
    path = tmp_path / "out" / "layer_0.nc"
    with pytest.raises(io.StoreError, match=words):
        schema.write_layer(path, "factors", 0, groups, root_attrs(model, 0))
    assert not path.parent.exists() or not any(path.parent.iterdir())


def test_eigenvector_shape_mismatch_is_refused(tmp_path):
    groups = eigen_groups(olmo_factor_groups(np.random.default_rng(0)))
    groups["mlp.gate_proj"]["G_eigenvectors"] = groups["mlp.gate_proj"]["G_eigenvectors"][:, :5]
    with pytest.raises(io.StoreError, match="do not match"):
        schema.write_layer(tmp_path / "l.nc", "eigen", 0, groups, root_attrs(tiny_olmo2(), 0))
    assert not any(tmp_path.iterdir())


def test_atomic_output_leaves_nothing_when_the_block_fails(tmp_path):
    path = tmp_path / "a.json"
    with pytest.raises(RuntimeError), io.atomic_output(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert not any(tmp_path.iterdir())
    io.write_json(path, {"x": float("nan"), "y": np.float32(1.5), "z": (1, 2)})
    assert json.loads(path.read_text()) == {"x": None, "y": 1.5, "z": [1, 2]}


def test_edit_round_trip_in_stored_layout(tmp_path):
    model = tiny_gpt2()
    name = "transformer.h.1.mlp.c_fc.weight"
    w = torch.randn_like(dict(model.named_parameters())[name])
    path = tmp_path / "e.safetensors"
    written = {"method": "svd", "spec": {"drop": 0.5}, "model_fingerprint": "f" * 16}
    schema.write_edit(path, {name: w}, written)
    tensors, meta = schema.read_edit(path)
    assert list(tensors) == [name]
    torch.testing.assert_close(tensors[name], w, rtol=0, atol=0)
    assert meta == {**written, "weights_sha256": io.sha256_file(path)}  # its weights, named
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.json", "e.safetensors",
                                                           "e.safetensors.sha256"]


def test_edit_refusals_leave_no_file(tmp_path):
    with pytest.raises(io.StoreError, match="must end in .safetensors"):
        schema.write_edit(tmp_path / "e.pt", {"w": torch.ones(2)}, {"method": "svd"})
    with pytest.raises(io.StoreError, match="no tensors"):
        schema.write_edit(tmp_path / "e.safetensors", {}, {"method": "svd"})
    assert not any(tmp_path.iterdir())
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 5)
    io.write_checksum(tmp_path / "bad.safetensors")
    io.write_json(tmp_path / "bad.json", {"method": "svd", "model_fingerprint": "f" * 16,
                                          "weights_sha256": io.sha256_file(tmp_path /
                                                                           "bad.safetensors")})
    with pytest.raises(io.StoreError, match="not a readable safetensors"):
        schema.read_edit(tmp_path / "bad.safetensors")


def test_an_edit_file_is_the_same_bytes_every_time_it_is_written(tmp_path):
    """safetensors writes a header's metadata in hash-map order: with two keys an edit's bytes,
    and so the weights_sha256 its sidecar records, changed between writes (in 12 writes both
    orders were all but sure to show)."""
    w = {"transformer.h.1.mlp.c_fc.weight": torch.arange(12.0).reshape(3, 4)}
    meta = {"method": "svd", "spec": {"drop": 0.5}, "model_fingerprint": "f" * 16}
    digests = set()
    for i in range(12):
        path = tmp_path / f"e{i}.safetensors"
        schema.write_edit(path, w, meta)
        digests.add(io.sha256_file(path))
    assert len(digests) == 1
