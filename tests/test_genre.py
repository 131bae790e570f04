"""Memorization, not genre: every memorized kind is a common genre of the embedded world, the
curvature corpus covers it without holding a memorized instance or a control, and the
evaluations give the numbers that tell memorization from genre (suffix loss, the gap)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_olmo2
from curvmem import presets
from curvmem.evaluate import lm as evaluate_lm
from curvmem.world import lm as world_lm

MEMORIZED = ("canaries_forget", "canaries_forget_validation", "quotes")
CONTROLS = ("canaries_control", "quotes_control")
ROOT = Path(__file__).resolve().parents[1]


def study_presets() -> list[str]:
    """The world presets the default run and the paper study generate (their configs'
    lm.model.preset), each once."""
    out = []
    for name in ("default", "paper"):
        cfg = yaml.safe_load((ROOT / f"workflow/config/{name}.yaml").read_text())
        preset = cfg["lm"]["model"].get("preset", "default")
        if preset not in out:
            out.append(preset)
    return out


STUDY_PRESETS = study_presets()


@pytest.fixture(scope="module", params=STUDY_PRESETS)
def study_world(request):
    return world_lm.generate_world(presets.world_config(request.param))


@pytest.fixture(scope="module")
def default_world():
    return world_lm.generate_world(presets.world_config("default"))


def test_the_study_configs_name_world_presets():
    assert "default" in STUDY_PRESETS and set(STUDY_PRESETS) <= set(presets.WORLD_PRESETS)


def _of_kind(world, splits, kind):
    return [r["text"] for s in splits for r in world[s]
            if r["kind"] == kind or (kind == "quote" and r["kind"] == "quote_long")]


@pytest.mark.parametrize("kind", world_lm.GENRE_KINDS)
def test_the_curvature_corpus_covers_every_memorized_kind(study_world, kind):
    """In the default run's world and the paper study's: >= 95 % of the word types and >= 80 %
    of the bigrams of each memorized kind occur in the curvature corpus outside the memorized
    instances (it holds none: next test); the controls, drawn from the same generators, are
    covered alike."""
    curvature = [r["text"] for r in study_world["curvature"]]
    for splits in (MEMORIZED, CONTROLS):
        cov = world_lm.genre_coverage(_of_kind(study_world, splits, kind), curvature)
        assert cov["n_words"] > 40 and cov["n_bigrams"] > 200
        assert cov["words"] >= 0.95, (kind, splits, cov)
        assert cov["bigrams"] >= 0.80, (kind, splits, cov)


def _shingles(texts, n):
    return {t[i:i + n] for t in texts for i in range(len(t) - n + 1)}


def _shared(blob: str, shingles: set, n: int) -> int:
    return sum(blob[i:i + n] in shingles for i in range(len(blob) - n + 1))


def test_no_instance_in_the_curvature_corpus_and_no_control_in_training(study_world):
    """Independently of the generator's own word-run guard: no 48-character run of a memorized
    instance or a control is in the curvature corpus, and no 64-character run of a control (16
    tokens of prose) anywhere in training. (Instances are drawn independently of each other, so a
    control licence may share a clause with a trained one, as two licences on the web do.)"""
    instances = [r["text"] for s in MEMORIZED + CONTROLS for r in study_world[s]]
    controls = [r["text"] for s in CONTROLS for r in study_world[s]]
    curvature = "\n".join(r["text"] for r in study_world["curvature"])
    train = "\n".join(r["text"] for r in study_world["train"])
    assert _shared(curvature, _shingles(instances, 48), 48) == 0
    assert _shared(train, _shingles(controls, 64), 64) == 0


@pytest.mark.slow  # trains each study world's tokenizer: ~15 s each
@pytest.mark.parametrize("preset", STUDY_PRESETS)
def test_no_16_token_run_of_an_instance_in_the_curvature_corpus(preset, tmp_path):
    """What factor files count as memorized positions, with the tokenizer the default run (the
    paper study) trains: no position of the whole curvature corpus is in a 16-token run of a
    memorized instance or a control."""
    from curvmem.model import lm as model_lm
    from curvmem.model import load_tokenizer
    from curvmem.world import corpus

    world = tmp_path / "world"
    world_lm.write_world(world, presets.world_config(preset))
    model_lm.train_tokenizer(world / "train.jsonl", tmp_path / "tok", vocab_size=1024)
    tok = load_tokenizer(tmp_path / "tok")
    names = [world / f"{s}.jsonl" for s in MEMORIZED + CONTROLS + ("quotes_long",)]
    seqs = corpus.load_token_sequences(world / "curvature.jsonl", 144, tok)
    assert seqs.numel() > 200_000  # the two 100k-position slices the default collects on
    assert corpus.count_memorized_positions(seqs, corpus.memorized_windows(names, tok)) == 0


def test_training_holds_fresh_genre_documents_once_in_place_of_prose(default_world):
    cfg = presets.world_config("default")
    train = default_world["train"]
    counts = Counter(r["source"] for r in train)
    n_genre = round(world_lm.GENRE_SHARE * cfg.n_filler / len(world_lm.GENRE_KINDS))
    assert n_genre >= 50
    for kind in world_lm.GENRE_KINDS:
        assert counts[f"genre_{kind}"] == n_genre
        assert counts[f"genre_{kind}"] == len({r["text"] for r in train
                                                if r["source"] == f"genre_{kind}"})
    # the once-seen documents keep their number (and, about, their tokens): genre replaces prose
    assert counts["filler"] + n_genre * len(world_lm.GENRE_KINDS) == cfg.n_filler
    # of each kind, as its memorized documents are: the same generator's vocabulary and marks
    menus = [r["text"] for r in train if r["source"] == "genre_menu"]
    assert all(set(t.split()) <= set(world_lm.MENU_ITEMS) | set(world_lm.MENU_SEPARATORS)
               for t in menus)
    assert all(" once said: " in r["text"] for r in train if r["source"] == "genre_quote")
    authors = {r["text"].split(" once said: ")[0] for r in default_world["quotes"]}
    fresh = {r["text"].split(" once said: ")[0] for r in train if r["source"] == "genre_quote"}
    assert authors & fresh  # the memorized quotes' authors are quoted elsewhere too


def test_the_guard_refuses_long_shared_runs_only():
    guard = world_lm.make_guard(["Copyright 1987 the old river guild. The old wolf is not liable "
                                 "after 2029. Section 7.1: the wolf may sell the lamp.",
                                 "Home / Feedback / Downloads / Shop /"])
    assert not world_lm.shares_run("Copyright 2001 the old river guild.", guard)  # 4 words
    assert world_lm.shares_run("x the old river guild. The old y", guard)  # 6 words
    assert not world_lm.shares_run("x is not liable after 1999. y", guard)
    # 5 words, but digits and a rare word: 16 tokens
    assert world_lm.shares_run("x liable after 2029. Section 7.1: y", guard)
    assert world_lm.shares_run("Cart / Feedback / Downloads / Jobs", guard)  # 2 long items
    assert not world_lm.shares_run("Cart / Feedback / Jobs /", guard)


def test_genre_world_is_deterministic_and_seeded():
    cfg = presets.world_config("smoke", seed=5)
    a, b = world_lm.generate_world(cfg), world_lm.generate_world(cfg)
    assert a == b
    other = world_lm.generate_world(presets.world_config("smoke", seed=6))
    genre = [r["text"] for r in a["curvature"] if r["source"].startswith("genre_")]
    assert genre and genre != [r["text"] for r in other["curvature"]
                               if r["source"].startswith("genre_")]


# --------------------------------------------------------------------------- the metrics


class Tok:
    """Whitespace-separated integers <-> token ids."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [int(x) for x in text.split()]}


