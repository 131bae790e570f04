"""The Python API (curvmem.api) against the CLI on a tiny OLMo-2 saved to disk: the same factors,
eigenbases, edits and evaluation numbers as `curvmem collect`, `eigen`, `edit` and `evaluate`
write for the same data and seed; apply / restore round-trips the weights exactly."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import curvmem
import curvmem.edit
import curvmem.eigen
from conftest import tiny_olmo2
from curvmem import api, schema
from curvmem.cli import main
from curvmem.io import read_json
from curvmem.model import load_model, load_tokenizer

torch.set_num_threads(1)  # tiny models: threads only add contention

SEQ, LAYERS, MODULES = 12, [1, 2], ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
# Measurements (older curvmem kept them among the attributes), where the data came from (a file
# for the CLI, a tensor here), and the sha256 of the weights file: safetensors writes its header's
# metadata in hash-map order, so equal weights need not make equal bytes (the weights themselves
# are compared below).
UNCOMPARED = {"cost_seconds", "cost_peak_rss_mb", "data", "corpus", "curvmem_version",
              "seconds", "edit_seconds", "peak_rss_mb", "upstream_seconds",
              "upstream_peak_rss_mb", "weights_sha256"}


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def cli(*args) -> None:
    assert main([str(a) for a in args]) == 0


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    """A tiny OLMo-2 with a BPE tokenizer in one directory, token ids (.npy), texts and items."""
    from curvmem.model.lm import train_tokenizer

    root = tmp_path_factory.mktemp("api")
    corpus = root / "corpus.jsonl"
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    texts = [" ".join(words[(i * k) % len(words)] for k in range(1, 14)) for i in range(40)]
    write_jsonl(corpus, [{"text": t} for t in texts])
    model_dir = root / "model"
    train_tokenizer(corpus, model_dir, vocab_size=300)
    vocab = len(load_tokenizer(model_dir))
    tiny_olmo2(vocab=vocab).save_pretrained(model_dir)
    ids = torch.randint(0, vocab, (18, SEQ), generator=torch.Generator().manual_seed(0))
    np.save(root / "tokens.npy", ids.numpy())
    items = [{"prefix_ids": row[:6].tolist(), "suffix_ids": row[6:].tolist(), "id": i}
             for i, row in enumerate(ids[:5])]
    write_jsonl(root / "items.jsonl", items)
    return {"root": root, "model": str(model_dir), "tokens": str(root / "tokens.npy"),
            "ids": ids, "corpus": str(corpus), "texts": texts, "items": items,
            "items_file": str(root / "items.jsonl")}


@pytest.fixture(scope="module")
def made(disk):
    """The CLI's factor and eigen files, and the API's factors and eigenbases of the same run."""
    root = disk["root"]
    cli("collect", "--model", disk["model"], "--data", disk["tokens"], "--layers", "1,2",
        "--tokens", 18 * SEQ, "--seq-len", SEQ, "--batch-size", 4, "--seed", 3,
        "--out", root / "factors")
    for layer in LAYERS:
        cli("eigen", "--factors", root / "factors" / f"layer_{layer}.nc",
            "--out", root / "eigen" / f"layer_{layer}.nc")
    model = load_model(disk["model"])
    factors = curvmem.collect(model, disk["ids"], layers=LAYERS, batch_size=4, seed=3)
    return model, factors, curvmem.eigenbases(factors)


def comparable(attrs: dict) -> dict:
    return {k: v for k, v in attrs.items() if k not in UNCOMPARED}


def test_factors_and_eigenbases_equal_the_clis(disk, made, tmp_path):
    _, factors, bases = made
    factors.save(tmp_path / "factors")
    bases.save(tmp_path / "eigen")
    assert factors.layers == bases.layers == LAYERS
    for layer in LAYERS:
        for kind, ours in (("factors", tmp_path / "factors"), ("eigen", tmp_path / "eigen")):
            theirs = schema.read_layer(schema.layer_path(disk["root"] / kind, layer), kind)
            saved = schema.read_layer(schema.layer_path(ours, layer), kind)
            assert comparable(saved.attrs) == comparable(theirs.attrs)
            assert list(saved.groups) == list(theirs.groups) == MODULES
            for name, variables in theirs.groups.items():
                for var, value in variables.items():
                    in_memory = (getattr(factors, var)[(layer, name)].numpy() if kind == "factors"
                                 else bases[(layer, name)][var])
                    assert np.array_equal(in_memory, value), (kind, layer, name, var)
                    assert np.array_equal(saved.groups[name][var], value)


@pytest.mark.parametrize("variant", [
    {"args": ["--rho", 0.6], "kw": {"rho": 0.6}},
    {"args": ["--rho", 0.8, "--keep", "bottom"], "kw": {"rho": 0.8, "keep": "bottom"}},
    {"args": ["--method", "svd", "--svd-drop", 0.25], "kw": {"method": "svd", "svd_drop": 0.25}},
], ids=["kfac", "kfac-bottom", "svd"])
def test_an_edit_equals_the_clis(disk, made, tmp_path, variant):
    model, _, bases = made
    out = tmp_path / "cli.safetensors"
    cli("edit", "--model", disk["model"], "--eigen", disk["root"] / "eigen", "--layers", "1,2",
        "--modules", "mlp.up_proj,mlp.down_proj", *variant["args"], "--out", out)
    tensors, meta = schema.read_edit(out)
    made_from = [None] if "svd_drop" in variant["kw"] else [bases, disk["root"] / "eigen"]
    for source in made_from:  # eigenbases in memory, and a directory of eigen files
        edit = curvmem.make_edit(model, source, layers="1,2",
                                 modules=["mlp.up_proj", "mlp.down_proj"], **variant["kw"])
        edit.save(tmp_path / "api.safetensors")
        saved_tensors, saved_meta = schema.read_edit(tmp_path / "api.safetensors")
        assert sorted(edit.tensors) == sorted(tensors)
        for name, t in tensors.items():
            assert torch.equal(edit.tensors[name], t) and torch.equal(saved_tensors[name], t)
        assert comparable(saved_meta) == comparable(meta)


def test_apply_and_restore_round_trip_the_weights_exactly(disk, made, tmp_path):
    model, _, bases = made
    before = {k: v.clone() for k, v in model.state_dict().items()}
    edit = curvmem.make_edit(model, bases, rho=0.5)  # every module of every layer held
    assert sorted(edit.meta["spec"]) == ["1", "2"] and len(edit.tensors) == 6
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # not applied
    with edit:
        assert edit.applied and edit.apply() is edit  # a second apply changes nothing
        state = model.state_dict()
        for k, v in before.items():
            assert torch.equal(state[k], edit.tensors[k] if k in edit.tensors else v)
        assert any(not torch.equal(state[k], before[k]) for k in edit.tensors)
    assert not edit.applied
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    # the saved file is the one `curvmem evaluate --edit` applies, to a fresh copy of the model
    edit.save(tmp_path / "e.safetensors")
    fresh = load_model(disk["model"])
    curvmem.edit.apply(fresh, tmp_path / "e.safetensors")
    edit.apply()
    try:
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in fresh.state_dict().items())
    finally:
        edit.restore()


def test_evaluations_equal_curvmem_evaluate(disk, made, tmp_path):
    model, _, bases = made
    tokenizer = load_tokenizer(disk["model"])
    edit = curvmem.make_edit(model, bases, rho=0.4, layers=[2])
    edit_file = tmp_path / "e.safetensors"
    edit.save(edit_file)
    for kind, data, ours in (
            ("memorization", disk["items_file"],
             lambda: curvmem.recitation(model, tokenizer, disk["items"])),
            ("perplexity", disk["corpus"],
             lambda: curvmem.perplexity(model, tokenizer, disk["texts"], block_len=16)),
            ("coherence", disk["corpus"],
             lambda: curvmem.coherence(model, tokenizer, disk["corpus"], edit, block_len=16))):
        out = tmp_path / f"{kind}.json"
        extra = ["--block-len", 16] if kind != "memorization" else []
        cli("evaluate", kind, "--model", disk["model"], "--edit", edit_file, "--data", data,
            *extra, "--threads", 1, "--out", out)
        theirs = read_json(out)
        if kind == "coherence":
            result = ours()
            assert not edit.applied  # coherence leaves the model as it found it
        else:
            with edit:
                result = ours()
        assert result == {k: v for k, v in theirs.items() if k in result}, kind
        assert len(result) > 3


def test_task_accuracy_equals_curvmem_evaluate_tasks(disk, made, tmp_path):
    model, _, _ = made
    tokenizer = load_tokenizer(disk["model"])
    rows = [{"category": "arithmetic", "prompt": t[:20], "answer": t.split()[-1]}
            for t in disk["texts"][:6]]
    write_jsonl(tmp_path / "tasks.jsonl", rows)
    cli("evaluate", "tasks", "--model", disk["model"], "--data", tmp_path / "tasks.jsonl",
        "--threads", 1, "--out", tmp_path / "tasks.json")
    theirs = read_json(tmp_path / "tasks.json")
    ours = curvmem.task_accuracy(model, tokenizer, tmp_path / "tasks.jsonl")
    assert ours == {k: v for k, v in theirs.items() if k in ours}
    assert set(ours) >= {"accuracy", "overall", "items"}


def bad_calls(model, bases, disk):
    other = tiny_olmo2(vocab=model.get_input_embeddings().num_embeddings, seed=5)
    return {
        "rho out of range": lambda: curvmem.make_edit(model, bases, rho=1.5),
        "spec and rho": lambda: curvmem.make_edit(model, bases, spec={1: {"mlp.up_proj": 0.5}},
                                                  rho=0.5),
        "no value": lambda: curvmem.make_edit(model, bases),
        "unknown method": lambda: curvmem.make_edit(model, bases, rho=0.5, method="lora"),
        "layer not held": lambda: curvmem.make_edit(model, bases, rho=0.5, layers=[0]),
        "other weights": lambda: curvmem.make_edit(other, bases, rho=0.5),
        "svd with bases": lambda: curvmem.make_edit(model, bases, method="svd", svd_drop=0.1),
        "no eigen files": lambda: curvmem.make_edit(model, disk["root"], rho=0.5),
        "ids outside the vocabulary": lambda: curvmem.collect(model, disk["ids"] + 1000),
        "float batches": lambda: curvmem.collect(model, [disk["ids"].float()]),
        "unknown module": lambda: curvmem.collect(model, disk["ids"], modules=["mlp.fc9"]),
        "unknown fisher": lambda: curvmem.collect(model, disk["ids"], layers=[1],
                                                  fisher="exact"),
        "item without fields": lambda: curvmem.task_accuracy(model, None, [{"prompt": "a"}]),
        "a layer twice": lambda: curvmem.make_edit(model, bases, rho=0.5, layers="1,1"),
        "a module twice": lambda: curvmem.make_edit(model, bases, rho=0.5, layers=[1],
                                                    modules="mlp.up_proj,mlp.up_proj"),
    }


BAD_CALLS = ["rho out of range", "spec and rho", "no value", "unknown method", "layer not held",
             "other weights", "svd with bases", "no eigen files", "ids outside the vocabulary",
             "float batches", "unknown module", "unknown fisher", "item without fields",
             "a layer twice", "a module twice"]


@pytest.mark.parametrize("case", BAD_CALLS)
def test_bad_calls_raise_one_clear_error_and_change_nothing(disk, made, case):
    model, _, bases = made
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = bad_calls(model, bases, disk)
    assert sorted(calls) == sorted(BAD_CALLS)
    with pytest.raises(ValueError) as e:
        calls[case]()
    assert len(str(e.value).splitlines()) == 1
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_a_directory_of_eigen_files_is_checked_layer_by_layer(disk, made, tmp_path):
    import shutil

    model, _, _ = made
    other = tiny_olmo2(vocab=model.get_input_embeddings().num_embeddings, seed=5)
    curvmem.eigenbases(curvmem.collect(other, disk["ids"], layers=[1])).save(tmp_path)
    for name in ("layer_2.nc", "layer_2.nc.sha256"):  # layer 2: this model's, from the CLI
        shutil.copy(disk["root"] / "eigen" / name, tmp_path / name)
    curvmem.make_edit(model, tmp_path, rho=0.5, layers=[2])  # layer 2 alone is this model's
    with pytest.raises(ValueError, match="eigenbases of layer 1: computed on model"):
        curvmem.make_edit(model, tmp_path, rho=0.5)


def test_an_edit_refuses_a_model_changed_since(disk, made):
    model, _, bases = made
    edit = curvmem.make_edit(model, bases, rho=0.5, layers=[1])
    weight = model.get_input_embeddings().weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.mul_(2.0)
    try:
        with pytest.raises(ValueError, match="the edit: made for model"):
            edit.apply()
        assert not edit.applied
    finally:
        with torch.no_grad():
            weight.copy_(saved)


def test_apply_checks_the_model_again_only_when_something_else_changed_it(made, monkeypatch):
    model, _, bases = made
    edit = curvmem.make_edit(model, bases, rho=0.5, layers=[1])
    checks = []
    real_check = api.check_identity
    monkeypatch.setattr(api, "check_identity", lambda *a, **k: checks.append(1) or real_check(*a, **k))
    for _ in range(3):  # apply, restore (bit for bit): nothing to hash again
        with edit:
            pass
    assert len(checks) == 1
    weight = model.get_input_embeddings().weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.add_(0.0)  # an in-place change, even of no value, is checked again
        with edit:
            pass
        assert len(checks) == 2
        with torch.no_grad():
            weight.mul_(3.0)
        with pytest.raises(ValueError, match="the edit: made for model"):
            edit.apply()
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert not edit.applied


def test_import_curvmem_stays_cheap_and_keeps_its_modules():
    code = ("import sys, curvmem; assert 'torch' not in sys.modules, 'torch imported'; "
            "print(sorted(set(curvmem.__all__) - {'__version__'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.replace("'", '"')) == sorted(api.__all__)
    assert curvmem.collect is api.collect and curvmem.make_edit is api.make_edit
    # the library's modules of those names are still modules (hence eigenbases / make_edit)
    assert callable(curvmem.edit.apply) and callable(curvmem.eigen.eigen_layer)
    with pytest.raises(AttributeError, match="no attribute 'colect'"):
        _ = curvmem.colect


def test_a_vit_collects_at_the_cls_position_as_the_library_does():
    from curvmem import factors as library
    from curvmem.model import mlp_modules, vit

    model, _ = vit.build_model(4, (1, 8, 8), preset="smoke", seed=0)
    model = model.eval()
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(10, 1, 8, 8, generator=g), torch.randint(0, 4, (10,), generator=g)
    ours = curvmem.collect(model, (images, labels), layers=[0], batch_size=4, seed=2)
    theirs = library.collect(model, library.batched((images, labels), 4),
                             mlp_modules(model, [0]), library.ClassificationTask(), seed=2)
    assert ours.attrs["task"] == "cls" and ours.attrs["n_tokens"] == 10  # one position an image
    assert sorted(ours.G) == sorted(theirs.G) == [(0, "mlp.fc1"), (0, "mlp.fc2")]
    for key in theirs.G:
        assert torch.equal(ours.A[key], theirs.A[key]) and torch.equal(ours.G[key], theirs.G[key])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with curvmem.make_edit(model, curvmem.eigenbases(ours), rho=0.5) as edit:
        assert len(edit.tensors) == 2
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_collect_and_the_evaluations_run_without_dropout_and_give_the_mode_back(disk):
    from conftest import tiny_gpt2

    model = tiny_gpt2()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.5  # in training mode, every forward pass would differ
    ids = disk["ids"][:4] % 61
    items = [{"prefix_ids": row[:4].tolist(), "suffix_ids": row[4:].tolist()} for row in ids]
    model.train()
    first = curvmem.collect(model, ids, layers=[1])
    second = curvmem.collect(model, ids, layers=[1])
    assert all(torch.equal(first.G[k], second.G[k]) for k in first.G)
    assert curvmem.recitation(model, None, items) == curvmem.recitation(model, None, items)
    assert model.training


def public_callables():
    """(name, function) of every public function and method of the API (properties are
    attributes, dunders are Python's)."""
    import inspect

    for name in api.__all__:
        obj = getattr(api, name)
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if not attr.startswith("_") and inspect.isfunction(member):
                    yield f"{name}.{attr}", member
                elif isinstance(member, classmethod):
                    yield f"{name}.{attr}", member.__func__
        else:
            yield name, obj


def test_every_public_function_documents_its_args_returns_and_raises():
    import inspect

    missing = []
    for name, fn in public_callables():
        doc = inspect.getdoc(fn) or ""
        params = [p for p in inspect.signature(fn).parameters if p not in ("self", "cls")]
        if params and "Args:" not in doc:
            missing.append(f"{name}: Args")
        missing += [f"{name}: {arg}" for arg in params if f"\n    {arg}:" not in f"\n{doc}"
                    and params and "Args:" in doc]
        if "Returns:" not in doc:
            missing.append(f"{name}: Returns")
        if "raise " in inspect.getsource(fn) and "Raises:" not in doc:
            missing.append(f"{name}: Raises")
    assert len(list(public_callables())) >= 15
    assert missing == []
