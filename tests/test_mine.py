"""`curvmem mine`: memorized windows of a corpus, checked against the model's own recitation.

The smoke preset's model (12 steps) recites no canary, so the fixture trains a slightly larger
tiny OLMo-2 (d 64, 2 layers, 85 Muon steps) on the smoke world's trained canaries plus 10 filler
paragraphs: ~30 s on one core, and it recites most, not all, of them.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import pytest
import torch

from conftest import tiny_olmo2
from curvmem import presets
from curvmem.cli import mine as mine_cli
from curvmem.evaluate import lm as evaluate
from curvmem.evaluate import mine
from curvmem.evaluate.lm import greedy_continue
from curvmem.io import read_jsonl
from curvmem.model import lm as lm_model
from curvmem.model import load_model, load_tokenizer
from curvmem.world import lm as world

torch.set_num_threads(1)


def run_cli(*argv) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    evaluate_sub = sub.add_parser("evaluate").add_subparsers(dest="evaluation")
    mine_cli.register(sub, evaluate_sub)
    args = parser.parse_args([str(a) for a in argv])
    args.func(args)


# --------------------------------------------------------------------------- teacher forcing


def test_teacher_forced_argmax_is_greedy_recitation():
    model = tiny_olmo2(vocab=61)
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(1, 61, (6, 10), generator=g)
    recited = torch.cat([prefix, greedy_continue(model, prefix, 5)], dim=1)
    assert mine.memorized(model, recited, 10).all()
    wrong = recited.clone()
    wrong[:3, -1] = (wrong[:3, -1] + 1) % 61  # the last suffix token only
    wrong[3:, 10] = (wrong[3:, 10] + 1) % 61  # the first suffix token only
    assert not mine.memorized(model, wrong, 10).any()


def test_windows_stay_inside_a_document_and_skip_repeats():
    assert [o for o, _ in mine.document_windows(list(range(10)), 4, 3)] == [0, 3, 6]

    class Echo:  # a "model" that predicts the token it is given, so a constant window is recited
        def parameters(self):
            return iter(())

        def __call__(self, input_ids, logits_to_keep):
            logits = torch.nn.functional.one_hot(input_ids, 8).float()
            return argparse.Namespace(logits=logits[:, -logits_to_keep:])

    class Tok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [int(c) for c in text]}

        def decode(self, ids):
            return "".join(map(str, ids))

    rows, stats = mine.mine(Echo(), Tok(), ["1111111", "1111111", "12345", "2222"],
                            prefix_len=2, suffix_len=2, stride=1, batch_size=2)
    assert [(r["doc_index"], r["token_offset"], r["suffix_text"]) for r in rows] == \
        [(0, 0, "11"), (3, 0, "22")]
    assert stats["windows"] == 4 + 4 + 2 + 1 and stats["windows_checked"] == 1 + 2 + 1
    rows, stats = mine.mine(Echo(), Tok(), ["1111111", "2222", "3333"], prefix_len=2,
                            suffix_len=2, max_tokens=5)
    assert stats["documents"] == 1 and len(rows) == 1  # stopped after the first document


# --------------------------------------------------------------------------- the smoke world


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mine")
    w, tok, m = tmp / "world", tmp / "tok", tmp / "model"
    world.write_world(w, presets.world_config("smoke"))
    lm_model.train_tokenizer(w / "train.jsonl", tok, 400)
    # two trained sets of memorized documents (both halves) and the never-trained controls; the
    # kinds that fit one training block, so a tiny model learns them in a few dozen steps
    canaries = {s: [r for r in read_jsonl(w / f"{f}.jsonl") if r["kind"] in ("random", "table")]
                for s, f in (("forget", "canaries_forget"),
                             ("untargeted", "canaries_forget_validation"),
                             ("control", "canaries_control"))}
    trained_texts = {r["text"] for s in ("forget", "untargeted") for r in canaries[s]}
    rows = read_jsonl(w / "train.jsonl")
    small = tmp / "small"
    small.mkdir()
    keep = [r for r in rows if r["text"] in trained_texts] + \
        [r for r in rows if r["text"] not in trained_texts][:10]
    (small / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keep))
    cfg = replace(presets.train_config("smoke"), d_model=64, d_ff=128, n_layers=2, steps=85,
                  lr=1e-2, warmup=10, threads=1)
    lm_model.train_lm(small, tok, m, cfg, progress=False)
    # the corpus to mine: what the model was trained on, plus the never-trained control canaries
    corpus = tmp / "corpus.jsonl"
    corpus.write_text((small / "train.jsonl").read_text()
                      + "".join(json.dumps({"text": r["text"]}) + "\n"
                                for r in canaries["control"]))
    return {"model": m, "corpus": corpus, "canaries": canaries, "tmp": tmp}


def test_mine_finds_exactly_the_recited_canaries_and_no_control(trained):
    m, tmp, canaries = trained["model"], trained["tmp"], trained["canaries"]
    model, tokenizer = load_model(m), load_tokenizer(m)
    recited = {}
    for split, rows in canaries.items():
        res = evaluate.evaluate_memorization(model, tokenizer, rows)
        recited[split] = {r["text"] for r, e in zip(rows, res["examples"]) if e["distance"] == 0}
    assert recited["control"] == set()
    assert recited["forget"] | recited["untargeted"], "the fixture's model recites no canary"

    out, val = tmp / "mem.jsonl", tmp / "mem_val.jsonl"
    run_cli("mine", "--model", m, "--data", trained["corpus"], "--out", out,
            "--validation-out", val, "--validation-fraction", "0.25", "--seed", "1",
            "--stride", "16", "--batch-size", "16", "--threads", "1")
    rows = read_jsonl(out) + read_jsonl(val)
    docs = [r["text"] for r in read_jsonl(trained["corpus"])]
    found_at_start = {docs[r["doc_index"]] for r in rows if r["token_offset"] == 0}
    found_anywhere = {docs[r["doc_index"]] for r in rows}
    for split in ("forget", "untargeted"):
        texts = {r["text"] for r in canaries[split]}
        # a canary is queried at offset 0: mined there exactly when the model recites it
        assert found_at_start & texts == recited[split]
    control = {r["text"] for r in canaries["control"]}
    assert not found_anywhere & control  # precision: no window of a never-trained text
    # deduplicated: each canary is 6 times in the corpus, each suffix once in the files
    assert len({tuple(r["suffix_ids"]) for r in rows}) == len(rows)
    for r in rows:
        ids = load_tokenizer(m)(docs[r["doc_index"]], add_special_tokens=False)["input_ids"]
        off = r["token_offset"]
        assert r["prefix_ids"] + r["suffix_ids"] == ids[off:off + 112]
        assert (r["prefix_len"], r["suffix_len"]) == (64, 48)
        assert r["prefix_text"] == tokenizer.decode(r["prefix_ids"])
    # the evaluation reads the rows as written and recites every one of them
    res = evaluate.evaluate_memorization(model, tokenizer, read_jsonl(out), where=str(out))
    assert res["strict"] == 1.0
    meta = json.loads((tmp / "mem.meta.json").read_text())
    assert meta["rows"] + meta["validation_rows"] == meta["memorized"] == len(rows)
    assert meta["validation_rows"] == round(len(rows) * 0.25)

    # the split is a function of the seed
    out2, val2 = tmp / "again.jsonl", tmp / "again_val.jsonl"
    run_cli("mine", "--model", m, "--data", trained["corpus"], "--out", out2,
            "--validation-out", val2, "--validation-fraction", "0.25", "--seed", "1",
            "--stride", "16", "--batch-size", "7", "--threads", "1")
    assert out2.read_text() == out.read_text() and val2.read_text() == val.read_text()
    n_recited = len(recited["forget"] | recited["untargeted"])
    print(f"\nrecited canaries {n_recited}/8; mined windows {len(rows)} "
          f"({len(found_at_start & (recited['forget'] | recited['untargeted']))} canaries at "
          "offset 0); control windows 0")


def test_split_is_seeded_disjoint_and_complete():
    rows = [{"i": i} for i in range(10)]
    train, val = mine.split_rows(rows, 0.3, seed=4)
    assert len(val) == 3 and sorted(r["i"] for r in train + val) == list(range(10))
    assert mine.split_rows(rows, 0.3, seed=4) == (train, val)
    assert mine.split_rows(rows, 0.3, seed=5) != (train, val)


@pytest.mark.parametrize("extra, words", [
    (["--out", "x.json"], ".jsonl"),
    (["--out", "x.jsonl", "--validation-fraction", "0.3"], "needs --validation-out"),
    (["--out", "x.jsonl", "--validation-out", "x.jsonl"], "must differ"),
    (["--out", "x.jsonl", "--validation-out", "v.jsonl", "--validation-fraction", "1"], "(0, 1)"),
    (["--out", "x.jsonl", "--stride", "0"], "--stride"),
    (["--out", "x.jsonl", "--data", "ids.npy"], "documents"),
    (["--out", "x.jsonl", "--data", "missing.jsonl"], "no such corpus"),
])
def test_bad_arguments_fail_before_loading_or_writing(tmp_path, monkeypatch, extra, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.jsonl").write_text('{"text": "a b c"}\n')
    (tmp_path / "ids.npy").write_bytes(b"")
    argv = ["mine", "--model", "no-such-model", "--data", "c.jsonl", *extra]
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        run_cli(*argv)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "ids.npy"]


# --------------------------------------------------------------------------- the paper's files


@pytest.fixture(scope="module")
def small_lm(tmp_path_factory):
    """A tiny random OLMo-2 saved with a real (BPE) tokenizer of matching vocabulary."""
    from transformers import AutoTokenizer

    tmp = tmp_path_factory.mktemp("formats")
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"to be or not to be, {i} times"}) + "\n"
                              for i in range(30)))
    lm_model.train_tokenizer(corpus, tmp / "lm", 300)
    tok = AutoTokenizer.from_pretrained(tmp / "lm")
    tiny_olmo2(vocab=len(tok)).save_pretrained(tmp / "lm")
    return tmp / "lm", tok


def test_rows_of_every_released_format(small_lm):
    _, tok = small_lm
    ids = tok("to be or not to be, that is the question", add_special_tokens=False)["input_ids"]
    window = {"prefix_len": 3, "suffix_len": 2, "prefix_text": "ignored when ids are given",
              "suffix_text": "ignored", "prefix_ids": ids[:3], "suffix_ids": ids[3:5]}
    quote = {"id": 7, "author": "Shakespeare", "topic": "doubt",
             "full_quote": "to be or not to be, that is the question",
             "prefix": "to be or not to be,", "target_suffix": " that is the question"}
    today = [{"text": "to be or not to be, that is the question"},
             {"prefix": "to be", "suffix": " or not"}]
    ex = evaluate.memorization_examples([window, quote, *today], tok, prefix_len=4,
                                        suffix_len=3, where="rows.jsonl")
    assert (ex[0]["prefix"], ex[0]["suffix"]) == (ids[:3], ids[3:5])  # ids used as given
    assert ex[1]["prefix"] == tok("to be or not to be,", add_special_tokens=False)["input_ids"]
    assert ex[1]["suffix"] == tok(" that is the question", add_special_tokens=False)["input_ids"]
    assert ex[1]["id"] == 7
    assert (ex[2]["prefix"], ex[2]["suffix"]) == (ids[:4], ids[4:7])
    assert ex[3]["suffix"] == tok(" or not", add_special_tokens=False)["input_ids"]
    for bad in (len(tok), -1, 2.5, True):
        rows = [window, {**window, "suffix_ids": [1, bad]}]
        with pytest.raises(ValueError, match=r"rows.jsonl row 2: token id .* vocabulary"):
            evaluate.memorization_examples(rows, tok, where="rows.jsonl")


def test_evaluate_memorization_reads_the_paper_files(small_lm, tmp_path, capsys):
    from curvmem.cli import main

    lm, tok = small_lm
    ids = tok("to be or not to be, 3 times", add_special_tokens=False)["input_ids"]
    windows = tmp_path / "olmo_dedup_val.jsonl"
    row = {"prefix_len": 4, "suffix_len": 3, "prefix_text": tok.decode(ids[:4]),
           "suffix_text": tok.decode(ids[4:7]), "prefix_ids": ids[:4], "suffix_ids": ids[4:7]}
    windows.write_text(json.dumps(row) + "\n")
    quotes = tmp_path / "quotes.jsonl"
    quotes.write_text(json.dumps({"id": 0, "author": "a", "topic": "t", "full_quote": "x y",
                                  "prefix": "to be or", "target_suffix": " not to be"}) + "\n")
    for data in (windows, quotes):
        out = tmp_path / f"{data.stem}.json"
        assert main(["evaluate", "memorization", "--model", str(lm), "--data", str(data),
                     "--out", str(out), "--threads", "1"]) == 0
        assert json.loads(out.read_text())["n"] == 1
    bad = tmp_path / "other_tokenizer.jsonl"
    bad.write_text(json.dumps(row) + "\n" + json.dumps({**row, "prefix_ids": [100277]}) + "\n")
    assert main(["evaluate", "memorization", "--model", str(lm), "--data", str(bad),
                 "--out", str(tmp_path / "never.json")]) == 2
    err = capsys.readouterr().err
    assert f"{bad} row 2: token id 100277" in err
    assert not (tmp_path / "never.json").exists()
