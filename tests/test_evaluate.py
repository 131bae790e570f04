"""LM evaluations on hand-made models whose right answers are known, and an end-to-end smoke run."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import smoke_lm
from curvmem.cli import main
from curvmem.evaluate import lm as evaluate_lm

V = 20  # vocabulary of the hand-made models


class CopyModel(nn.Module):
    """Predicts token t+1 as the token `period` positions back: recites any periodic sequence."""

    def __init__(self, period: int):
        super().__init__()
        self.period = period

    def forward(self, input_ids, **kwargs):
        B, T = input_ids.shape
        logits = torch.full((B, T, V), -10.0)
        for t in range(T):
            src = t + 1 - self.period
            if src >= 0:
                logits[torch.arange(B), t, input_ids[:, src]] = 10.0
        return SimpleNamespace(logits=logits, past_key_values=None)


class ConstantModel(nn.Module):
    """Always predicts token `c`; with `uniform`, all logits equal (perplexity = V)."""

    def __init__(self, c: int = 0, uniform: bool = False):
        super().__init__()
        self.c, self.uniform = c, uniform

    def forward(self, input_ids, **kwargs):
        logits = torch.zeros(*input_ids.shape, V)
        if not self.uniform:
            logits[..., self.c] = 5.0
        return SimpleNamespace(logits=logits, past_key_values=None)


class DigitTokenizer:
    """Whitespace-separated integers <-> token ids; EOS = 0."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        if isinstance(text, list):
            return {"input_ids": [self(t)["input_ids"] for t in text]}
        return {"input_ids": [int(x) for x in text.split()]}

    def decode(self, ids, skip_special_tokens=False):
        return " " + " ".join(str(i) for i in ids)


def periodic(period: int, length: int, offset: int) -> list[int]:
    return [1 + (offset + i) % period for i in range(length)]


# --------------------------------------------------------------------------- memorization


def test_a_perfect_copier_scores_strict_one():
    rows = [{"text": " ".join(map(str, periodic(5, 112, k))), "kind": "random"} for k in range(3)]
    rows += [{"prefix_ids": periodic(5, 10, 0), "suffix_ids": periodic(5, 15, 10),
              "kind": "natural"}]
    r = evaluate_lm.evaluate_memorization(CopyModel(5), DigitTokenizer(), rows, batch_size=2)
    assert r["strict"] == 1.0 and r["loose"] == 1.0 and r["avg_distance"] == 0.0
    assert r["by_kind"]["random"]["n"] == 3 and r["by_kind"]["natural"]["strict"] == 1.0
    assert [e["suffix_len"] for e in r["examples"]] == [48, 48, 48, 15]


def test_a_wrong_period_and_a_constant_model_score_their_exact_distance():
    # suffix 1..5 repeating (no token 9): a model always saying 9 is wrong everywhere
    rows = [{"prefix_ids": periodic(5, 64, 0), "suffix_ids": periodic(5, 48, 64)}]
    r = evaluate_lm.evaluate_memorization(ConstantModel(9), DigitTokenizer(), rows)
    assert r["strict"] == 0.0 and r["loose"] == 0.0 and r["avg_distance"] == 1.0
    # token 1 appears in every fifth place: d = 48 - (number of 1s in the suffix)
    suffix = periodic(5, 48, 64)
    r = evaluate_lm.evaluate_memorization(ConstantModel(1), DigitTokenizer(), rows)
    assert r["avg_distance"] == pytest.approx((48 - suffix.count(1)) / 48)


def test_levenshtein_buckets():
    s = evaluate_lm.memorization_scores([0, 12, 13, 48], [48, 48, 48, 48])
    assert s["strict"] == 0.25
    assert s["loose"] == 0.5  # 1 - 12/48 = 0.75 is loose; 1 - 13/48 is not
    assert s["avg_distance"] == pytest.approx((0 + 12 + 13 + 48) / 4 / 48)


def test_memorization_bad_inputs():
    tok = DigitTokenizer()
    with pytest.raises(ValueError, match="fewer than prefix 64"):
        evaluate_lm.memorization_examples([{"text": "1 2 3"}], tok)
    with pytest.raises(ValueError, match="needs 'text'"):
        evaluate_lm.memorization_examples([{"prefix": "1 2"}], tok)
    with pytest.raises(ValueError, match="empty prefix"):
        evaluate_lm.memorization_examples([{"prefix_ids": [], "suffix_ids": [1]}], tok)


