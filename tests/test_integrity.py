"""Artifacts that must be refused: another model's factors, eigenbases and edits (one weight or
one config value apart), a sidecar beside other weights, edits holding NaN or Inf, eigenvectors
that are not orthonormal, corrupt collection checkpoints, a --tokens budget the corpus cannot
fill, and layers or modules named twice. Each refusal is one clear error (exit 2 at the CLI)
naming the file or flag."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch

from conftest import tiny_olmo2
from curvmem import edit, io, schema
from curvmem.cli import main
from curvmem.factors import LMTask, batched, collect, collect_layer_files
from curvmem.model import (
    AdapterError,
    check_identity,
    identity_record,
    load_model,
    mlp_modules,
    model_digest,
    model_fingerprint,
)
from curvmem.model.load import read_layer
from test_cli_core import word_tokenizer

torch.set_num_threads(1)

SEQ = 12
DOWN = "model.layers.1.mlp.down_proj.weight"


def cli(*args) -> int:
    return main([str(a) for a in args])


def refused(capsys, argv, *words) -> str:
    """Exit 2 with one error line that holds every word; returns the line."""
    capsys.readouterr()
    assert cli(*argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(errors) == 1, errors
    for w in words:
        assert str(w) in errors[0], (w, errors[0])
    return errors[0]


def nudged(model, name=DOWN):
    """A copy of `model` with one weight moved by one float32 step: the same at bfloat16."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        w = dict(other.named_parameters())[name]
        w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(float("inf")))
    assert torch.equal(w.bfloat16(), dict(model.named_parameters())[name].bfloat16())
    assert not torch.equal(w, dict(model.named_parameters())[name])
    return other


# --------------------------------------------------------------------------- fingerprints


def test_fingerprint_covers_every_weight_and_the_config():
    """The fingerprint used to hash a strided sample of each tensor rounded to bfloat16 and no
    config: a weight between the samples, one below bfloat16 precision, or another norm epsilon
    went unseen."""
    a = tiny_olmo2(d=64, ff=256)  # MLP matrices of 16384 values: a sample of 4096 skipped 3 in 4
    b = copy.deepcopy(a)
    with torch.no_grad():
        dict(b.named_parameters())[DOWN].view(-1)[1] += 0.5
    assert model_fingerprint(b) != model_fingerprint(a)

    c = nudged(a)  # one float32 step: the fingerprint (bf16) agrees, the digest does not
    assert model_fingerprint(c) == model_fingerprint(a)
    assert model_digest(c) != model_digest(a)
    with pytest.raises(io.StoreError, match="not exactly"):
        check_identity(identity_record(a), c, "f.nc", "collect")

    d = copy.deepcopy(a)
    d.config.rms_norm_eps = 1e-6
    assert model_fingerprint(d) != model_fingerprint(a)

    # a model changed in place after it was fingerprinted is fingerprinted again
    fp = model_fingerprint(a)
    with torch.no_grad():
        dict(a.named_parameters())[DOWN].view(-1)[2] += 0.5
    assert model_fingerprint(a) != fp

    # loaded in bfloat16 (a GPU's collect) it still matches the float32 load (a CPU's edit)
    half = copy.deepcopy(a).to(torch.bfloat16)
    assert model_fingerprint(half) == model_fingerprint(a) and model_digest(half) == "bf16"
    check_identity(identity_record(half), a, "f.nc", "collect")
    check_identity(identity_record(a), half, "f.nc", "collect")


def test_a_vits_fingerprint_sees_its_heads():
    """Two ViTs of the same weights but 2 or 4 attention heads (no shape shows it)."""
    from curvmem.model import vit

    def make(heads):
        torch.manual_seed(0)
        return vit._create(vit.DEFAULT_TIMM_NAME, {
            "img_size": [8, 8], "in_chans": 1, "num_classes": 3, "patch_size": 4,
            "embed_dim": 32, "depth": 2, "num_heads": heads})

    two, four = make(2), make(4)
    assert all(torch.equal(a, b) for a, b in zip(two.state_dict().values(),
                                                 four.state_dict().values()))
    assert model_fingerprint(two) != model_fingerprint(four)


