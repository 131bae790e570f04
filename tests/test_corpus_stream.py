"""Corpora from the hub, streamed: `hf:NAME[/CONFIG][:SPLIT][@REVISION][#FIELD]` read lazily, stopped
at the token budget, and sharded by sequence index. Offline: a local directory of parquet files
goes through the same `datasets.load_dataset(..., streaming=True)` path as a hub id."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from curvmem.model import lm as lm_model
from curvmem.world import corpus

TEXTS = [f"document {i}: " + " ".join(["the river ran past the mill"] * (1 + i % 4))
         for i in range(60)]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    import datasets

    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")
        monkeypatch.setattr(datasets.config, var, True)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The same documents as a parquet dataset directory and as JSONL, and a BPE tokenizer."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    tmp = tmp_path_factory.mktemp("stream")
    (tmp / "ds").mkdir()
    Dataset.from_dict({"text": TEXTS, "body": [t.upper() for t in TEXTS]}).to_parquet(
        str(tmp / "ds" / "train.parquet"))
    jsonl = tmp / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    lm_model.train_tokenizer(jsonl, tmp / "tok", 300)
    return {"hf": f"hf:{tmp / 'ds'}", "jsonl": jsonl,
            "tok": AutoTokenizer.from_pretrained(tmp / "tok")}


def test_parse_hf():
    assert corpus.parse_hf("hf:allenai/dolmino-mix-1124") == {
        "path": "allenai/dolmino-mix-1124", "name": None, "split": "train", "revision": None,
        "field": "text"}
    assert corpus.parse_hf("hf:allenai/c4/en:validation@abc123#content") == {
        "path": "allenai/c4", "name": "en", "split": "validation", "revision": "abc123",
        "field": "content"}
    assert corpus.parse_hf("hf:NeelNanda/pile-10k:train")["split"] == "train"
    for bad in ("hf:", "hf:a/b/c/d", "hf:a//b"):
        with pytest.raises(ValueError, match="hf:"):
            corpus.parse_hf(bad)


def test_streamed_tokens_equal_the_non_streamed_reading(files):
    tok = files["tok"]
    streamed = corpus.load_token_sequences(files["hf"], 16, tok, n_tokens=400)
    assert torch.equal(streamed, corpus.load_token_sequences(files["jsonl"], 16, tok, 400))
    assert streamed.shape == (25, 16)
    everything = corpus.load_token_sequences(files["hf"] + ":train", 16, tok)
    assert torch.equal(everything, corpus.load_token_sequences(files["jsonl"], 16, tok))
    body = corpus.load_token_sequences(files["hf"] + "#body", 16, tok, n_tokens=64)
    ids = tok(TEXTS[0].upper(), add_special_tokens=False)["input_ids"]
    assert body.flatten()[:len(ids)].tolist() == ids[:64]
    assert list(corpus.iter_texts(files["hf"] + "#body"))[:2] == [t.upper() for t in TEXTS[:2]]
    with pytest.raises(ValueError, match="no field 'content'"):
        corpus.load_token_sequences(files["hf"] + "#content", 16, tok, n_tokens=64)


def test_reading_stops_at_the_budget(files, monkeypatch):
    """A stream that breaks after 12 rows is never read that far."""
    import datasets

    read = []

    def fake_load_dataset(path, name=None, split=None, revision=None, streaming=False):
        assert streaming and (path, split) == ("some/corpus", "train")

        def rows():
            for i, t in enumerate(TEXTS):
                if i == 12:
                    raise RuntimeError("the stream was drained past the budget")
                read.append(i)
                yield {"text": t}
        return rows()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    tok = files["tok"]
    seqs = corpus.load_token_sequences("hf:some/corpus", 16, tok, n_tokens=96)
    assert seqs.shape == (6, 16) and max(read) < 11
    read.clear()
    seqs, start = corpus.load_token_shard("hf:some/corpus", 16, tok, 192, "0/2", skip_batch=4)
    assert (seqs.shape, start) == ((6, 16), 0) and max(read) < 11
    with pytest.raises(RuntimeError, match="drained"):
        corpus.load_token_sequences("hf:some/corpus", 16, tok, n_tokens=10_000)


@pytest.mark.parametrize("over", [False, True])  # a budget inside the corpus, and above it
@pytest.mark.parametrize("skip_batch", [1, 7, 256])
def test_shards_are_disjoint_and_cover_the_stream(files, over, skip_batch):
    tok = files["tok"]
    held = corpus.load_token_sequences(files["hf"], 16, tok).numel()
    budget = int(held * 1.1) if over else held // 2
    full = corpus.load_token_sequences(files["hf"], 16, tok, n_tokens=budget)
    for n in (1, 2, 3, 5):
        parts = [corpus.load_token_shard(files["hf"], 16, tok, budget, f"{k}/{n}",
                                         skip_batch=skip_batch) for k in range(n)]
        starts = [s for _, s in parts]
        assert starts == sorted(starts) and starts[0] == 0
        for (seqs, s), nxt in zip(parts, starts[1:] + [None]):
            if nxt is not None:
                assert s + len(seqs) == nxt  # contiguous: no gap, no overlap
        assert torch.equal(torch.cat([p for p, _ in parts]), full)


def test_bad_shard_requests(files):
    with pytest.raises(ValueError, match="k/n"):
        corpus.load_token_shard(files["hf"], 16, files["tok"], 800, "1of2")
    with pytest.raises(ValueError, match="more shards"):
        corpus.load_token_shard(files["hf"], 16, files["tok"], 32, "0/3")
    held = corpus.load_token_sequences(files["hf"], 16, files["tok"]).shape[0]
    with pytest.raises(ValueError, match=f"starts at sequence {2 * held} .* ends at sequence {held}"):
        corpus.load_token_shard(files["hf"], 16, files["tok"], 3 * held * 16, "2/3")


def test_pretokenized_stream_packs_shards_and_fingerprints_as_the_text(files, tmp_path):
    """`curvmem tokenize` once, then each shard reads its rows of the .npy: the same sequences
    and fingerprint as packing the streamed text whole."""
    tok = files["tok"]
    note = corpus.write_token_stream(files["hf"], tok, 300, tmp_path / "c.npy")
    assert (note["tokens"], note["short"]) == (300, False) and note["documents"] < len(TEXTS)
    full = corpus.load_token_sequences(files["hf"], 16, tok, n_tokens=300)
    for n in (1, 2, 3):
        parts = [corpus.token_array_shard(tmp_path / "c.npy", 16, 300, f"{k}/{n}")
                 for k in range(n)]
        assert torch.equal(torch.cat([p for p, _, _ in parts]), full)
        assert [s for _, s, _ in parts] == [corpus.shard_bounds(len(full), f"{k}/{n}")[0]
                                           for k in range(n)]
        assert {fp for _, _, fp in parts} == {corpus.fingerprint_tensor(full)}
    seqs, _, _ = corpus.token_array_shard(tmp_path / "c.npy", 16, 64, None)  # a smaller budget
    assert torch.equal(seqs, full[:4])
    short = corpus.write_token_stream(files["hf"], tok, 10**6, tmp_path / "all.npy")
    assert short["short"] and short["documents"] == len(TEXTS)
    with pytest.raises(ValueError, match="2-D token array"):
        np.save(tmp_path / "two.npy", np.zeros((3, 8), np.int32))
        corpus.token_array_shard(tmp_path / "two.npy", 16, None, None)
    with pytest.raises(ValueError, match=r"\.npy"):
        corpus.write_token_stream(files["hf"], tok, 10, tmp_path / "c.txt")
    assert not (tmp_path / "c.txt").exists()


def test_texts_of_a_streamed_dataset_as_jsonl(files, tmp_path):
    from curvmem.io import read_jsonl

    assert corpus.write_texts(files["hf"] + "#body", tmp_path / "t.jsonl", rows=5) == 5
    assert [r["text"] for r in read_jsonl(tmp_path / "t.jsonl")] == [t.upper() for t in TEXTS[:5]]
    with pytest.raises(ValueError, match="no field"):
        corpus.write_texts(files["hf"] + "#nope", tmp_path / "u.jsonl")
    assert not (tmp_path / "u.jsonl").exists()


def test_collect_from_hf_shards_merges_to_the_pretokenized_single_pass(files, tmp_path):
    """Collection of a streamed corpus in 2 shards (each reading only up to its end), merged,
    equals one pass over the pre-tokenized .npy."""
    from conftest import tiny_olmo2
    from curvmem import schema
    from curvmem.factors import collect_layer_files, merge_layer_files

    tok = files["tok"]
    model_dir = tmp_path / "m"
    tiny_olmo2(vocab=len(tok)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    kw = dict(tokens=192, modules=["mlp.gate_proj"], seq_len=16, batch_size=4, device="cpu")
    corpus.write_token_stream(files["hf"], tok, 192, tmp_path / "c.npy")
    collect_layer_files(model_dir, tmp_path / "c.npy", [1], tmp_path / "one", **kw)
    for k in (0, 1):
        collect_layer_files(model_dir, files["hf"], [1], tmp_path / f"s{k}", shard=f"{k}/2", **kw)
    merge_layer_files([schema.layer_path(tmp_path / f"s{k}", 1) for k in (0, 1)],
                      tmp_path / "merged.nc")
    one = schema.read_layer(schema.layer_path(tmp_path / "one", 1), "factors")
    merged = schema.read_layer(tmp_path / "merged.nc", "factors")
    assert merged.attrs["n_tokens"] == one.attrs["n_tokens"]
    for var in ("A", "G"):
        np.testing.assert_allclose(merged.groups["mlp.gate_proj"][var],
                                   one.groups["mlp.gate_proj"][var], rtol=1e-5, atol=1e-7)