# --------------------------------------------------------------------------- perplexity


def test_uniform_model_has_perplexity_equal_to_the_vocabulary():
    texts = [" ".join(str(1 + i % 7) for i in range(50))] * 10
    r = evaluate_lm.evaluate_perplexity(ConstantModel(uniform=True), DigitTokenizer(), texts,
                                     block_len=16, batch_size=4)
    assert r["perplexity"] == pytest.approx(V)
    assert r["perplexity_batch_mean"] == pytest.approx(V)
    assert r["n_tokens"] == r["n_blocks"] * 15


def test_perplexity_of_a_confident_copier_is_near_one():
    texts = [" ".join(map(str, periodic(5, 200, 0)))]
    r = evaluate_lm.evaluate_perplexity(CopyModel(5), DigitTokenizer(), texts, block_len=40)
    # the first 4 of a block's 39 predictions cannot copy yet (uniform: log V), the rest are ~0
    assert r["mean_loss"] == pytest.approx(4 / 39 * math.log(V), rel=1e-6)
    assert r["perplexity"] == pytest.approx(V ** (4 / 39), rel=1e-6)
    # each block's own mean loss, in block order (blocks pair across models)
    assert len(r["block_losses"]) == r["n_blocks"] == 5
    assert r["block_losses"] == pytest.approx([4 / 39 * math.log(V)] * 5, rel=1e-5)


def test_block_losses_average_to_the_mean_loss():
    texts = [" ".join(map(str, periodic(5, 30, k))) + " 3 3 2 9" * k for k in range(6)]
    r = evaluate_lm.evaluate_perplexity(CopyModel(5), DigitTokenizer(), texts, block_len=12,
                                        batch_size=4)
    assert len(set(r["block_losses"])) > 1  # blocks differ: the copier fails where runs break
    assert sum(r["block_losses"]) / r["n_blocks"] == pytest.approx(r["mean_loss"], abs=1e-5)


def test_perplexity_needs_a_block():
    with pytest.raises(ValueError, match="fewer than one block"):
        evaluate_lm.token_blocks(["1 2 3"], DigitTokenizer(), block_len=112)


# --------------------------------------------------------------------------- tasks, coherence


def test_answer_matching():
    assert evaluate_lm.answer_matches(" 68.", "68")
    assert evaluate_lm.answer_matches("Quist", "Quist")
    assert not evaluate_lm.answer_matches(" 689", "68")
    assert not evaluate_lm.answer_matches(" 6", "68")


def test_task_accuracy_per_category():
    rows = [{"category": "arithmetic", "prompt": "1 2 3 4 5 1 2 3 4", "answer": "5"},
            {"category": "arithmetic", "prompt": "1 2 3 4 5 1 2", "answer": "4"},
            {"category": "logic", "prompt": "2 3 4 5 1 2", "answer": "3"}]
    r = evaluate_lm.evaluate_tasks(CopyModel(5), DigitTokenizer(), rows)
    assert r["accuracy"] == {"arithmetic": 0.5, "logic": 1.0}
    assert r["n"] == {"arithmetic": 2, "logic": 1}
    # each item's output is kept in input order, so a reader can see how the model fails
    assert [(it["answer"], it["correct"]) for it in r["items"]] == [
        ("5", True), ("4", False), ("3", True)]
    assert r["items"][1]["output"].split()[0] == "3"
    assert r["accuracy_by_subcategory"] == {} and r["n_by_subcategory"] == {}


