"""The core CLI (collect, merge, eigen, edit) end to end on tiny models saved to disk.

Models are written with save_pretrained; data is a tokenizer-free `.npy` token stream (plus a
word-level tokenizer saved beside one model, for text corpora). Every bad input must exit 2 with
one clear message on stderr and leave no output file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import tiny_gpt2, tiny_olmo2
from curvmem import edit, io, schema
from curvmem.cli import main
from curvmem.factors import LMTask, batched, collect
from curvmem.model import load_model, mlp_modules, model_fingerprint
from curvmem.model.load import read_layer
from curvmem.world import corpus

torch.set_num_threads(1)  # tiny models: threads only add contention (see test_factors.py)

SEQ = 12


def word_tokenizer():
    """A word-level tokenizer over the tiny models' 61 ids ("w2".."w60"), built offline."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocab = {"[EOS]": 0, "[UNK]": 1, **{f"w{i}": i for i in range(2, 61)}}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="[EOS]", unk_token="[UNK]")


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    """Tiny OLMo-2 (with tokenizer), a second OLMo-2 (other weights), GPT-2, and token data."""
    root = tmp_path_factory.mktemp("cli_core")
    paths = {"olmo": root / "olmo", "olmo_other": root / "olmo_other", "gpt2": root / "gpt2"}
    tiny_olmo2(seed=0).save_pretrained(paths["olmo"])
    word_tokenizer().save_pretrained(paths["olmo"])
    tiny_olmo2(seed=1).save_pretrained(paths["olmo_other"])
    tiny_gpt2().save_pretrained(paths["gpt2"])
    stream = torch.randint(0, 61, (20 * SEQ + 5,), generator=torch.Generator().manual_seed(0))
    paths["tokens"] = root / "tokens.npy"
    np.save(paths["tokens"], stream.numpy())
    paths["empty"] = root / "empty.npy"
    np.save(paths["empty"], np.zeros(0, dtype=np.int64))
    paths["empty_jsonl"] = root / "empty.jsonl"
    paths["empty_jsonl"].write_text("")
    return {k: str(v) for k, v in paths.items()}


def cli(*args) -> int:
    return main([str(a) for a in args])


def collect_args(disk, out, model="olmo", layers="1", *extra, tokens=20 * SEQ):
    return ("collect", "--model", disk[model], "--data", disk["tokens"], "--layers", layers,
            "--tokens", tokens, "--seq-len", SEQ, "--batch-size", 3, *extra, "--out", out)


def read_factors(path):
    return read_layer(path, "factors")


def max_rel_err(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(got - ref).max() / np.abs(ref).max())


# --------------------------------------------------------------------------- the pipeline


def test_collect_writes_the_librarys_factors(disk, tmp_path):
    out = tmp_path / "f"
    assert cli(*collect_args(disk, out, "olmo", "0,2", "--fisher", "empirical")) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "layer_0.nc", "layer_0.nc.cost.json", "layer_0.nc.sha256",
        "layer_2.nc", "layer_2.nc.cost.json", "layer_2.nc.sha256"]
    model = load_model(disk["olmo"])
    tokens = corpus.load_token_sequences(disk["tokens"], SEQ, None, 20 * SEQ)
    assert tokens.shape == (20, SEQ)  # 5 leftover tokens are dropped
    modules = mlp_modules(model, [0, 2])
    want = collect(model, batched(tokens, 3), modules, LMTask(), fisher="empirical")
    for layer in (0, 2):
        f = read_layer(schema.layer_path(out, layer), "factors", model=model)
        assert f.attrs["n_tokens"] == 20 * (SEQ - 1) and f.attrs["seq_len"] == SEQ
        assert f.attrs["fisher"] == "empirical"
        assert f.attrs["model_fingerprint"] == model_fingerprint(model)
        assert sorted(f.groups) == ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj"]
        for name, g in f.groups.items():
            assert g["A"].dtype == np.float32
            for side in ("A", "G"):
                assert max_rel_err(g[side], getattr(want, side)[(layer, name)]) < 1e-6