def test_an_older_fingerprint_is_refused_as_older_not_as_another_model(tmp_path):
    model = tiny_olmo2()
    rng = np.random.default_rng(0)
    groups = {"mlp.up_proj": {"A": np.eye(16, dtype=np.float32),
                              "G": np.diag(rng.random(24)).astype(np.float32)}}
    attrs = {"model_id": "tiny", "model_fingerprint": "0123456789abcdef", "fisher": "sampled",
             "n_tokens": 10, "seq_len": SEQ, "corpus_fingerprint": "c", "seed": 0}
    path = schema.layer_path(tmp_path, 1)
    schema.write_layer(path, "factors", 1, groups, attrs)
    with pytest.raises(io.StoreError, match="made by an older curvmem.*recollect") as e:
        read_layer(path, "factors", model=model)
    assert str(path) in str(e.value)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Model A with a tokenizer, B: A with one weight one float32 step away, C: A with another
    rms_norm_eps in config.json; token and text data; A's factors, eigenbases and two edits."""
    root = tmp_path_factory.mktemp("integrity")
    p = {k: root / k for k in ("a", "b", "c")}
    a = tiny_olmo2()
    a.save_pretrained(p["a"])
    word_tokenizer().save_pretrained(p["a"])
    nudged(a).save_pretrained(p["b"])
    word_tokenizer().save_pretrained(p["b"])
    shutil.copytree(p["a"], p["c"])
    config = json.loads((p["c"] / "config.json").read_text())
    config["rms_norm_eps"] = 1e-6
    (p["c"] / "config.json").write_text(json.dumps(config))
    stream = torch.randint(2, 61, (10 * SEQ,), generator=torch.Generator().manual_seed(0))
    p["tokens"] = root / "tokens.npy"
    np.save(p["tokens"], stream.numpy())
    p["text"] = root / "text.jsonl"
    p["text"].write_text("".join(json.dumps({"text": " ".join(f"w{int(t)}" for t in row)}) + "\n"
                                 for row in stream.view(10, SEQ)))
    assert cli("collect", "--model", p["a"], "--data", p["tokens"], "--layers", "1,2",
               "--tokens", 10 * SEQ, "--seq-len", SEQ, "--fisher", "empirical",
               "--out", root / "f") == 0
    for layer in (1, 2):
        assert cli("eigen", "--factors", root / "f" / f"layer_{layer}.nc",
                   "--out", root / "e" / f"layer_{layer}.nc") == 0
        assert cli("edit", "--model", p["a"], "--eigen", root / "e", "--layers", layer,
                   "--modules", "mlp.down_proj", "--rho", "0.5",
                   "--out", root / f"edit{layer}.safetensors") == 0
    p.update(factors=root / "f", eigen=root / "e", edit1=root / "edit1.safetensors",
             edit2=root / "edit2.safetensors")
    return p


def perplexity(models, model, edit_path, out):
    return ("evaluate", "perplexity", "--model", models[model], "--edit", edit_path,
            "--data", models["text"], "--block-len", SEQ, "--out", out)


@pytest.mark.parametrize("other, word", [("b", "not exactly"), ("c", "fingerprint")])
def test_cli_refuses_artifacts_of_a_same_shaped_model(models, tmp_path, capsys, other, word):
    """B differs from A in one weight below bfloat16 precision, C in one config value; the old
    fingerprint saw neither, and A's eigenbases and edits were applied to both."""
    eigen_file = models["eigen"] / "layer_1.nc"
    out = tmp_path / "e.safetensors"
    refused(capsys, ("edit", "--model", models[other], "--eigen", models["eigen"], "--layers", 1,
                     "--modules", "mlp.down_proj", "--rho", "0.5", "--out", out),
            eigen_file, word)
    assert not out.exists()
    refused(capsys, perplexity(models, other, models["edit1"], tmp_path / "p.json"),
            models["edit1"], word)
    assert not (tmp_path / "p.json").exists()
    assert cli(*perplexity(models, "a", models["edit1"], tmp_path / "p.json")) == 0  # A's own


# --------------------------------------------------------------------------- edit files