def test_task_accuracy_per_subcategory():
    rows = [{"category": "logic", "subcategory": "order", "prompt": "1 2 3 4 5 1 2 3 4",
             "answer": "5"},
            {"category": "logic", "subcategory": "order", "prompt": "1 2 3 4 5 1 2", "answer": "4"},
            {"category": "logic", "subcategory": "boolean", "prompt": "2 3 4 5 1 2", "answer": "3"},
            {"category": "arithmetic", "prompt": "2 3 4 5 1 2", "answer": "3"}]
    r = evaluate_lm.evaluate_tasks(CopyModel(5), DigitTokenizer(), rows)
    assert r["accuracy"] == {"arithmetic": 1.0, "logic": 2 / 3}
    # rows without a subcategory count only in their category
    assert r["accuracy_by_subcategory"] == {"logic/boolean": 1.0, "logic/order": 0.5}
    assert r["n_by_subcategory"] == {"logic/boolean": 1, "logic/order": 2}
    # item by item, in file order: the row's id (else its index) and subcategory (else None)
    assert [(it["id"], it["category"], it["subcategory"], it["correct"]) for it in r["items"]] \
        == [(0, "logic", "order", True), (1, "logic", "order", False),
            (2, "logic", "boolean", True), (3, "arithmetic", None, True)]
    with_ids = [{**row, "id": f"t{i}"} for i, row in enumerate(rows)]
    assert [it["id"] for it in evaluate_lm.evaluate_tasks(
        CopyModel(5), DigitTokenizer(), with_ids)["items"]] == ["t0", "t1", "t2", "t3"]


def test_ndcg():
    ref = torch.arange(10)[None]
    assert evaluate_lm.ndcg_at_k(ref, ref).item() == pytest.approx(1.0)
    assert evaluate_lm.ndcg_at_k(ref, torch.arange(10, 20)[None]).item() == 0.0
    swapped = torch.tensor([[1, 0, 2, 3, 4, 5, 6, 7, 8, 9]])
    ideal = sum((10 - r) / math.log2(r + 2) for r in range(10))
    dcg = ideal - 10 / math.log2(2) - 9 / math.log2(3) + 9 / math.log2(2) + 10 / math.log2(3)
    assert evaluate_lm.ndcg_at_k(ref, swapped).item() == pytest.approx(dcg / ideal)


def test_coherence_of_an_edit_that_changes_nothing_is_one():
    texts = [" ".join(map(str, periodic(7, 100, 0)))]
    r = evaluate_lm.evaluate_coherence(CopyModel(7), DigitTokenizer(), texts, lambda m: {"x": 1},
                                    block_len=20)
    assert r["ndcg10"] == pytest.approx(1.0) and r["edit_meta"] == {"x": 1}


# --------------------------------------------------------------------------- report


def _mem(strict):
    kinds = {k: {"n": 1, "strict": strict, "loose": strict, "avg_distance": 1 - strict}
             for k in ("random", "natural")}
    return {"strict": strict, "loose": strict, "avg_distance": 1 - strict, "by_kind": kinds}


def _entry(tmp_path, name, forget, untargeted, ppl, method=None, subtasks=None):
    from curvmem.io import write_json

    d = tmp_path / name
    edit = {"method": method, "spec": {"rho": 0.6}, "seconds": 1.0, "peak_rss_mb": 100.0} \
        if method else None
    write_json(d / "memorization_forget.json", _mem(forget))
    write_json(d / "memorization_untargeted.json", _mem(untargeted))
    write_json(d / "memorization_control.json", _mem(0.0))
    write_json(d / "perplexity.json", {"perplexity": ppl, "perplexity_batch_mean": ppl,
                                       "edit": edit})
    write_json(d / "tasks.json", {"accuracy": {"closed_book": 0.8, "open_book": 0.9,
                                               "arithmetic": 0.5, "logic": 0.7},
                                  "n": {"closed_book": 100, "open_book": 100, "arithmetic": 100,
                                        "logic": 100},
                                  **({"accuracy_by_subcategory": subtasks,
                                      "n_by_subcategory": {k: 50 for k in subtasks}}
                                     if subtasks else {})})
    if method:
        write_json(d / "coherence.json", {"ndcg10": 0.9})
    return f"{name}={d}"


def _validation_files(tmp_path, name, forget_validation, ppl_selection, val_accuracy):
    from curvmem.io import write_json

    d = tmp_path / name
    write_json(d / "memorization_forget_validation.json", _mem(forget_validation))
    write_json(d / "perplexity_selection.json", {"perplexity": ppl_selection,
                                                 "perplexity_batch_mean": ppl_selection})
    write_json(d / "tasks_validation.json", {"accuracy": dict.fromkeys(
        ("closed_book", "open_book", "arithmetic", "logic"), val_accuracy)})