def test_float64_factors_are_stored_as_float64(disk, tmp_path):
    out = tmp_path / "f"
    assert cli(*collect_args(disk, out, "gpt2", "1", "--dtype", "float64", tokens=6 * SEQ)) == 0
    f = read_factors(out / "layer_1.nc")
    assert all(g[s].dtype == np.float64 for g in f.groups.values() for s in ("A", "G"))


def test_sharded_and_merged_equals_single_pass_and_sampling_is_deterministic(disk, tmp_path):
    single, again = tmp_path / "single", tmp_path / "again"
    assert cli(*collect_args(disk, single, "olmo", "1", "--seed", 4)) == 0
    assert cli(*collect_args(disk, again, "olmo", "1", "--seed", 4)) == 0
    a, b = read_factors(single / "layer_1.nc"), read_factors(again / "layer_1.nc")
    assert a.attrs["fisher"] == "sampled" and a.attrs["seed"] == 4
    for name in a.groups:  # float32, same seed: bit-identical
        for side in ("A", "G"):
            assert np.array_equal(a.groups[name][side], b.groups[name][side])
    shard_files = []
    for k in range(3):
        out = tmp_path / f"shard{k}"
        assert cli(*collect_args(disk, out, "olmo", "1", "--seed", 4, "--shard", f"{k}/3")) == 0
        shard_files.append(out / "layer_1.nc")
    # shards of 20 sequences: 6, 7, 7
    assert [read_factors(p).attrs["n_tokens"] for p in shard_files] == [66, 77, 77]
    merged = tmp_path / "merged" / "layer_1.nc"
    assert cli("merge", *shard_files[::-1], "--out", merged) == 0  # order does not matter
    m = read_factors(merged)
    assert m.attrs["n_tokens"] == a.attrs["n_tokens"] == 20 * (SEQ - 1)
    for name in a.groups:
        for side in ("A", "G"):
            # float32 sums in another order: equal to float32 rounding, not bit for bit
            assert max_rel_err(m.groups[name][side], a.groups[name][side]) < 1e-6


def test_merge_refuses_incomplete_or_foreign_shards(disk, tmp_path, capsys):
    files = []
    for k, seed in ((0, 0), (1, 0), (1, 9)):
        out = tmp_path / f"s{k}_{seed}"
        assert cli(*collect_args(disk, out, "gpt2", "0", "--seed", seed, "--shard", f"{k}/3",
                                 tokens=6 * SEQ)) == 0
        files.append(out / "layer_0.nc")
    capsys.readouterr()
    merged = tmp_path / "m" / "layer_0.nc"
    assert cli("merge", files[0], files[1], "--out", merged) == 2
    assert "not exactly" in capsys.readouterr().err
    assert cli("merge", files[0], files[2], "--out", merged) == 2
    err = capsys.readouterr().err
    assert "seed" in err and "only shards of one run" in err
    assert not merged.exists()


