"""The embedded world: determinism, disjoint splits, config validation, tokenizer, packing."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
import torch

from curvmem import io, model, presets
from curvmem.model import lm as model_lm
from curvmem.model import muon
from curvmem.world import lm as world_lm


@pytest.fixture(scope="module")
def smoke_cfg():
    return presets.world_config("smoke", seed=3)


@pytest.fixture(scope="module")
def smoke_world(smoke_cfg):
    return world_lm.generate_world(smoke_cfg)


def test_generation_is_deterministic_and_seeded(smoke_cfg, smoke_world):
    assert world_lm.generate_world(smoke_cfg) == smoke_world
    other = world_lm.generate_world(presets.world_config("smoke", seed=4))
    assert other["canaries_forget"] != smoke_world["canaries_forget"]
    assert other["train"] != smoke_world["train"]


def test_changing_one_size_leaves_other_components_alone(smoke_cfg, smoke_world):
    bigger = world_lm.generate_world(presets.world_config("smoke", seed=3, overrides={"n_filler": 70}))
    assert bigger["canaries_control"] == smoke_world["canaries_control"]
    assert bigger["quotes"] == smoke_world["quotes"]
    assert [t for t in bigger["tasks"] if t["category"] == "arithmetic"] == \
        [t for t in smoke_world["tasks"] if t["category"] == "arithmetic"]


MEMORIZED = ("canaries_forget", "canaries_forget_validation", "canaries_control", "quotes",
             "quotes_control")


def test_memorized_sets_are_disjoint_repeated_and_of_their_kinds(smoke_cfg, smoke_world):
    train_counts = Counter(r["text"] for r in smoke_world["train"])
    texts = {s: [r["text"] for r in smoke_world[s]] for s in MEMORIZED}
    everything = [t for ts in texts.values() for t in ts]
    assert len(set(everything)) == len(everything)
    for split in ("canaries_forget", "canaries_forget_validation"):
        assert Counter(r["kind"] for r in smoke_world[split]) == \
            dict.fromkeys(world_lm.DOCUMENT_KINDS, smoke_cfg.n_documents)
        for text in texts[split]:
            assert train_counts[text] == smoke_cfg.document_repeats
    for text in texts["quotes"]:
        assert train_counts[text] == smoke_cfg.quote_repeats
    for split in ("canaries_control", "quotes_control"):
        assert not any(train_counts[t] for t in texts[split])
    # quotes: the paper's format (prefix + the last 8 words), an attribution, the long ones too
    for row in smoke_world["quotes"] + smoke_world["quotes_control"]:
        assert row["prefix"] + row["suffix"] == row["text"]
        assert len(row["suffix"].split()) == world_lm.QUOTE_SUFFIX_WORDS
        assert " once said: " in row["prefix"]
    longs = [r for r in smoke_world["quotes"] if r["kind"] == "quote_long"]
    assert len(longs) == smoke_cfg.n_long_quotes
    assert [r["text"] for r in smoke_world["quotes_long"]] == [r["text"] for r in longs]


def test_curvature_corpus_holds_no_memorized_or_trained_text(smoke_world):
    """The corpus factors are collected on: fresh samples of the world, none of its memorized
    items (documents, quotes, controls) or of its training items, evaluation items or held-out
    text."""
    curvature = [r["text"] for r in smoke_world["curvature"]]
    blob = "\n".join(curvature)
    for split in MEMORIZED:
        for row in smoke_world[split]:
            assert row["text"] not in blob
            assert row["text"][:60] not in blob  # not even a document's opening
    assert not set(curvature) & {r["text"] for r in smoke_world["train"]}
    held = {r["text"] for s in ("heldout", "heldout_selection") for r in smoke_world[s]}
    assert not set(curvature) & held
    for t in smoke_world["tasks"] + smoke_world["tasks_validation"]:
        if t["category"] != "closed_book":
            assert t["prompt"] not in blob
    sources = Counter(r["source"] for r in smoke_world["curvature"])
    assert set(sources) == {"filler", "closed_book", "open_book", "copy", "arithmetic", "logic",
                            *(f"genre_{k}" for k in world_lm.GENRE_KINDS)}


def test_memorized_positions_are_counted(smoke_world):
    """count_memorized_positions finds memorized content in a stream, and none in the curvature
    corpus (characters stand in for tokens: 64 of them for the 16 tokens of a real run)."""
    from curvmem.world import corpus

    def stream(texts):
        ids = [t for text in texts for t in [ord(c) for c in text] + [0]]
        return torch.tensor(ids)[None]

    rows = smoke_world["canaries_forget"][:2]
    windows = [[ord(c) for c in r["text"]] for r in rows]
    dirty = stream(["some filler.", rows[0]["text"], "more filler.", rows[1]["text"][:40]])
    assert corpus.count_memorized_positions(dirty, windows, n=16) == len(rows[0]["text"]) + 40
    clean = stream([r["text"] for r in smoke_world["curvature"]])
    all_windows = [[ord(c) for c in r["text"]] for s in MEMORIZED for r in smoke_world[s]]
    assert corpus.count_memorized_positions(clean, all_windows, n=64) == 0


def test_heldout_and_retain(smoke_world):
    train_texts = {r["text"] for r in smoke_world["train"]}
    held, selection = ({r["text"] for r in smoke_world[s]} for s in ("heldout", "heldout_selection"))
    assert not (held | selection) & train_texts
    assert not held & selection  # the selection's budget and the reported perplexity differ
    # the retain set: once-seen training documents (grammar paragraphs and genre documents)
    once = Counter((r["text"], r["source"]) for r in smoke_world["train"]
                   if r["source"] == "filler" or r["source"].startswith("genre_"))
    assert all(once[(r["text"], r["source"])] == 1 for r in smoke_world["retain"])
    assert {r["source"] for r in smoke_world["retain"]} > {"filler"}


def test_task_items_do_not_leak_into_training(smoke_cfg, smoke_world):
    train_text = "\n".join(r["text"] for r in smoke_world["train"])
    for split in ("tasks", "tasks_validation"):
        tasks = smoke_world[split]
        assert Counter(t["category"] for t in tasks) == {  # facts: half validation, half test
            "closed_book": 2 * smoke_cfg.n_entities, "open_book": smoke_cfg.n_task_test,
            "arithmetic": smoke_cfg.n_task_test + 2 * smoke_cfg.n_arith_primitive_test,
            "logic": smoke_cfg.n_task_test}
        assert len({t["id"] for t in tasks}) == len(tasks)  # ids pair items across evaluations
        for t in tasks:
            recall = t["category"] == "closed_book" or t.get("subcategory") in ("fact", "carry")
            if recall:  # facts and the arithmetic table: the item itself is trained
                assert f"{t['prompt']} {t['answer']}." in train_text
            else:  # fresh problems: the prompt never appears in training
                assert t["prompt"] not in train_text
            if t.get("subcategory") == "sum":  # nor its operand pair, in either order
                a, b = t["prompt"].removeprefix("Add: ").removesuffix(" =").split(" + ")
                assert f"Add: {b} + {a} =" not in train_text
        # invented names in open-book tests are fresh: nowhere in training
        fresh = [t["answer"] for t in tasks if t["category"] == "open_book"
                 and t["answer"][0].isupper()]
        assert fresh
        for name in fresh:
            assert name not in train_text
    test, val = ({t["prompt"] for t in smoke_world[s]} for s in ("tasks", "tasks_validation"))
    assert not test & val  # validation and test never share an item


def test_subcategories_split_every_category_but_open_book():
    cfg = presets.world_config("default")
    w = world_lm.generate_world(cfg)
    for split in ("tasks", "tasks_validation"):
        subs = Counter((t["category"], t.get("subcategory")) for t in w[split])
        width = len(str(max(cfg.fact_repeats)))
        assert subs == {
            ("open_book", None): cfg.n_task_test,
            ("arithmetic", "sum"): cfg.n_task_test,
            ("arithmetic", "fact"): cfg.n_arith_primitive_test,
            ("arithmetic", "carry"): cfg.n_arith_primitive_test,
            **{("logic", sub): cfg.n_task_test // 2 for sub in world_lm.LOGIC_SUBCATEGORIES},
            **{("closed_book", f"repeats_{r:0{width}d}"): 2 * cfg.n_entities // len(
                cfg.fact_repeats) for r in cfg.fact_repeats}}
        # enough items to count: at least 500 test (and as many validation) items a category
        assert min(Counter(t["category"] for t in w[split]).values()) >= 500


def test_closed_book_facts_are_trained_as_often_as_their_subcategory_says():
    cfg = presets.world_config("smoke", overrides={"n_entities": 12, "fact_repeats": [1, 2, 5]})
    w = world_lm.generate_world(cfg)
    assert cfg.fact_repeats == (1, 2, 5)
    facts = [r["text"] for r in w["train"] if r["source"] == "closed_book"]
    levels = Counter()
    for t in w["tasks"] + w["tasks_validation"]:
        if t["category"] != "closed_book":
            continue
        repeats = int(t["subcategory"].removeprefix("repeats_"))
        entity = t["prompt"].rsplit(" of ", 1)[1].removesuffix(" is")
        # every statement of the fact names its entity and its value
        lines = [f for f in facts if {entity, t["answer"]} <= set(re.findall(r"\w+", f))]
        assert len(lines) == repeats, (t, lines)
        assert f"{t['prompt']} {t['answer']}." in lines  # the question form is one of them
        levels[repeats] += 1
    assert levels == dict.fromkeys((1, 2, 5), 16)  # 48 facts, a third at each level
    with pytest.raises(ValueError, match="fact_repeats"):
        presets.world_config("smoke", overrides={"fact_repeats": [3, 3]})
    with pytest.raises(ValueError, match="fact_repeats"):
        presets.world_config("smoke", overrides={"fact_repeats": [0, 2]})


def test_logic_tests_are_never_trained_and_split_by_premise_order():
    cfg = presets.world_config("smoke", overrides={"n_logic_train": 1500, "n_task_test": 40})
    w = world_lm.generate_world(cfg)
    trained = {r["text"].rsplit(" ", 1)[0] for r in w["train"] if r["source"] == "logic"}
    curvature = {r["text"].rsplit(" ", 1)[0] for r in w["curvature"] if r["source"] == "logic"}
    tests = [t for s in ("tasks", "tasks_validation") for t in w[s] if t["category"] == "logic"]
    assert Counter(t["subcategory"] for t in tests) == {"forward": 40, "backward": 40}
    for t in tests:  # forward: the second premise starts where the first ends
        first, second = t["prompt"].split(" Question:")[0].split(". ")
        linked = first.split(" than the ")[1] == second.removeprefix("The ").split(" is ")[0]
        assert linked == (t["subcategory"] == "forward")
    prompts = {t["prompt"] for t in tests}
    assert not prompts & trained and not prompts & curvature and not trained & curvature
    assert sum(r["source"] == "logic" for r in w["train"]) == 1500


def test_arithmetic_operand_pairs_are_disjoint_between_training_tests_and_curvature():
    w = world_lm.generate_world(presets.world_config("default"))

    def pairs(rows):
        out = set()
        for text in rows:
            if text.startswith("Add: "):
                a, b = text.removeprefix("Add: ").split(" =")[0].split(" + ")
                out.add(frozenset((int(a), int(b))))
        return out

    train = pairs(r["text"] for r in w["train"] if r["source"] == "arithmetic")
    curvature = pairs(r["text"] for r in w["curvature"] if r["source"] == "arithmetic")
    test, val = (pairs(t["prompt"] for t in w[s]) for s in ("tasks", "tasks_validation"))
    assert len(test) == len(val) == 500 and len(curvature) == 300
    assert not train & test and not train & val and not test & val
    assert not curvature & (train | test | val)
    # the tests cover carries into the tens and into the hundreds, and sums without a carry
    units = Counter((a % 10 + b % 10 >= 10, a + b >= 100) for p in test
                    for a, b in [sorted(p) * 2 if len(p) == 1 else sorted(p)])
    assert min(units.values()) >= 50


def test_copy_practice_and_open_book_passage_size():
    cfg = presets.world_config("smoke", overrides={"n_copy_train": 5, "open_facts": 3})
    w = world_lm.generate_world(cfg)
    copies = [r["text"] for r in w["train"] if r["source"] == "copy"]
    assert len(copies) == 5
    names = set()
    for text in copies:
        first, again = text.removeprefix("Repeat: ").removesuffix(".").split(". Again: ")
        assert first == again and len(first.split()) == 4
        names |= set(first.split())
    tested = " ".join(t["prompt"] + " " + t["answer"] for t in w["tasks"])
    assert not names & set(tested.replace(".", " ").split())
    for t in w["tasks"]:
        if t["category"] == "open_book":
            passage = t["prompt"].removeprefix("Passage: ").split(" Question:")[0]
            assert passage.count(".") == 3
    with pytest.raises(ValueError, match="open_facts"):
        presets.world_config("smoke", overrides={"open_facts": 9})


def test_task_answers_are_right(smoke_world):
    for t in smoke_world["tasks"]:
        if t.get("subcategory") in ("fact", "carry"):
            terms = t["prompt"].removeprefix("Compute: ").removesuffix(" =").split(" + ")
            assert int(t["answer"]) == sum(map(int, terms))
            assert len(terms) == (3 if t["subcategory"] == "carry" else 2)
        if t.get("subcategory") == "sum":
            a, b = map(int, t["prompt"].removeprefix("Add: ").removesuffix(" =").split(" + "))
            units, tens, total = t["answer"].split(", ")
            assert total == f"so {a + b}"
            assert units == f"{a % 10} + {b % 10} = {a % 10 + b % 10}"
            carry = " + 1" if a % 10 + b % 10 >= 10 else ""
            assert tens == f"{a // 10} + {b // 10}{carry} = {(a + b) // 10}"
        if t["category"] == "logic":  # the chain's ends, from the premises alone
            premises, question = t["prompt"].split(" Question: the ")
            order = [p.removeprefix("The ").split(" than the ") for p in premises.split(". ")]
            greater = {x.split(" is ")[0]: y.rstrip(".") for x, y in order}
            first = (set(greater) - set(greater.values())).pop()
            last = (set(greater.values()) - set(greater)).pop()
            most = any(question.startswith(w) for _, w, _ in world_lm.ORDER_RELATIONS)
            assert t["answer"] == (first if most else last)
        if t["category"] == "open_book":
            assert t["answer"] in t["prompt"]


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="unknown world config"):
        presets.world_config("smoke", overrides={"n_canary": 3})
    with pytest.raises(ValueError, match="document_tokens"):
        presets.world_config("smoke", overrides={"document_tokens": 50})
    with pytest.raises(ValueError, match="n_long_quotes"):
        presets.world_config("smoke", overrides={"n_long_quotes": 9})
    with pytest.raises(ValueError, match="preset"):
        presets.world_config("huge")
    with pytest.raises(ValueError, match="JSON"):
        presets.world_config("smoke", overrides="{not json")
    with pytest.raises(ValueError, match=">= 1"):
        presets.world_config("smoke", overrides={"n_filler": 0})


def test_write_world_layout(tmp_path, smoke_cfg):
    meta = world_lm.write_world(tmp_path / "w", smoke_cfg)
    names = sorted(p.name for p in (tmp_path / "w").iterdir())
    assert names == ["canaries_control.jsonl", "canaries_forget.jsonl",
                     "canaries_forget_validation.jsonl", "curvature.jsonl", "heldout.jsonl",
                     "heldout_selection.jsonl", "quotes.jsonl", "quotes_control.jsonl",
                     "quotes_long.jsonl", "retain.jsonl", "tasks.jsonl", "tasks_validation.jsonl",
                     "train.jsonl", "world.json"]
    assert json.loads((tmp_path / "w" / "world.json").read_text())["config"]["seed"] == 3
    assert meta["counts"]["canaries_forget"] == len(world_lm.DOCUMENT_KINDS) * smoke_cfg.n_documents
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left


def test_read_jsonl_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        io.read_jsonl(empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"other": 1}\n')
    with pytest.raises(ValueError, match="missing field"):
        io.read_jsonl(bad, ("text",))
    with pytest.raises(ValueError, match="no such file"):
        io.read_jsonl(tmp_path / "nope.jsonl")


def test_tokenizer_round_trip_and_canary_length(tmp_path, smoke_cfg):
    from transformers import AutoTokenizer

    world_lm.write_world(tmp_path / "w", smoke_cfg)
    model_lm.train_tokenizer(tmp_path / "w" / "train.jsonl", tmp_path / "tok", vocab_size=400)
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert tok.eos_token == model_lm.EOS and tok.pad_token == model_lm.PAD
    text = "Compute: 45 + 23 = 68."
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert "4" in tok.tokenize("Compute: 45")  # digits one by one
    for name in ("canaries_forget", "canaries_forget_validation", "canaries_control",
                 "quotes_long"):  # every item scored on a 64 + 48-token window has one
        for row in io.read_jsonl(tmp_path / "w" / f"{name}.jsonl"):
            assert len(tok(row["text"], add_special_tokens=False)["input_ids"]) >= 112
    with pytest.raises(ValueError, match="vocab-size"):
        model_lm.train_tokenizer(tmp_path / "w" / "train.jsonl", tmp_path / "t2", vocab_size=10)


def test_pack_documents_keeps_documents_whole():
    docs = [[5] * 3, [6] * 4, [7] * 2, [8] * 9]
    blocks = model_lm.pack_documents(docs, seq_len=6, eos_id=1, pad_id=0)
    assert blocks.tolist() == [[5, 5, 5, 1, 0, 0], [6, 6, 6, 6, 1, 0], [7, 7, 1, 0, 0, 0],
                               [8, 8, 8, 8, 8, 8], [8, 8, 8, 1, 0, 0]]
    assert blocks.dtype == torch.long


@pytest.fixture(scope="module")
def smoke_lm_inputs(tmp_path_factory):
    """A written smoke world and its tokenizer (module-scoped: several training tests share it)."""
    root = tmp_path_factory.mktemp("smoke_lm")
    world_lm.write_world(root / "world", presets.world_config("smoke", seed=3))
    model_lm.train_tokenizer(root / "world" / "train.jsonl", root / "tok", vocab_size=400)
    return root / "world", root / "tok"


@pytest.mark.slow  # Inductor compiles C++ kernels: about half a minute on 2 cores
def test_compiled_training_matches_eager(tmp_path, smoke_lm_inputs, monkeypatch):
    from dataclasses import replace

    from safetensors.torch import load_file

    # Inductor's own cache, not the machine's: kernels cached by a process that ran with other
    # CPU settings (ATEN_CPU_CAPABILITY=avx2) crashed a later native run with SIGABRT (seen here)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    w, tok = smoke_lm_inputs
    cfg = replace(presets.train_config("smoke"), steps=6, threads=2)
    eager = model_lm.train_lm(w, tok, tmp_path / "eager", cfg, progress=False)
    compiled = model_lm.train_lm(w, tok, tmp_path / "compiled", replace(cfg, compile=True),
                              progress=False)
    again = model_lm.train_lm(w, tok, tmp_path / "again", replace(cfg, compile=True),
                           progress=False)
    assert not torch.are_deterministic_algorithms_enabled()  # the caller's setting is restored
    assert compiled["config"]["compile"] is True and eager["config"]["compile"] is False
    # the same model and batches: only the kernels' float rounding differs
    assert compiled["losses"] == pytest.approx(eager["losses"], rel=1e-3)
    a = load_file(tmp_path / "eager" / "model.safetensors")
    b = load_file(tmp_path / "compiled" / "model.safetensors")
    assert a.keys() == b.keys()  # saved from the module itself, not the compiled wrapper
    # The tolerance follows from the arithmetic, not from one machine: the two runs round
    # differently in the iterations' precision (unit roundoff u), and a Newton-Schulz iteration
    # magnifies a perturbation by at most its slope at zero, a, per iteration. So each of the
    # `steps` updates may differ by up to a**ns_steps * u of its size, and the weights by that
    # much of the distance training moved them (measured: ~1e-5 of it in float32).
    u = torch.finfo(getattr(torch, eager["muon_ns_dtype"])).eps / 2
    bound = cfg.steps * muon.NS_COEFFICIENTS[0] ** muon.NS_STEPS * u
    tok_ = model.load_tokenizer(tok)
    init = model_lm.build_model(cfg, len(tok_), tok_.eos_token_id, tok_.pad_token_id).state_dict()
    for name in a:
        moved = (a[name] - init[name]).norm()
        assert (b[name] - a[name]).norm() <= bound * moved, name
    # on 2 threads, compiled training is reproducible only with deterministic algorithms on
    assert again["losses"] == compiled["losses"]
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == \
        (tmp_path / "compiled" / "model.safetensors").read_bytes()


def test_compile_without_a_cxx_compiler_is_one_clear_error(tmp_path, smoke_lm_inputs,
                                                           monkeypatch):
    from dataclasses import replace

    from torch._inductor import cpp_builder

    w, tok = smoke_lm_inputs
    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", lambda: "/nonexistent/c++")
    cfg = replace(presets.train_config("smoke"), steps=2, compile=True)
    with pytest.raises(ValueError, match=r"C\+\+ compiler '/nonexistent/c\+\+'.*--no-compile"):
        model_lm.train_lm(w, tok, tmp_path / "model", cfg, progress=False)
    assert not (tmp_path / "model").exists()


def test_muon_with_adamw_splits_parameters_and_shares_the_schedule():
    from dataclasses import replace

    cfg = replace(presets.train_config("smoke"), optimizer="muon")
    model = model_lm.build_model(cfg, vocab_size=50, eos_id=0, pad_id=1)
    opt = model_lm.make_optimizer(model, cfg)
    muon, adamw = opt.optimizers
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    in_adamw = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert in_muon.isdisjoint(in_adamw) and in_muon | in_adamw == set(names.values())
    # every block matrix, and only those: embeddings, LM head and norms stay with AdamW
    assert in_muon == {n for n, p in model.named_parameters()
                       if p.ndim == 2 and n.startswith("model.layers.")}
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= in_adamw
    assert any("q_norm" in n for n in in_muon | in_adamw) and not any("norm" in n for n in in_muon)
    for group in opt.param_groups:  # what train_lm's schedule does
        group["lr"] = 1e-4
    assert all(g["lr"] == 1e-4 for o in opt.optimizers for g in o.param_groups)


def test_weight_decay_shrinks_only_the_block_matrices():
    """--weight-decay: one decoupled step with zero gradients multiplies each block matrix by
    (1 - lr * wd) and leaves embeddings, LM head and norms (AdamW, undecayed) as they were."""
    from dataclasses import replace

    cfg = replace(presets.train_config("smoke", weight_decay=0.3), optimizer="muon", lr=1e-2)
    model = model_lm.build_model(cfg, vocab_size=50, eos_id=0, pad_id=1)
    opt = model_lm.make_optimizer(model, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        if p.ndim == 2 and n.startswith("model.layers."):
            torch.testing.assert_close(p.detach(), before[n] * (1 - 1e-2 * 0.3))
        else:
            torch.testing.assert_close(p.detach(), before[n], rtol=0, atol=0)
    assert presets.train_config("smoke").weight_decay == 0.0  # the preset's: none
    with pytest.raises(ValueError, match="--weight-decay must be >= 0"):
        presets.train_config("smoke", weight_decay=-0.1)
    with pytest.raises(ValueError, match="--weight-decay must be >= 0"):
        presets.train_config("smoke", weight_decay=float("nan"))


def test_muon_step_is_the_orthogonalized_gradient():
    """First Muon step on one matrix against the exact polar factor U Vᵀ of its gradient.

    Muon's Newton-Schulz iteration approximates U Vᵀ (singular values land near 1, not on it);
    with "match_rms_adamw" the step is lr * 0.2 * sqrt(max(d_out, d_in)) times that.
    """
    from dataclasses import replace

    cfg = replace(presets.train_config("smoke"), optimizer="muon", lr=1e-2)
    model = model_lm.build_model(cfg, vocab_size=50, eos_id=0, pad_id=1)
    opt = model_lm.make_optimizer(model, cfg)
    w = model.model.layers[0].mlp.up_proj.weight
    before = w.detach().clone()
    torch.manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    grad = w.grad.clone()
    opt.step()
    step = (before - w.detach()) / (1e-2 * 0.2 * max(w.shape) ** 0.5)
    u, _, vt = torch.linalg.svd(grad, full_matrices=False)
    polar = u @ vt
    cosine = (step * polar).sum() / (step.norm() * polar.norm())
    assert cosine > 0.98
    s = torch.linalg.svdvals(step)
    assert 0.5 < s.min() and s.max() < 1.5  # orthogonalized: no direction dominates
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_muon_training_runs_and_is_reproducible(tmp_path, smoke_lm_inputs):
    from dataclasses import replace

    w, tok = smoke_lm_inputs
    cfg = replace(presets.train_config("smoke"), steps=8, threads=2, optimizer="muon")
    a = model_lm.train_lm(w, tok, tmp_path / "a", cfg, progress=False)
    b = model_lm.train_lm(w, tok, tmp_path / "b", cfg, progress=False)
    assert b["losses"] == a["losses"]
    assert a["config"]["optimizer"] == "muon"
    assert a["muon_ns_dtype"] == str(muon.resolve_ns_dtype("auto", "cpu")).removeprefix("torch.")
    assert a["losses"][-1] < a["losses"][0]
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == \
        (tmp_path / "b" / "model.safetensors").read_bytes()


def test_muon_in_bfloat16_is_torch_muon_bit_for_bit():
    """curvmem.model.muon.Muon with bf16 iterations performs torch.optim.Muon's update exactly."""
    if not hasattr(torch.optim, "Muon"):
        pytest.skip("torch.optim.Muon needs torch >= 2.9")
    gen = torch.Generator().manual_seed(0)
    shapes = [(48, 16), (16, 48), (16, 16)]  # tall, wide (iterated transposed), square
    ours = [torch.nn.Parameter(0.02 * torch.randn(*s, generator=gen)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    a = muon.Muon(ours, lr=3e-3, weight_decay=0.1, ns_dtype="bfloat16")
    b = torch.optim.Muon(theirs, lr=3e-3, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for _ in range(3):
        for p, q in zip(ours, theirs):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        a.step()
        b.step()
    assert all(torch.equal(p, q) for p, q in zip(ours, theirs))


def test_muon_float32_iterations_agree_with_bfloat16_and_the_polar_factor():
    """The float32 iterations compute the same approximate polar factor as bf16, closer."""
    gen = torch.Generator().manual_seed(1)
    g = torch.randn(96, 32, generator=gen)
    u, _, vt = torch.linalg.svd(g.double(), full_matrices=False)
    polar = (u @ vt).float()
    f32 = muon.newton_schulz(g, torch.float32)
    bf16 = muon.newton_schulz(g, torch.bfloat16).float()
    f64 = muon.newton_schulz(g, torch.float64).float()
    assert f32.dtype == torch.float32 and f32.shape == g.shape
    # float32 is the float64 iteration to float32 rounding (five iterations, magnified <= a^5)
    assert (f32 - f64).norm() <= muon.NS_COEFFICIENTS[0] ** 5 * 2 ** -24 * f64.norm()
    # bf16 differs from it by bf16 rounding (8 bits), likewise magnified
    assert (bf16 - f32).norm() <= muon.NS_COEFFICIENTS[0] ** 5 * 2 ** -8 * f32.norm()
    for x in (f32, bf16):
        cosine = (x * polar).sum() / (x.norm() * polar.norm())
        assert cosine > 0.98


def test_muon_iterates_in_bfloat16_only_where_the_hardware_has_it(monkeypatch):
    monkeypatch.setattr(muon, "cpu_has_native_bf16", lambda: False)
    assert muon.resolve_ns_dtype("auto", "cpu") == torch.float32
    assert muon.resolve_ns_dtype("auto", "cuda") == torch.bfloat16
    monkeypatch.setattr(muon, "cpu_has_native_bf16", lambda: True)
    assert muon.resolve_ns_dtype("auto", "cpu") == torch.bfloat16
    assert muon.resolve_ns_dtype("float32", "cuda") == torch.float32
    with pytest.raises(ValueError, match="ns_dtype must be auto, float32, bfloat16"):
        muon.resolve_ns_dtype("int8", "cpu")
    with pytest.raises(ValueError, match="2-D matrices only"):
        muon.Muon([torch.nn.Parameter(torch.zeros(3))], lr=1e-3)


def test_native_bf16_needs_the_hardware_and_avx512_kernels(monkeypatch):
    """ATEN_CPU_CAPABILITY=avx2 runs a bf16-capable CPU as an AVX2-only one: float32 iterations."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert muon.cpu_has_native_bf16()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert not muon.cpu_has_native_bf16()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert not muon.cpu_has_native_bf16()


def test_unknown_optimizer_is_refused(tmp_path, smoke_lm_inputs):
    from dataclasses import replace

    w, tok = smoke_lm_inputs
    cfg = replace(presets.train_config("smoke"), steps=2, optimizer="sgd")
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        model_lm.train_lm(w, tok, tmp_path / "model", cfg, progress=False)
    assert not (tmp_path / "model").exists()


def test_every_memorized_menu_holds_the_window_whatever_the_tokenizer():
    """One token per menu item and per separator is the only bound that holds for every trained
    tokenizer (seed 0's learned some items whole and cut a menu to 109 tokens): every memorized
    or control menu has at least 64 + 48 of them."""
    world = world_lm.generate_world(presets.world_config("default", seed=0))
    menus = [r["text"] for split in ("canaries_forget", "canaries_forget_validation",
                                     "canaries_control") for r in world[split] if r["kind"] == "menu"]
    assert len(menus) == 3 * presets.world_config("default").n_documents
    assert min(world_lm.estimated_tokens(t) for t in menus) >= world_lm.WINDOW_TOKENS