def test_selection_reads_validation_data_only(tmp_path):
    """Every method's pick depends on forget and the selection held-out text alone (the task-
    weighted variant also on the validation tasks): changing any reported set (forget-
    validation, quotes, controls, test tasks, reported perplexity) changes no selection, and
    `reads` names only what each rule reads."""
    from curvmem.report import lm as report

    def build(report_noise):
        rows = {"base": (1.0, 10.0, 1.0, None), "k1": (0.0, 10.5, 0.6, "kfac"),
                "k2": (0.1, 10.6, 0.95, "kfac"), "k3": (0.0, 11.5, 1.0, "kfac"),
                "s1": (0.5, 10.2, 0.9, "svd"), "s2": (0.2, 10.9, 0.9, "svd"),
                "b1": (0.0, 10.4, 0.99, "bsn")}
        entries = []
        for i, (name, (forget, ppl_sel, val_acc, method)) in enumerate(rows.items()):
            noise = report_noise[i % len(report_noise)]
            entries.append(_entry(tmp_path / str(report_noise), name, forget, noise,
                                  10.0 + 5 * noise, method))
            _validation_files(tmp_path / str(report_noise), name, noise, ppl_sel, val_acc)
        return report.build_summary(report.parse_entries(entries))

    first, second = build((0.0, 1.0, 0.5)), build((1.0, 0.0, 0.25, 0.75))
    # the paper's rule: k1 (forget 0 at +5 % selection perplexity; k3 is over the budget); the
    # task-weighted variant: k1 scores 0 + 0.5 x 0.4 = 0.2, k2 0.1 + 0.5 x 0.05 = 0.125
    expected = {"kfac": "k1", "svd": "s2", "bsn": "b1"}
    variant = {"kfac": "k2", "svd": "s2", "bsn": "b1"}
    for summary in (first, second):
        assert {m: s["selected"] for m, s in summary["selection"].items()} == expected
        assert {m: s["selected"] for m, s in
                summary["selection_variants"]["task_weighted"].items()} == variant
        for s in summary["selection"].values():
            assert s["reads"] == ["memorization_forget", "perplexity_selection"]
        for s in summary["selection_variants"]["task_weighted"].values():
            assert set(s["reads"]) <= set(report.SELECTION_READS)
            assert s["reads"] == ["memorization_forget", "perplexity_selection",
                                  "tasks_validation"]
    assert first["models"]["k1"]["untargeted"] != second["models"]["k1"]["untargeted"]


def test_report_selects_by_forget_and_perplexity_only(tmp_path):
    entries = [_entry(tmp_path, "base", 1.0, 1.0, 10.0),
               _entry(tmp_path, "a", 0.0, 0.9, 12.0, "kfac"),   # best forget, ppl +20 %: out
               _entry(tmp_path, "b", 0.2, 0.8, 10.5, "kfac"),
               _entry(tmp_path, "c", 0.1, 0.95, 10.9, "kfac"),  # chosen despite worse untargeted
               _entry(tmp_path, "s", 0.0, 0.0, 10.1, "svd")]    # not K-FAC
    out = tmp_path / "summary.json"
    assert main(["report-lm", *[a for e in entries for a in ("--entry", e)], "--out", str(out),
                 "--table", str(tmp_path / "t.md"), "--figure", str(tmp_path / "r.png"),
                 "--sweep-figure", str(tmp_path / "s.png")]) == 0
    summary = json.loads(out.read_text())
    assert summary["selected"] == "c"
    assert set(summary["models"]) == {"base", "a", "b", "c", "s"}
    m = summary["models"]["c"]
    assert m["method"] == "kfac" and m["ndcg10"] == 0.9 and m["tasks"]["logic"] == 0.7
    assert m["forget"]["by_kind"]["random"]["strict"] == 0.1
    assert summary["models"]["base"]["ndcg10"] is None
    table = (tmp_path / "t.md").read_text()
    assert "paper" in table
    assert "| 0.500 ± 0.050 (100) |" in table  # arithmetic: sqrt(0.5 * 0.5 / 100)
    assert (tmp_path / "r.png").stat().st_size > 0 and (tmp_path / "s.png").stat().st_size > 0


