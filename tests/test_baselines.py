"""BalancedSubnet and the method comparison, on tiny random models (seconds)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import FAMILIES, tiny_olmo2
from curvmem import io, schema
from curvmem.cli import main
from curvmem.edit import bsn
from curvmem.edit.bsn import PAD, BalancedSubnet, BSNConfig, pruned_count, train_bsn
from curvmem.model import adapter_for
from curvmem.report import compare


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny ops run much faster on one thread than fighting over two cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _ids(n, length, seed):
    return torch.randint(0, 61, (n, length), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- the mask


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_mask_prunes_exactly_ratio_of_each_matrix(family):
    model = FAMILIES[family]()
    subnet = BalancedSubnet(model, BSNConfig(ratio=0.1))
    masks = {m.param_name: bsn.score_mask(subnet.scores[m.param_name],
                                                subnet.n_pruned[m.param_name])
             for m in subnet.modules}
    assert len(masks) == 3 * len(adapter_for(model).modules)  # every block, every matrix
    for m in subnet.modules:
        mask = masks[m.param_name]
        numel = m.module.weight.numel()
        assert mask.shape == m.module.weight.shape
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert int((mask == 0).sum()) == round(0.1 * numel) == subnet.n_pruned[m.param_name]
        # the pruned entries are those with the smallest |score|
        s = subnet.scores[m.param_name].detach().abs()
        assert s[mask == 0].max() <= s[mask == 1].min()


def test_pruned_count_rounds_and_keeps_at_least_one():
    assert pruned_count(49152, 0.0015) == 74  # round(73.728)
    assert pruned_count(384, 0.0015) == 1  # round(0.576) = 1
    assert pruned_count(384, 0.001) == 1  # round(0.384) = 0 -> at least one
    assert pruned_count(10, 0.99) == 9  # never the whole matrix


def test_no_gate_leaves_gate_proj_out():
    model = tiny_olmo2()
    names = {m.name for m in bsn.bsn_modules(model, include_gate=False)}
    assert names == {"mlp.up_proj", "mlp.down_proj"}
    assert "mlp.gate_proj" in {m.name for m in bsn.bsn_modules(model)}


def test_straight_through_gradient_reaches_the_scores():
    model = tiny_olmo2()
    subnet = BalancedSubnet(model, BSNConfig(ratio=0.2))
    for p in model.parameters():
        p.requires_grad_(False)
    subnet.sequence_losses(_ids(4, 10, 0)).mean().backward()
    for m in subnet.modules:
        grad = subnet.scores[m.param_name].grad
        assert grad is not None and grad.abs().sum() > 0, m.param_name
        # straight-through: d loss/d score = d loss/d mask ⊙ sign(score), nonzero on kept AND
        # pruned entries (a plain multiply by the hard mask would give pruned entries no signal)
        mask = bsn.score_mask(subnet.scores[m.param_name].detach(),
                                    subnet.n_pruned[m.param_name])
        assert grad[mask == 0].abs().sum() > 0


def test_weights_stay_frozen_and_requires_grad_is_restored():
    model = tiny_olmo2()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_bsn(model, _ids(4, 10, 0), _ids(4, 10, 1), BSNConfig(ratio=0.1, epochs=1, batch_size=4))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.requires_grad for p in model.parameters())


# --------------------------------------------------------------------------- training effect


def _memorizing_olmo2():
    """A tiny OLMo-2 trained to recite random forget strings and a counting rule (retain)."""
    torch.manual_seed(0)
    model = tiny_olmo2(d=32)
    forget = _ids(6, 16, 0)  # random strings: learnable only by memorizing them
    retain = (_ids(24, 1, 1) + torch.arange(16)) % 61  # counting sequences: one rule
    data = torch.cat([forget, retain])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(150):
        loss = model(input_ids=data, labels=data).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), forget, retain


def test_training_raises_forget_loss_and_keeps_retain_loss():
    model, forget, retain = _memorizing_olmo2()
    config = BSNConfig(ratio=0.05, epochs=5, batch_size=10)
    with torch.no_grad():
        base = BalancedSubnet(model, config)
        forget0 = base.sequence_losses(forget, masked=False).mean().item()
        retain0 = base.sequence_losses(retain, masked=False).mean().item()
    assert forget0 < 0.1 and retain0 < 0.1  # it did memorize
    subnet, history = train_bsn(model, forget, retain, config)
    with torch.no_grad():
        forget1 = subnet.sequence_losses(forget).mean().item()
        retain1 = subnet.sequence_losses(retain).mean().item()
    assert len(history) == 5 and history[-1]["forget_ce"] > history[0]["forget_ce"]
    assert forget1 > forget0 + 0.3  # forgetting: the memorized strings got much harder
    assert retain1 < 0.1  # the counting rule survived
    assert forget1 - forget0 > 5 * (retain1 - retain0)


def test_same_seed_same_mask():
    a, _ = train_bsn(tiny_olmo2(), _ids(4, 10, 0), _ids(4, 10, 1),
                     BSNConfig(ratio=0.1, epochs=2, batch_size=3, seed=3))
    b, _ = train_bsn(tiny_olmo2(), _ids(4, 10, 0), _ids(4, 10, 1),
                     BSNConfig(ratio=0.1, epochs=2, batch_size=3, seed=3))
    for name, w in a.baked().items():
        assert torch.equal(w, b.baked()[name])


def test_padding_is_ignored_by_the_loss():
    model = tiny_olmo2()
    subnet = BalancedSubnet(model, BSNConfig(ratio=0.1))
    ids = _ids(2, 8, 0)
    padded = torch.cat([ids, torch.full((2, 5), PAD)], dim=1)
    with torch.no_grad():
        assert torch.allclose(subnet.sequence_losses(ids), subnet.sequence_losses(padded),
                              atol=1e-6)


# --------------------------------------------------------------------------- baked weights


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_baked_weights_equal_w_times_mask_in_model_layout(family):
    model = FAMILIES[family]()
    subnet, _ = train_bsn(model, _ids(4, 10, 0), _ids(4, 10, 1),
                          BSNConfig(ratio=0.1, epochs=1, batch_size=4))
    baked = subnet.baked()
    params = dict(model.named_parameters())
    for m in subnet.modules:
        w = params[m.param_name].detach()
        mask = bsn.score_mask(subnet.scores[m.param_name].detach(),
                                    subnet.n_pruned[m.param_name])
        assert baked[m.param_name].shape == w.shape  # model's own layout (Conv1D: (d_in, d_out))
        assert torch.equal(baked[m.param_name], w * mask)
        assert int((baked[m.param_name] == 0).sum()) >= subnet.n_pruned[m.param_name]
    # the baked model computes what the masked model computed during training
    ids = _ids(3, 9, 2)
    with torch.no_grad():
        masked = subnet.sequence_losses(ids)
        edited = FAMILIES[family]()
        edited.load_state_dict(model.state_dict())
        for name, w in baked.items():
            dict(edited.named_parameters())[name].copy_(w)
        plain = bsn.sequence_ce(edited(input_ids=ids).logits, ids)
    assert torch.allclose(masked, plain, atol=1e-5)


# --------------------------------------------------------------------------- SVD baseline


def test_svd_truncate_keeps_the_stated_fraction_of_singular_values():
    from curvmem.edit import svd_truncate

    W = torch.randn(12, 20, generator=torch.Generator().manual_seed(0))
    S = torch.linalg.svdvals(W.double())
    for drop in (0.0, 0.25, 0.5):
        W_new, stats = svd_truncate(W, drop)
        keep = 12 - round(drop * 12)
        assert stats["singular_values_kept"] == keep
        assert torch.linalg.matrix_rank(W_new) == keep
        assert torch.allclose(torch.linalg.svdvals(W_new)[:keep], S[:keep], atol=1e-8)


# --------------------------------------------------------------------------- CLI: bsn


class CharTokenizer:
    """Stands in for a trained tokenizer: one id per character."""

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) % 61 for c in text]}


def _write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


@pytest.fixture
def bsn_files(tmp_path, monkeypatch):
    """A tiny saved OLMo-2, forget/retain files; the tokenizer is swapped for CharTokenizer."""
    model_dir = tmp_path / "model"
    tiny_olmo2().save_pretrained(model_dir)
    monkeypatch.setattr("curvmem.edit.bsn.load_tokenizer", lambda *a, **k: CharTokenizer())
    forget = _write_jsonl(tmp_path / "forget.jsonl", ["the secret code is 4417", "xq zz qv"])
    retain = _write_jsonl(tmp_path / "retain.jsonl", ["the cat sat on the mat"] * 3)
    return model_dir, forget, retain


def test_cli_bsn_writes_an_edit_that_apply_loads(bsn_files, tmp_path):
    from curvmem.edit import apply
    from curvmem.model import load_model, model_fingerprint

    model_dir, forget, retain = bsn_files
    out = tmp_path / "bsn.safetensors"
    assert main(["baseline", "bsn", "--model", str(model_dir), "--forget", str(forget),
                 "--retain", str(retain), "--ratio", "0.05", "--epochs", "2", "--batch-size",
                 "2", "--seq-len", "16", "--out", str(out)]) == 0
    tensors, meta = schema.read_edit(out)
    model = load_model(model_dir)
    assert meta["method"] == "bsn"
    assert meta["model_fingerprint"] == model_fingerprint(model)
    assert meta["spec"]["ratio"] == 0.05 and meta["spec"]["alpha"] == 0.7
    assert meta["spec"]["modules"] == ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj"]
    assert len(meta["spec"]["forget_fingerprint"]) == 16
    measured = io.read_cost(out)  # costs beside the edit, not in its sidecar
    assert "seconds" not in meta and measured["seconds"] > 0 and measured["peak_rss_mb"] > 0
    assert set(tensors) == set(meta["modules"]) and len(tensors) == 9
    for st in meta["modules"].values():
        assert st == {"pruned": round(0.05 * 384), "total": 384}
    apply(model, out)
    for name, t in tensors.items():
        assert torch.equal(dict(model.named_parameters())[name].detach(), t)


@pytest.mark.parametrize("flags, message", [
    (["--ratio", "0"], "--ratio"),
    (["--ratio", "1.5"], "--ratio"),
    (["--alpha", "1.2"], "--alpha"),
    (["--alpha", "-0.1"], "--alpha"),
    (["--epochs", "0"], "--epochs"),
    (["--empty-forget"], "forget.jsonl"),  # the empty file, named
])
def test_cli_bsn_bad_inputs_fail_cleanly(bsn_files, tmp_path, capsys, flags, message):
    model_dir, forget, retain = bsn_files
    if flags == ["--empty-forget"]:
        forget.write_text("")
        flags = []
    out = tmp_path / "bad.safetensors"
    rc = main(["baseline", "bsn", "--model", str(model_dir), "--forget", str(forget),
               "--retain", str(retain), "--seq-len", "16", "--out", str(out), *flags])
    err = capsys.readouterr().err  # (the tiny model holds 64 positions: --seq-len 16 fits)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_bsn_rejects_out_without_safetensors_suffix(bsn_files, tmp_path):
    model_dir, forget, retain = bsn_files
    with pytest.raises(ValueError, match="safetensors"):
        bsn.run_bsn(model_dir, forget, retain, tmp_path / "bsn.pt")
    assert not (tmp_path / "bsn.pt").exists()


# --------------------------------------------------------------------------- compare


def _model(strict_u, ppl, method=None, spec=None, seconds=None, tasks=0.8):
    m = {"forget": {"strict": strict_u / 2, "loose": strict_u, "avg_distance": 0.5,
                    "by_kind": {}},
         "untargeted": {"strict": strict_u, "loose": min(1.0, strict_u + 0.1),
                        "avg_distance": 0.4, "by_kind": {}},
         "control": {"strict": 0.0, "loose": 0.0, "avg_distance": 0.9, "by_kind": {}},
         "perplexity": ppl, "ndcg10": 0.9,
         "tasks": {"closed_book": tasks, "open_book": 0.9, "arithmetic": 0.7, "logic": 0.6}}
    if method:
        m.update(method=method, spec=spec or {}, seconds=seconds, peak_rss_mb=500.0)
    return m


def _summary(bsn_untargeted=0.5):
    models = {"base": _model(1.0, 10.0, tasks=1.0)}
    for rho, (u, ppl) in {0.9: (0.6, 10.5), 0.7: (0.3, 11.0), 0.5: (0.1, 13.0)}.items():
        models[f"kfac-{rho}"] = _model(u, ppl, "kfac", {"20": {"mlp.up_proj": rho}}, 12.0)
    models["svd-0.1"] = _model(0.4, 11.5, "svd", {"20": {"mlp.up_proj": 0.1}}, 0.5)
    models["bsn-0.0015"] = _model(bsn_untargeted, 11.2, "bsn", {"ratio": 0.0015}, 30.0)
    models["bsn-0.01"] = _model(0.05, 20.0, "bsn", {"ratio": 0.01}, 30.0)  # nothing matches
    models["kfac-random-0.7"] = _model(0.9, 10.2, "kfac-random", {"20": {"mlp.up_proj": 0.7}})
    models["kfac-bottom-0.7"] = _model(0.95, 30.0, "kfac-bottom", {"20": {"mlp.up_proj": 0.7}})
    return {"models": models, "selected": "kfac-0.7"}


def test_compare_table_figure_and_verdict(tmp_path):
    path = tmp_path / "lm_summary.json"
    io.write_json(path, _summary())
    fig, table = tmp_path / "cmp.png", tmp_path / "cmp.md"
    assert main(["compare", "--summary", str(path), "--figure", str(fig),
                 "--table", str(table)]) == 0
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and fig.stat().st_size > 10_000
    text = table.read_text()
    result = compare.compare(path)
    # fronts on quotes: K-FAC (10.5, 0.6), (11, 0.3), (13, 0.1); BSN (11.2, 0.5), (20, 0.05).
    # Over PPL 11.2-20, K-FAC reaches 0.3 then 0.1; BSN 0.5 then 0.05 (from 20): K-FAC lower
    v = result["verdicts"]["kfac_vs_bsn_untargeted_strict"]
    assert v["fronts"]["kfac"] == [(10.5, 0.6), (11.0, 0.3), (13.0, 0.1)]
    assert v["fronts"]["bsn"] == [(11.2, 0.5), (20.0, 0.05)]
    assert v["range"] == [11.2, 20.0] and v["gap"] < 0 and v["verdict"] == "kfac lower"
    assert "kfac vs bsn, untargeted_strict: mean gap" in text and "**kfac lower**" in text
    assert "| kfac-0.7 (selected) | kfac | rho=0.7 | 15.0 | – |" in text  # fractions as %
    assert "The paper's Table 1" in text and "| 7B | K-FAC | 3.4 |" in text
    row = next(r for r in result["rows"] if r["name"] == "kfac-0.7")
    assert row["closed_book_retention"] == pytest.approx(80.0)
    assert [r["method"] for r in result["rows"]][:4] == ["base", "kfac", "kfac", "kfac"]
    assert [r["knob"] for r in result["rows"][1:4]] == [0.5, 0.7, 0.9]


def test_compare_draws_one_curve_per_training_recipe(tmp_path, monkeypatch):
    summary = _summary()
    summary["models"]["bsn-0.0015"]["spec"]["epochs"] = 5
    summary["models"]["bsn-0.01"]["spec"]["epochs"] = 50
    rows = {r["name"]: r for r in compare.comparison_rows(summary)}
    assert rows["bsn-0.0015"]["recipe"] == "5 epochs" and rows["bsn-0.01"]["recipe"] == "50 epochs"
    assert rows["kfac-0.7"]["recipe"] == ""  # one layer set: no label
    compare.comparison_figure(list(rows.values()), tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 0
    # K-FAC edits of other layer sets are other curves, labelled by their layers
    summary["models"]["kfac-L4+5-0.7"] = _model(0.2, 11.4, "kfac", {"4": {"mlp.up_proj": 0.7},
                                                                   "5": {"mlp.up_proj": 0.7}})
    rows = {r["name"]: r for r in compare.comparison_rows(summary)}
    assert rows["kfac-0.7"]["recipe"] == rows["kfac-0.9"]["recipe"] == "L20"
    assert rows["kfac-L4+5-0.7"]["recipe"] == "L4+5"
    assert rows["svd-0.1"]["recipe"] == ""  # SVD has one layer set here
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    compare.comparison_figure(list(rows.values()), tmp_path / "g.png")
    assert (tmp_path / "g.png").stat().st_size > 0
    labels = figures[0].axes[0].get_legend_handles_labels()[1]
    assert labels == ["base model", "K-FAC (top curvature), L20", "K-FAC (top curvature), L4+5",
                      "SVD", "BalancedSubnet, 5 epochs", "BalancedSubnet, 50 epochs",
                      "control: K-FAC bottom", "control: K-FAC random"]
    kfac_lines = [line for line in figures[0].axes[0].lines
                  if line.get_label().startswith("K-FAC")]
    assert [len(line.get_xdata()) for line in kfac_lines] == [3, 1]  # not one zig-zag of 4


def test_compare_verdict_is_computed_not_assumed(tmp_path):
    path = tmp_path / "s.json"
    io.write_json(path, _summary(bsn_untargeted=0.0))  # BSN now reaches 0 at PPL 11.2
    v = compare.compare(path)["verdicts"]["kfac_vs_bsn_untargeted_strict"]
    assert v["gap"] > 0 and v["verdict"] == "bsn lower"
    models = _summary()["models"]
    del models["bsn-0.0015"], models["bsn-0.01"]
    io.write_json(path, {"models": models})
    assert compare.compare(path)["verdicts"]["kfac_vs_bsn_untargeted_strict"]["verdict"] == \
        "no front"


def test_pareto_front_and_gap_against_brute_force():
    import random

    rng = random.Random(0)
    pts = [(rng.uniform(10, 20), rng.random()) for _ in range(40)]
    front = compare.pareto_front(pts)
    for p, r in pts:  # every point is dominated by (or on) the front
        assert any(fp <= p and fr <= r for fp, fr in front)
    for (p1, r1), (p2, r2) in zip(front, front[1:]):
        assert p1 < p2 and r1 > r2
    assert compare.best_at(front, 9.0) is None
    assert compare.best_at(front, 25.0) == min(r for _, r in pts)


def test_compare_bad_inputs(tmp_path):
    path = tmp_path / "s.json"
    io.write_json(path, {"models": {"kfac": _model(0.1, 10, "kfac")}})
    with pytest.raises(ValueError, match="base"):
        compare.compare(path, figure=tmp_path / "f.png")
    assert not (tmp_path / "f.png").exists()
    io.write_json(path, _summary())
    with pytest.raises(ValueError, match="png"):
        compare.compare(path, figure=tmp_path / "f.jpg")
    with pytest.raises(ValueError, match="no such file"):
        compare.compare(tmp_path / "missing.json")


def test_tokenize_forget_per_text_and_retain_packed():
    tok = CharTokenizer()
    tok.eos_token_id = 0
    forget = bsn.tokenize_texts(["abcdefghij", "xyz"], tok, seq_len=8)
    assert forget.shape == (3, 8)  # "abcdefgh", "ij", "xyz": each text its own sequence(s)
    assert forget[2].tolist() == [ord(c) % 61 for c in "xyz"] + [PAD] * 5
    retain = bsn.tokenize_texts(["abcde", "fgh"], tok, seq_len=4, pack=True)
    stream = [ord(c) % 61 for c in "abcde"] + [0] + [ord(c) % 61 for c in "fgh"] + [0]
    assert retain[retain != PAD].tolist() == stream and retain.shape == (3, 4)
    with pytest.raises(ValueError, match="seq-len"):
        bsn.tokenize_texts(["abc"], tok, seq_len=1)


def test_compare_shows_genre_competence_and_the_removal_verdict(tmp_path):
    summary = _summary()
    summary["models"]["kfac-0.7"]["genre"] = {"control": {"suffix_loss": 0.22,
                                                          "avg_distance": 0.1}}
    summary["models"]["kfac-0.7"]["removes_memorization"] = {
        "forget_validation": {"holds": False}, "quotes": {"holds": None}}
    path = tmp_path / "lm_summary.json"
    io.write_json(path, summary)
    text = compare.compare(path)["table"]
    row = next(line for line in text.splitlines() if line.startswith("| kfac-0.7 (selected)"))
    assert row.endswith("| +0.220 | no, – |")
    row = next(line for line in text.splitlines() if line.startswith("| kfac-0.9 "))
    assert row.endswith("| – | – |")  # an older summary: no genre, no verdict