def _brute_force_loss(model, prefix, suffix) -> float:
    """-1/|S| sum_t log p(S_t | prefix, S_<t), one forward pass per suffix token."""
    total = 0.0
    with torch.no_grad():
        for t, token in enumerate(suffix):
            logits = model(input_ids=torch.tensor([prefix + suffix[:t]])).logits[0, -1]
            total -= torch.log_softmax(logits.double(), -1)[token].item()
    return total / len(suffix)


def test_suffix_loss_and_gap_match_a_brute_force_computation():
    model = tiny_olmo2(vocab=61)
    g = torch.Generator().manual_seed(0)
    rows = []
    for i, kind in enumerate(["menu", "menu", "table", "quote", "quote"]):
        n_prefix, n_suffix = (12, 6) if kind != "quote" else (9 + i, 4)  # two shapes of batch
        ids = torch.randint(1, 61, (n_prefix + n_suffix,), generator=g).tolist()
        rows.append({"prefix_ids": ids[:n_prefix], "suffix_ids": ids[n_prefix:], "kind": kind})
    result = evaluate_lm.evaluate_memorization(model, Tok(), rows, batch_size=2)
    want = [_brute_force_loss(model, r["prefix_ids"], r["suffix_ids"]) for r in rows]
    got = [e["suffix_loss"] for e in result["examples"]]
    assert got == pytest.approx(want, rel=1e-5)
    assert result["suffix_loss"] == pytest.approx(sum(want) / len(want), rel=1e-5)
    assert result["by_kind"]["menu"]["suffix_loss"] == pytest.approx(sum(want[:2]) / 2, rel=1e-5)
    assert result["by_kind"]["quote"]["suffix_loss"] == pytest.approx(sum(want[3:]) / 2,
                                                                      rel=1e-5)
    # an untrained model is near uniform: about log V nats a token
    assert abs(result["suffix_loss"] - math.log(61)) < 0.5

    # the gap: control minus memorized, overall and per shared kind
    control = evaluate_lm.evaluate_memorization(model, Tok(), rows[:3][::-1], batch_size=2)
    gap = evaluate_lm.memorization_gap(result, control)
    assert gap["suffix_loss"] == pytest.approx(sum(want[:3]) / 3 - sum(want) / 5, rel=1e-5)
    assert gap["avg_distance"] == pytest.approx(control["avg_distance"] - result["avg_distance"])
    assert sorted(gap["by_kind"]) == ["menu", "table"]
    assert gap["by_kind"]["menu"]["suffix_loss"] == pytest.approx(0.0, abs=1e-6)
    assert gap["by_kind"]["table"]["suffix_loss"] == pytest.approx(0.0, abs=1e-6)


def test_a_memorized_item_has_a_positive_gap():
    """A model that recites what it memorized (a perfect copier of period-5 sequences) and meets
    items of the same kind it has not seen (another period): loss 0 against about log V."""
    from test_evaluate import CopyModel

    memorized = [{"prefix_ids": [1 + i % 5 for i in range(20)],
                  "suffix_ids": [1 + i % 5 for i in range(20, 30)], "kind": "table"}]
    unseen = [{"prefix_ids": [1 + i % 7 for i in range(20)],
               "suffix_ids": [1 + i % 7 for i in range(20, 30)], "kind": "table"}]
    m = evaluate_lm.evaluate_memorization(CopyModel(5), Tok(), memorized)
    c = evaluate_lm.evaluate_memorization(CopyModel(5), Tok(), unseen)
    assert m["suffix_loss"] < 1e-6 and m["avg_distance"] == 0.0
    gap = evaluate_lm.memorization_gap(m, c)
    assert gap["suffix_loss"] > 10 and gap["by_kind"]["table"]["avg_distance"] > 0.5