def test_report_subcategories(tmp_path):
    entries = [_entry(tmp_path, "base", 1.0, 1.0, 10.0,
                      subtasks={"logic/order": 0.5, "logic/boolean": 0.8}),
               _entry(tmp_path, "k", 0.0, 0.0, 10.5, "kfac",
                      subtasks={"logic/order": 0.25, "logic/boolean": 0.8}),
               _entry(tmp_path, "old", 0.0, 0.0, 10.5, "kfac")]  # evaluated without subcategories
    out = tmp_path / "summary.json"
    assert main(["report-lm", *[a for e in entries for a in ("--entry", e)], "--out", str(out),
                 "--table", str(tmp_path / "t.md")]) == 0
    models = json.loads(out.read_text())["models"]
    assert models["k"]["subtasks"] == {"logic/order": 0.25, "logic/boolean": 0.8}
    assert models["base"]["subtasks_n"] == {"logic/order": 50, "logic/boolean": 50}
    table = (tmp_path / "t.md").read_text()
    assert "| model | logic/boolean | logic/order |" in table
    assert "| base accuracy (n) | 0.800 (50) | 0.500 (50) |" in table
    assert "| k | 100.0 | 50.0 |" in table and "| old | – | – |" in table
    # a base without subcategories: no such table
    entries = [_entry(tmp_path, "base2", 1.0, 1.0, 10.0).replace("base2=", "base="),
               _entry(tmp_path, "k2", 0.0, 0.0, 10.5, "kfac",
                      subtasks={"logic/order": 0.25})]
    assert main(["report-lm", *[a for e in entries for a in ("--entry", e)], "--out", str(out),
                 "--table", str(tmp_path / "t2.md")]) == 0
    assert "subcategory" not in (tmp_path / "t2.md").read_text()