def test_collect_eigen_edit_apply_on_gpt2_conv1d(disk, tmp_path):
    fdir, edir, path = tmp_path / "f", tmp_path / "e", tmp_path / "x" / "edit.safetensors"
    assert cli(*collect_args(disk, fdir, "gpt2", "1", "--fisher", "empirical")) == 0
    assert cli("eigen", "--factors", fdir / "layer_1.nc", "--out", edir / "layer_1.nc") == 0
    assert cli("edit", "--model", disk["gpt2"], "--eigen", edir, "--layers", "1",
               "--modules", "mlp.c_fc,mlp.c_proj", "--rho", "0.6", "--out", path) == 0
    meta = json.loads(path.with_suffix(".json").read_text())
    for key in ("method", "spec", "modules", "model_fingerprint"):
        assert key in meta, key
    assert meta["method"] == "kfac" and "seconds" not in meta  # measured: in its cost file
    measured = io.read_cost(path)
    assert measured["seconds"] > 0 and measured["peak_rss_mb"] > 0
    stored, _ = schema.read_edit(path)
    model = load_model(disk["gpt2"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    edit.apply(model, path)
    eigen = read_layer(edir / "layer_1.nc", "eigen")
    for m in mlp_modules(model, [1]):
        assert stored[m.param_name].shape == (m.d_in, m.d_out)  # Conv1D layout in the file
        g = {k: v.astype(np.float64) for k, v in eigen.groups[m.name].items()}
        UG, UA = g["G_eigenvectors"], g["A_eigenvectors"]
        W = before[m.param_name].double().numpy().T
        C = UG.T @ W @ UA
        M = edit_mask_brute_force(g["G_eigenvalues"], g["A_eigenvalues"], 0.6)
        np.testing.assert_allclose(m.weight().detach().double().numpy(), UG @ (C * M) @ UA.T,
                                   rtol=0, atol=1e-6)
        assert meta["modules"][m.param_name]["mass_kept"] >= 0.6
    edited = {m.param_name for m in mlp_modules(model, [1])}
    for k, v in model.state_dict().items():
        assert k in edited or torch.equal(v, before[k]), k


def edit_mask_brute_force(lam, mu, rho):
    prod = np.outer(lam, mu).ravel()
    order = np.lexsort((np.arange(prod.size), -prod))
    k = int(np.argmax(np.cumsum(prod[order]) >= rho * lam.sum() * mu.sum())) + 1
    mask = np.zeros(prod.size, bool)
    mask[order[:k]] = True
    return mask.reshape(lam.size, mu.size)


def test_svd_edit_via_cli(disk, tmp_path):
    path = tmp_path / "svd.safetensors"
    assert cli("edit", "--model", disk["gpt2"], "--method", "svd", "--layers", "2",
               "--modules", "mlp.c_fc", "--svd-drop", "0.5", "--out", path) == 0
    meta = json.loads(path.with_suffix(".json").read_text())
    stats = meta["modules"]["transformer.h.2.mlp.c_fc.weight"]
    assert meta["method"] == "svd" and stats["singular_values_kept"] == 8


# --------------------------------------------------------------------------- bad inputs


def assert_refused(capsys, argv, words, out_path):
    """Exit 2, one line on stderr naming the problem, and nothing written at out_path."""
    capsys.readouterr()
    assert cli(*argv) == 2
    # stderr may also carry progress bars (transformers' weight loading); the error is one line
    errors = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(errors) == 1, errors
    err = errors[0]
    assert err.startswith(f"curvmem {argv[0]}: error: "), err
    for w in words:
        assert w in err, (w, err)
    assert not os.path.exists(out_path) or not os.listdir(out_path), os.listdir(out_path)


@pytest.fixture(scope="module")
def olmo_eigen(disk, tmp_path_factory):
    root = tmp_path_factory.mktemp("olmo_eigen")
    assert cli(*collect_args(disk, root / "f", "olmo", "1", "--fisher", "empirical",
                             tokens=6 * SEQ)) == 0
    assert cli("eigen", "--factors", root / "f" / "layer_1.nc", "--out",
               root / "e" / "layer_1.nc") == 0
    return root


def test_bad_collect_inputs(disk, tmp_path, capsys):
    out = tmp_path / "out"
    assert_refused(capsys, collect_args(disk, out, "olmo", "1", "--modules", "mlp.c_fc"),
                   ["unknown module", "mlp.c_fc", "mlp.gate_proj"], out)
    assert_refused(capsys, collect_args(disk, out, "olmo", "3"),
                   ["layer 3 is out of range", "0..2"], out)
    empty = list(collect_args(disk, out, "olmo", "1"))
    empty[empty.index("--data") + 1] = disk["empty"]
    assert_refused(capsys, empty, ["no complete sequence"], out)
    assert_refused(capsys, collect_args(disk, out, "olmo", "1", tokens=SEQ - 1),
                   ["no complete sequence"], out)
    empty[empty.index("--data") + 1] = disk["empty_jsonl"]  # a text corpus, with the tokenizer
    assert_refused(capsys, empty, ["no complete sequence"], out)
    assert_refused(capsys, collect_args(disk, out, "olmo", "1", "--shard", "3/3"),
                   ["0 <= k < n"], out)


def test_bad_inputs_through_the_library(disk, tmp_path):
    model = tiny_olmo2()
    with pytest.raises(ValueError, match="unknown module"):
        mlp_modules(model, [1], ["mlp.c_fc"])
    with pytest.raises(ValueError, match="out of range"):
        mlp_modules(model, [3])
    with pytest.raises(ValueError, match="no complete sequence"):
        corpus.load_token_sequences(disk["empty"], SEQ)
    with pytest.raises(ValueError, match="no complete sequence"):
        corpus.load_token_sequences(disk["empty_jsonl"], SEQ, tokenizer=word_tokenizer())
    with pytest.raises(ValueError, match=r"rho must be in \(0, 1\]"):
        edit.check_rho(0)


def test_bad_edit_inputs(disk, olmo_eigen, tmp_path, capsys):
    out = tmp_path / "x"
    base = ["edit", "--model", disk["olmo"], "--eigen", olmo_eigen / "e", "--layers", "1",
            "--modules", "mlp.gate_proj,mlp.up_proj", "--out", out / "e.safetensors"]
    for rho in ("0", "1.5", "-0.2", "nan"):
        assert_refused(capsys, [*base, "--rho", rho], ["rho must be in (0, 1]"], out)
    other = [*base, "--rho", "0.6"]
    other[other.index("--model") + 1] = disk["olmo_other"]
    assert_refused(capsys, other, ["fingerprint", "exact weights"], out)
    bad_layer = [*base, "--rho", "0.6"]
    bad_layer[bad_layer.index("--layers") + 1] = "7"
    assert_refused(capsys, bad_layer, ["layer 7 is out of range"], out)
    bad_mod = [*base, "--rho", "0.6"]
    bad_mod[bad_mod.index("--modules") + 1] = "mlp.fc1"
    assert_refused(capsys, bad_mod, ["unknown module", "mlp.fc1"], out)
    no_eigen = [*base, "--rho", "0.6"]
    no_eigen[no_eigen.index("--layers") + 1] = "0"  # no layer_0.nc in the eigen dir
    assert_refused(capsys, no_eigen, ["layer_0.nc", "no such eigen file"], out)
    # rho = 1 is allowed and leaves the weights as they are
    assert cli(*base, "--rho", "1") == 0
    tensors, _ = schema.read_edit(out / "e.safetensors")
    params = dict(load_model(disk["olmo"]).named_parameters())
    for name, t in tensors.items():
        torch.testing.assert_close(t, params[name].detach(), rtol=0, atol=1e-6)


def test_edit_in_bfloat16_matches_the_float32_edit_and_applies_to_either(disk, olmo_eigen,
                                                                         tmp_path):
    """--dtype bfloat16 halves the memory of a 7B edit; it is the same edit, rounded."""
    from curvmem.edit import apply

    args = ["edit", "--model", disk["olmo"], "--eigen", olmo_eigen / "e", "--layers", "1",
            "--modules", "mlp.gate_proj,mlp.up_proj", "--rho", "0.6"]
    assert cli(*args, "--out", tmp_path / "f32.safetensors") == 0
    assert cli(*args, "--dtype", "bfloat16", "--out", tmp_path / "bf16.safetensors") == 0
    f32, meta32 = schema.read_edit(tmp_path / "f32.safetensors")
    bf16, meta16 = schema.read_edit(tmp_path / "bf16.safetensors")
    assert meta16["load_dtype"] == "bfloat16" and meta32["load_dtype"] == "float32"
    # the default (auto) loads a checkpoint in the dtype it stores: float32 here, bf16 below
    assert cli(*args, "--dtype", "float32", "--out", tmp_path / "f32b.safetensors") == 0
    assert torch.equal(f32[next(iter(f32))],
                       schema.read_edit(tmp_path / "f32b.safetensors")[0][next(iter(f32))])
    from curvmem.model import load_model

    load_model(disk["olmo"], dtype=torch.bfloat16).save_pretrained(tmp_path / "stored16")
    stored16 = list(args)
    stored16[stored16.index("--model") + 1] = tmp_path / "stored16"
    assert cli(*stored16, "--out", tmp_path / "auto16.safetensors") == 0
    auto16, meta_auto = schema.read_edit(tmp_path / "auto16.safetensors")
    assert meta_auto["load_dtype"] == "bfloat16"
    for name, t in auto16.items():  # the same edit as loading the float32 weights rounded to bf16
        assert torch.equal(t, bf16[name])
    assert meta16["model_fingerprint"] == meta32["model_fingerprint"]
    for name, t in bf16.items():
        assert t.dtype == torch.bfloat16
        # computed from bf16-rounded weights, then rounded: within a few bf16 steps of float32's
        err = (t.float() - f32[name]).norm() / f32[name].norm()
        assert err < 1e-2, (name, float(err))
    model = load_model(disk["olmo"])  # float32: the bf16 edit applies (fingerprint matches)
    apply(model, tmp_path / "bf16.safetensors")
    name = next(iter(bf16))
    torch.testing.assert_close(dict(model.named_parameters())[name].detach(), bf16[name].float())


def write_raw_factor_file(path, A, G, attrs):
    """A factors file written around curvmem.schema (which refuses NaN), as a corrupt job might."""
    import xarray as xr

    tree = {"/": xr.Dataset(attrs=attrs),
            "/mlp.c_fc": xr.Dataset({"A": (("a_i", "a_j"), A), "G": (("g_i", "g_j"), G)})}
    xr.DataTree.from_dict(tree).to_netcdf(path, engine="h5netcdf")


def test_bad_factor_files_for_eigen(disk, tmp_path, capsys):
    good_dir = tmp_path / "good"
    assert cli(*collect_args(disk, good_dir, "gpt2", "0", tokens=6 * SEQ)) == 0
    good = read_factors(good_dir / "layer_0.nc")
    out = tmp_path / "eig"
    nan_path = tmp_path / "nan.nc"
    A = good.groups["mlp.c_fc"]["A"].copy()
    A[2, 3] = np.nan
    write_raw_factor_file(nan_path, A, good.groups["mlp.c_fc"]["G"], good.attrs)
    io.write_checksum(nan_path)  # past the checksum: the reader's own checks refuse it
    assert_refused(capsys, ["eigen", "--factors", nan_path, "--out", out / "layer_0.nc"],
                   ["NaN or inf", "mlp.c_fc/A"], out)
    data = (good_dir / "layer_0.nc").read_bytes()
    trunc = tmp_path / "trunc.nc"
    trunc.write_bytes(data[: len(data) * 2 // 3])
    io.write_checksum(trunc)
    assert_refused(capsys, ["eigen", "--factors", trunc, "--out", out / "layer_0.nc"],
                   ["truncated"], out)
    with pytest.raises(io.StoreError, match="NaN or inf"):
        read_layer(nan_path, "factors")
    with pytest.raises(io.StoreError, match="truncated"):
        read_layer(trunc, "factors")


def test_corpus_fingerprint_sees_the_packing():
    """The corpus fingerprint keys checkpoint reuse (cli/core.py run_collect, factors.run_key has
    no seq_len). The same stream packed as [20, 12] or [10, 24] holds the same bytes, so with a
    bytes-only fingerprint a killed --seq-len 12 run would be resumed by a --seq-len 24 rerun."""
    stream = torch.arange(240)
    assert corpus.fingerprint_tensor(stream.view(20, 12)) != \
        corpus.fingerprint_tensor(stream.view(10, 24))


# --------------------------------------------------------------------------- checkpoints


def run_cli_subprocess(args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-c", "import sys; from curvmem.cli import main; sys.exit(main())",
           *[str(a) for a in args]]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


@pytest.mark.slow
def test_killed_collect_resumes_from_its_checkpoint(tmp_path, capsys):
    """SIGKILL after a checkpoint exists; the rerun says it resumes and ends equal to a clean run
    (to float32 summation rounding)."""
    model_dir = tmp_path / "model"
    tiny_olmo2(layers=2, d=32, ff=48).save_pretrained(model_dir)
    n_seq, seq = 600, 32
    data = tmp_path / "tokens.npy"
    np.save(data, torch.randint(0, 61, (n_seq * seq,),
                                generator=torch.Generator().manual_seed(0)).numpy())
    out = tmp_path / "out"
    common = ["collect", "--model", model_dir, "--data", data, "--layers", "0,1", "--tokens",
              n_seq * seq, "--seq-len", seq, "--batch-size", 4, "--seed", 3]
    args = [*common, "--checkpoint-every", 5, "--out", out]
    proc = run_cli_subprocess(args)
    deadline = time.time() + 120
    while not list(out.glob(".checkpoint-*.safetensors")):
        assert proc.poll() is None, "finished before any checkpoint: make the stream longer"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not list(out.glob("layer_*.nc"))  # a killed job leaves no complete-looking file
    from safetensors import safe_open

    with safe_open(str(next(out.glob(".checkpoint-*.safetensors"))), "pt") as f:
        done = int(f.metadata()["batches_done"])
    assert 0 < done < n_seq // 4

    proc = run_cli_subprocess(args)
    log, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    log += err  # tqdm.write reports on stdout
    assert "resuming from" in log and f"{done} batches" in log, log
    assert not list(out.glob(".checkpoint-*"))  # removed after success

    clean = tmp_path / "clean"  # in this process (one thread, like the subprocesses): faster
    capsys.readouterr()
    assert cli(*common, "--out", clean) == 0  # no checkpoints
    assert "resuming" not in "".join(capsys.readouterr())
    for layer in (0, 1):
        a, b = read_factors(out / f"layer_{layer}.nc"), read_factors(clean / f"layer_{layer}.nc")
        assert a.attrs["n_tokens"] == b.attrs["n_tokens"] == n_seq * (seq - 1)
        for name in a.groups:
            for side in ("A", "G"):
                # The checkpoint holds the float32 running sums exactly, so the two runs add the
                # same batches in the same order; only the kernels' own summation may differ
                # between processes (MKL's AVX2 path is not bit-reproducible across buffers and
                # thread counts). A float32 sum of n terms errs by at most n u of its magnitude:
                # n = the positions of a batch's Gram (4 x 31) plus the batches summed (150). A lost
                # or repeated batch would move the factors by about 1/150 of their size.
                want = np.asarray(b.groups[name][side])
                bound = (4 * (seq - 1) + n_seq // 4) * 2.0 ** -24 * np.abs(want).max()
                np.testing.assert_allclose(a.groups[name][side], want, rtol=0, atol=bound,
                                           err_msg=f"{name} {side}")


def test_every_help_page_formats():
    """`curvmem --help` and every subcommand's help render (a bare '%' in a help string made
    argparse's top-level help crash with a TypeError)."""
    import argparse

    from curvmem.cli import build_parser

    pages = []

    def walk(parser, path):
        pages.append((path, parser.format_help()))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")

    walk(build_parser(), "curvmem")
    assert len(pages) > 20 and all("usage:" in text for _, text in pages)
    assert "95 % intervals" in dict(pages)["curvmem"]
