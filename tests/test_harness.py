"""lm-evaluation-harness on the embedded world's task categories, written as local harness tasks:
its accuracy per category equals `curvmem evaluate tasks` on the same items (tiny model, CPU).
The `[eval]` extra (lm_eval) is part of `[test]`; without it these tests are skipped, except
under CI, where the skip fails (tests/conftest.py)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("lm_eval")

from conftest import tiny_olmo2  # noqa: E402
from curvmem.evaluate import harness  # noqa: E402
from curvmem.evaluate.lm import evaluate_tasks, greedy_continue  # noqa: E402
from curvmem.model import lm as lm_model  # noqa: E402

WORDS = ["river", "mill", "stone", "bridge", "field", "seven", "north", "lamp"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A random tiny OLMo-2 and task rows whose answers are half its own greedy words (so some
    count as correct) and half other words, in two categories."""
    from transformers import AutoTokenizer

    tmp = tmp_path_factory.mktemp("harness")
    texts = [f"the {a} by the {b} is {c}" for a in WORDS for b in WORDS for c in WORDS[:3]]
    (tmp / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    lm_model.train_tokenizer(tmp / "c.jsonl", tmp / "tok", 300)
    tok = AutoTokenizer.from_pretrained(tmp / "tok")
    torch.manual_seed(0)
    model = tiny_olmo2(vocab=len(tok)).eval()
    model.save_pretrained(tmp / "model")
    tok.save_pretrained(tmp / "model")
    rows = []
    for i, (a, b) in enumerate((a, b) for a in WORDS for b in WORDS[:4]):
        prompt = f"the {a} by the {b} is"
        ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            said = tok.decode(greedy_continue(model, ids, 3)[0]).strip().split(" ")[0]
        answer = said if i % 2 == 0 and said.isalnum() else WORDS[i % len(WORDS)]
        rows.append({"category": ("closed_book", "logic")[i % 3 == 0], "prompt": prompt,
                     "answer": answer})
    (tmp / "tasks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp, model, tok, rows


def test_harness_accuracy_equals_curvmem_tasks(setup, monkeypatch):
    tmp, model, tok, rows = setup
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ours = evaluate_tasks(model, tok, rows)
    assert 0 < ours["overall"] < 1  # a mix of right and wrong answers: equality means something
    names = harness.write_task_files(tmp / "tasks.jsonl", tok, tmp / "tasks")
    assert names == ["curvmem_closed_book", "curvmem_logic"]
    out = harness.run_harness(tmp / "model", names, tmp / "h.json", include_path=tmp / "tasks",
                              device="cpu")
    assert json.loads((tmp / "h.json").read_text())["tasks"] == names
    for cat in ("closed_book", "logic"):
        assert out["results"][f"curvmem_{cat}"]["acc,none"] == pytest.approx(
            ours["accuracy"][cat], abs=1e-12), cat


def test_harness_refuses_unknown_tasks_and_bad_task_files(setup, tmp_path):
    tmp, _, tok, _ = setup
    # task files of its own: on two workers the other test may run elsewhere, or later
    harness.write_task_files(tmp / "tasks.jsonl", tok, tmp_path / "tasks")
    with pytest.raises(ValueError, match="knows no task"):
        harness.run_harness(tmp / "model", ["curvmem_nope"], tmp_path / "x.json",
                            include_path=tmp_path / "tasks", device="cpu")
    assert not (tmp_path / "x.json").exists()
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty"):
        harness.write_task_files(tmp_path / "empty.jsonl", tok, tmp_path / "t")
    assert not (tmp_path / "t").exists()