def test_a_sidecar_belongs_to_its_weights(models, tmp_path, capsys):
    """Layer-2 weights under a layer-1 sidecar were evaluated as the layer-1 edit."""
    swapped = tmp_path / "edit1.safetensors"
    shutil.copy(models["edit2"], swapped)
    shutil.copy(io.checksum_path(models["edit2"]), io.checksum_path(swapped))
    shutil.copy(schema.edit_sidecar(models["edit1"]), schema.edit_sidecar(swapped))
    with pytest.raises(io.StoreError, match="belongs to other weights"):
        schema.read_edit(swapped)
    refused(capsys, perplexity(models, "a", swapped, tmp_path / "p.json"),
            schema.edit_sidecar(swapped), "belongs to other weights")
    meta = json.loads(schema.edit_sidecar(swapped).read_text())
    del meta["weights_sha256"]  # a sidecar an older curvmem wrote
    schema.edit_sidecar(swapped).write_text(json.dumps(meta))
    with pytest.raises(io.StoreError, match="older curvmem"):
        schema.read_edit(swapped)


def forged_edit(path, tensors, meta) -> None:
    """An edit file written around `write_edit` (which refuses NaN), checksums and all."""
    from safetensors.torch import save_file

    save_file(tensors, str(path))
    io.write_checksum(path)
    io.write_json(schema.edit_sidecar(path), {**meta, "weights_sha256": io.sha256_file(path)})


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_an_edit_holding_nan_or_inf_is_refused(models, tmp_path, capsys, bad):
    """It was applied, scored as perfect forgetting and reported a null perplexity."""
    tensors, meta = schema.read_edit(models["edit1"])
    broken = {k: v.clone() for k, v in tensors.items()}
    next(iter(broken.values()))[0, 0] = bad
    path = tmp_path / "bad.safetensors"
    with pytest.raises(io.StoreError, match="NaN or Inf"):
        schema.write_edit(path, broken, meta)
    assert not any(tmp_path.iterdir())
    forged_edit(path, broken, meta)
    model = load_model(models["a"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(io.StoreError, match="NaN or Inf"):
        edit.apply(model, path)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    refused(capsys, perplexity(models, "a", path, tmp_path / "p.json"), path, "NaN or Inf")
    assert not (tmp_path / "p.json").exists()


# --------------------------------------------------------------------------- eigen files


def test_eigenvectors_that_are_not_orthonormal_are_refused(models, tmp_path):
    import xarray as xr

    good = schema.read_layer(models["eigen"] / "layer_1.nc", "eigen")
    groups = {m: {k: v.copy() for k, v in g.items()} for m, g in good.groups.items()}
    groups["mlp.down_proj"]["G_eigenvectors"][:, 3] *= 1.05  # one column 5 % too long
    path = tmp_path / "layer_1.nc"
    with pytest.raises(io.StoreError, match="not orthonormal"):
        schema.write_layer(path, "eigen", 1, groups, good.attrs)
    tree = {"/": xr.Dataset(attrs={k: v for k, v in good.attrs.items()})}
    for name, vars_ in groups.items():
        tree[f"/{name}"] = xr.Dataset({var: (dims, vars_[var])
                                       for var, dims in schema.VARIABLES["eigen"].items()})
    xr.DataTree.from_dict(tree).to_netcdf(path, engine="h5netcdf")  # around the schema
    io.write_checksum(path)
    with pytest.raises(io.StoreError, match=r"mlp.down_proj/G_eigenvectors' are not orthonormal"):
        schema.read_layer(path, "eigen")
    schema.read_layer(models["eigen"] / "layer_1.nc", "eigen")  # float32 rounding passes


# --------------------------------------------------------------------------- checkpoints


def _checkpointed_run(tmp_path, damage, capsys):
    """A run of 6 batches checkpointed at 2 and 4, the checkpoint damaged, then rerun:
    (the rerun's result, an uninterrupted run's, stderr of the rerun)."""
    model = tiny_olmo2()
    modules = mlp_modules(model, [1])
    batches = batched(torch.randint(0, 61, (12, SEQ), generator=torch.Generator().manual_seed(3)),
                      2)
    clean = collect(model, batches, modules, LMTask(), seed=1)
    path = tmp_path / ".checkpoint.safetensors"
    collect(model, batches[:5], modules, LMTask(), seed=1, checkpoint=path, checkpoint_every=2,
            checkpoint_key="k")
    assert path.is_file()
    damage(path)
    capsys.readouterr()
    again = collect(model, batches, modules, LMTask(), seed=1, checkpoint=path,
                    checkpoint_every=2, checkpoint_key="k")
    return again, clean, capsys.readouterr().err


def _same(a, b) -> bool:
    return all(torch.equal(a.A[k], b.A[k]) for k in a.A) and \
        all(torch.equal(a.G[k], b.G[k]) for k in a.G) and a.n_tokens == b.n_tokens


def flip_byte(path) -> None:
    raw = bytearray(path.read_bytes())
    data = 8 + int.from_bytes(raw[:8], "little")  # past the header: the first tensor's values
    raw[data + 2] ^= 0x40  # its [0, 0] entry (the upper triangle, which the sums keep)
    path.write_bytes(bytes(raw))


def truncate(path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", [flip_byte, truncate], ids=["flipped", "truncated"])
def test_a_corrupt_checkpoint_is_discarded_with_one_line(tmp_path, capsys, damage):
    """A flipped byte resumed silently into wrong factors; a truncated file was a traceback."""
    again, clean, err = _checkpointed_run(tmp_path, damage, capsys)
    assert _same(again, clean)
    notes = [line for line in err.splitlines() if "discarded" in line]
    assert len(notes) == 1 and ".checkpoint.safetensors" in notes[0], err
    assert "resuming" not in err


def test_a_checkpoint_of_an_older_curvmem_is_discarded(tmp_path, capsys):
    def unsigned(path):  # the same sums, saved without a checksum as before
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(str(path), framework="pt") as f:
            meta = {k: v for k, v in f.metadata().items() if k != "sha256"}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        save_file(tensors, str(path), metadata=meta)

    again, clean, err = _checkpointed_run(tmp_path, unsigned, capsys)
    assert _same(again, clean) and "no checksum" in err


# --------------------------------------------------------------------------- budgets, duplicates


def test_collect_refuses_more_tokens_than_the_corpus_holds(models, tmp_path, capsys):
    """It silently collected the 120 tokens there were."""
    out = tmp_path / "f"
    line = refused(capsys, ("collect", "--model", models["a"], "--data", models["tokens"],
                            "--layers", 1, "--tokens", 20 * SEQ, "--seq-len", SEQ,
                            "--out", out), "--tokens 240", models["tokens"], "holds only 120")
    assert "10 sequences" in line
    assert not out.exists() or not any(out.iterdir())
    refused(capsys, ("collect", "--model", models["a"], "--data", models["text"], "--layers", 1,
                     "--tokens", 20 * SEQ, "--seq-len", SEQ, "--out", out),
            "--tokens 240", models["text"], "holds only")
    assert cli("collect", "--model", models["a"], "--data", models["tokens"], "--layers", 1,
               "--tokens", 10 * SEQ + 5, "--seq-len", SEQ, "--out", out) == 0  # it fits


def test_layers_and_modules_named_twice_are_refused_by_the_library(models, tmp_path):
    model = tiny_olmo2()
    with pytest.raises(AdapterError, match=r"layer\(s\) \[1\] requested twice"):
        mlp_modules(model, [1, 1])
    with pytest.raises(AdapterError, match="requested twice"):
        mlp_modules(model, [1], ["mlp.up_proj", "mlp.up_proj"])
    with pytest.raises(ValueError, match="--layers: 1 given twice"):
        edit.parse_spec(None, "1,1", "mlp.up_proj", 0.5)
    with pytest.raises(ValueError, match="--modules: mlp.up_proj given twice"):
        edit.parse_spec(None, "1", "mlp.up_proj,mlp.up_proj", 0.5)
    with pytest.raises(ValueError, match="layer 1 is given twice"):
        edit.parse_spec('{"1": {"mlp.up_proj": 0.5}, "01": {"mlp.up_proj": 0.9}}')
    with pytest.raises(ValueError, match="'mlp.up_proj' is given twice"):
        edit.parse_spec('{"1": {"mlp.up_proj": 0.5, "mlp.up_proj": 0.9}}')
    out = tmp_path / "f"
    with pytest.raises(AdapterError, match="requested twice"):
        collect_layer_files(models["a"], models["tokens"], [1, 1], out, tokens=6 * SEQ,
                            seq_len=SEQ)
    assert not out.exists()