def test_report_bad_entries(tmp_path, capsys):
    entry = _entry(tmp_path, "x", 1.0, 1.0, 10.0)
    assert main(["report-lm", "--entry", entry, "--out", str(tmp_path / "o.json")]) == 2
    assert "named 'base'" in capsys.readouterr().err
    assert main(["report-lm", "--entry", "base", "--out", str(tmp_path / "o.json")]) == 2
    (tmp_path / "x" / "perplexity.json").unlink()
    assert main(["report-lm", "--entry", entry.replace("x=", "base="),
                 "--out", str(tmp_path / "o.json")]) == 2
    assert "missing evaluation file" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_report_columns_named_and_tasks_optional(tmp_path):
    """The paper's 7B data: forget = one released half, control = its validation half (where the
    paper's Table 1 Dolma numbers belong); skills scored by the harness only (no tasks.json)."""
    entries = [_entry(tmp_path, "base", 1.0, 1.0, 10.0), _entry(tmp_path, "k", 0.1, 0.2, 10.5,
                                                                "kfac")]
    for name in ("base", "k"):
        (tmp_path / name / "tasks.json").unlink()
    out = tmp_path / "summary.json"
    assert main(["report-lm", *[a for e in entries for a in ("--entry", e)], "--out", str(out),
                 "--table", str(tmp_path / "t.md"), "--label", "forget=other half",
                 "--label", "control=validation half", "--paper-dolma", "control"]) == 0
    summary = json.loads(out.read_text())
    assert summary["columns"]["paper_dolma"] == "control"
    assert summary["models"]["k"]["tasks"]["logic"] is None
    table = (tmp_path / "t.md").read_text()
    # the paper's Dolma columns (its validation half) come first: here our control set, so the
    # paper's 7B K-FAC Dolma strict (3.4 %) sits beside the validation half, not the other half
    assert ("| source | model | validation half strict | loose | Avg Lev | quotes (untargeted) "
            "strict | loose | Avg Lev | PPL | nDCG@10 | other half strict |") in table
    assert "| paper (OLMo-2) | 7B K-FAC | 3.4 | 8.8 | 0.704 | 16.1 | 23.8 | 0.625 |" in table
    assert main(["report-lm", *[a for e in entries for a in ("--entry", e)], "--out", str(out),
                 "--label", "half=x"]) == 2


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_smoke_world_train_and_every_evaluator(tmp_path, capsys):
    from curvmem.model import load_model, mlp_modules, model_fingerprint
    from curvmem.schema import write_edit

    w, tok, m = smoke_lm(tmp_path)
    log = json.loads((m / "train_log.json").read_text())
    assert log["steps"] == 4 and math.isfinite(log["final_loss"])

    # a hand-made edit: zero one gate_proj
    model = load_model(m)
    mod = mlp_modules(model, [1], ["mlp.gate_proj"])[0]
    edit = tmp_path / "zero.safetensors"
    write_edit(edit, {mod.param_name: torch.zeros_like(mod.module.weight)},
               {"method": "kfac", "spec": {"layers": [1]},
                "model_fingerprint": model_fingerprint(model)})

    res = tmp_path / "res"
    for name, extra in (("base", []), ("edit", ["--edit", str(edit)])):
        d = res / name
        for split, data in (("forget", "canaries_forget"), ("untargeted", "quotes"),
                            ("control", "canaries_control")):
            assert main(["evaluate", "memorization", "--model", str(m), *extra, "--data",
                         str(w / f"{data}.jsonl"),
                         "--out", str(d / f"memorization_{split}.json")]) == 0
        assert main(["evaluate", "perplexity", "--model", str(m), *extra, "--data",
                     str(w / "heldout.jsonl"), "--out", str(d / "perplexity.json")]) == 0
        assert main(["evaluate", "tasks", "--model", str(m), *extra, "--data",
                     str(w / "tasks.jsonl"), "--out", str(d / "tasks.json")]) == 0
    assert main(["evaluate", "coherence", "--model", str(m), "--edit", str(edit), "--data",
                 str(w / "heldout.jsonl"), "--out", str(res / "edit" / "coherence.json")]) == 0

    mem = json.loads((res / "base" / "memorization_forget.json").read_text())
    assert mem["n"] == 8 and set(mem["by_kind"]) == {"random", "menu", "table", "licence"}
    ppl = json.loads((res / "edit" / "perplexity.json").read_text())
    assert ppl["edit"]["method"] == "kfac" and ppl["perplexity"] > 1
    coh = json.loads((res / "edit" / "coherence.json").read_text())
    assert 0 <= coh["ndcg10"] < 1  # zeroing a gate changes the ranking
    tasks = json.loads((res / "base" / "tasks.json").read_text())
    assert set(tasks["accuracy"]) == {"closed_book", "open_book", "arithmetic", "logic"}

    assert main(["report-lm", "--entry", f"base={res / 'base'}", "--entry",
                 f"zero={res / 'edit'}", "--out", str(tmp_path / "summary.json")]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["models"]["zero"]["ndcg10"] == coh["ndcg10"]

    # bad inputs: one clear error, exit 2, no output file
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = tmp_path / "never.json"
    assert main(["evaluate", "perplexity", "--model", str(m), "--data", str(empty),
                 "--out", str(out)]) == 2
    assert main(["evaluate", "memorization", "--model", str(m), "--data",
                 str(w / "canaries_forget.jsonl"), "--prefix-len", "500", "--out", str(out)]) == 2
    assert main(["evaluate", "tasks", "--model", str(m), "--data", str(w / "heldout.jsonl"),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "empty" in err and "fewer than prefix 500" in err and "missing field" in err
    assert not out.exists()


def test_evaluations_load_the_model_in_the_requested_dtype(tmp_path):
    """--dtype bfloat16 (a 7B's memory halved) gives the same perplexity to bf16 rounding."""
    import random

    from conftest import tiny_olmo2
    from curvmem.model.lm import train_tokenizer
    from curvmem.world.lm import paragraph

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": paragraph(random.Random(i))}) + "\n"
                              for i in range(30)))
    train_tokenizer(corpus, tmp_path / "model", vocab_size=300)
    from curvmem.model import load_tokenizer

    tiny_olmo2(vocab=len(load_tokenizer(tmp_path / "model"))).save_pretrained(tmp_path / "model")
    out = {}
    for dtype in ("float32", "bfloat16"):
        path = tmp_path / f"ppl_{dtype}.json"
        assert main(["evaluate", "perplexity", "--model", str(tmp_path / "model"), "--data",
                     str(corpus), "--block-len", "16", "--dtype", dtype, "--device", "cpu",
                     "--out", str(path)]) == 0
        out[dtype] = json.loads(path.read_text())
        assert out[dtype]["load"] == {"dtype": dtype, "device": "cpu"}
    assert out["bfloat16"]["perplexity"] == pytest.approx(out["float32"]["perplexity"], rel=0.02)
    assert out["bfloat16"]["perplexity"] != out["float32"]["perplexity"]  # really ran in bf16


def test_sweep_figure_draws_one_line_per_layer_set():
    from curvmem.report.figures import _kfac_sweep_lines

    def spec(layers, rho):
        return {str(k): {"mlp.gate_proj": rho, "mlp.up_proj": rho} for k in layers}

    models = {"base": {},
              "kfac-L5-rho0.8": {"method": "kfac", "spec": spec([5], 0.8)},
              "kfac-L5-rho0.6": {"method": "kfac", "spec": spec([5], 0.6)},
              "kfac-L4+5-rho0.7": {"method": "kfac", "spec": spec([4, 5], 0.7)},
              "kfac-bottom-L5-rho0.6": {"method": "kfac-bottom", "spec": spec([5], 0.6)},
              "mixed": {"method": "kfac", "spec": {"5": {"mlp.gate_proj": 0.6,
                                                         "mlp.up_proj": 0.8}}},
              "bsn": {"method": "bsn", "spec": {"ratio": 0.03}}}
    assert _kfac_sweep_lines(models) == {
        "L5": [(0.6, "kfac-L5-rho0.6"), (0.8, "kfac-L5-rho0.8")],
        "L4+5": [(0.7, "kfac-L4+5-rho0.7")]}


def test_a_wide_perplexity_range_gets_a_log_axis(tmp_path):
    import matplotlib.pyplot as plt

    from curvmem.report.figures import log_x_if_wide, sweep_figure

    fig, ax = plt.subplots()
    assert not log_x_if_wide(ax, [40.0, 45.0, 90.0, None])  # 2.25x: linear
    assert ax.get_xscale() == "linear"
    assert log_x_if_wide(ax, [40.0, 45.0, 456.0])  # one wrecked control: log
    assert ax.get_xscale() == "log"
    plt.close(fig)

    def mem(strict):
        kinds = {k: {"strict": strict} for k in ("random", "natural")}
        return {"strict": strict, "by_kind": kinds}

    def model(ppl, strict, **meta):
        return {"forget": mem(strict), "untargeted": mem(strict), "perplexity": ppl, **meta}

    spec = {"1": {"mlp.gate_proj": 0.6, "mlp.up_proj": 0.6}}
    summary = {"models": {"base": model(44.0, 1.0),
                          "kfac-L1-rho0.6": model(39.0, 0.0, method="kfac", spec=spec),
                          "kfac-random-L1-rho0.6": model(456.0, 0.0, method="kfac-random",
                                                         spec=spec)},
               "selected": "kfac-L1-rho0.6"}
    sweep_figure(summary, tmp_path / "sweep.png", max_ppl_rise=0.1)
    assert (tmp_path / "sweep.png").stat().st_size > 10_000


def test_readme_tables_name_each_subcategory_by_its_own_category(tmp_path):
    from curvmem.report.readme import lm_tables

    subs = {"arithmetic/sum": 0.9, "closed_book/repeats_12": 0.7, "logic/forward": 0.8}
    entries = [_entry(tmp_path, "base", 1.0, 1.0, 10.0, subtasks=subs),
               _entry(tmp_path, "k", 0.0, 0.0, 10.5, "kfac", subtasks=subs)]
    out = tmp_path / "summary.json"
    assert main(["report-lm", *[a for e in entries for a in ("--entry", e)], "--out", str(out)]) == 0
    header = next(line for line in "\n".join(lm_tables(json.loads(out.read_text()))).splitlines()
                  if line.startswith("| model | closed_book"))
    assert "| arithmetic: sum | closed_book: repeats_12 | logic: forward |" in header
    assert "logic: sum" not in header
