"""The analyses (curvmem.analysis) against brute-force computations on tiny models.

Band outputs against `edit.kfac_edit_weight` (the edit's own path) and against W a; per-example
projections against the explicit Kronecker product and autograd weight gradients; the stress
test's batched, left-padded, early-stopping decoder against unpadded greedy decoding one prompt at
a time; stability metrics against explicit projectors; then every CLI subcommand end to end.
"""

from __future__ import annotations

import argparse
import json
import random

import numpy as np
import pytest
import torch

from conftest import tiny_olmo2
from curvmem.analysis import activation_ratio as ar
from curvmem.analysis import per_example as pe
from curvmem.analysis import spectra as sp
from curvmem.analysis import stability as st
from curvmem.analysis import stress as ss
from curvmem.analysis import task_interaction as ti
from curvmem.analysis.common import (
    BANDS,
    capture_inputs,
    mass_share_masks,
    pair_share_masks,
    parse_bands,
    resample_within,
)
from curvmem.edit import kfac_edit_weight, select_pairs
from curvmem.eigen import eigh_descending
from curvmem.evaluate.lm import greedy_continue
from curvmem.io import read_cost
from curvmem.model import mlp_modules

torch.set_num_threads(1)
MODS = ["mlp.gate_proj", "mlp.up_proj"]
# The analyses capture float32 activations from a batched forward; a brute force that runs one
# sequence (or image) at a time sums in other kernels' order, so each activation differs by
# float32 rounding: a few units of u = 2**-24 per operation, compounded over a tiny model's depth.
# A mean of norms, and a ratio of two, carry that relative error. 16 u (~1e-6) bounds it; a wrong
# position, item or band would move a ratio in its first digits. (rel=1e-9, tuned on AVX-512,
# failed with the kernels of an AVX2-only CPU: 1.3e-9 and 1.4e-9.)
FLOAT32_FORWARD_REL = 16 * 2.0 ** -24


class CharTokenizer:
    """One token per character (ids 2..61), EOS 0, PAD 1: enough for clean text and tasks."""

    eos_token_id, pad_token_id = 0, 1

    def _ids(self, text):
        return [2 + ord(c) % 59 for c in text]

    def __call__(self, text, add_special_tokens=False):
        if isinstance(text, list):
            return {"input_ids": [self._ids(t) for t in text]}
        return {"input_ids": self._ids(text)}


def random_eigen(m, n, seed=0) -> dict:
    """Eigenbases of random PSD factors, in load_eigen's layout."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for side, d in (("A", n), ("G", m)):
        x = torch.randn(3 * d, d, generator=g, dtype=torch.float64)
        x = x * torch.rand(d, generator=g, dtype=torch.float64)  # uneven spectrum
        vals, vecs = eigh_descending(x.T @ x)
        out["U" + side], out[{"A": "mu", "G": "lam"}[side]] = vecs, vals.numpy()
    return out


def model_eigen(model, layers=(1,)) -> dict:
    return {(m.layer, m.name): random_eigen(m.d_out, m.d_in, seed=m.layer * 7 + len(m.name))
            for m in mlp_modules(model, list(layers), MODS)}


def mem_rows(n=6, p=10, s=6, seed=0):
    rng = random.Random(seed)
    return [{"prefix_ids": [rng.randrange(2, 61) for _ in range(p)],
             "suffix_ids": [rng.randrange(2, 61) for _ in range(s)],
             "kind": ["random", "natural"][i % 2], "id": i} for i in range(n)]


CLEAN = ["the quiet river carried a small boat past the old mill. " * 3,
         "a farmer counted his goats twice before the storm came in. " * 3]


# --------------------------------------------------------------------------- bands


def test_band_masks_partition_the_pairs_and_match_the_edit_selection():
    e = random_eigen(7, 5)
    for masks in (pair_share_masks(e["lam"], e["mu"]), mass_share_masks(e["lam"], e["mu"])):
        assert np.array_equal(sum(m.astype(int) for m in masks), np.ones((7, 5), int))
    by_pairs = pair_share_masks(e["lam"], e["mu"])
    assert [int(m.sum()) for m in by_pairs] == [round(35 * hi) - round(35 * lo) for lo, hi in BANDS]
    prod = np.outer(e["lam"], e["mu"])
    assert prod[by_pairs[0]].min() >= prod[by_pairs[1]].max()  # top band really on top
    mass = mass_share_masks(e["lam"], e["mu"])
    assert np.array_equal(mass[0], select_pairs(e["lam"], e["mu"], 0.1))
    assert np.array_equal(mass[0] | mass[1], select_pairs(e["lam"], e["mu"], 0.25))
    assert parse_bands("0.1,0.25,0.5") == BANDS
    with pytest.raises(ValueError, match="tile"):
        parse_bands("0.5,0.25")


def test_band_outputs_sum_to_w_a_and_equal_the_edit_of_each_band():
    e = random_eigen(9, 6, seed=3)
    W = torch.randn(9, 6, dtype=torch.float64)
    ops = ar.band_operators(W, e)
    for family, mats in ops.items():
        assert torch.allclose(sum(mats), W, atol=1e-10), family
    for M, op in zip(pair_share_masks(e["lam"], e["mu"]), ops["kfac_pairs"]):
        edited, _ = kfac_edit_weight(W, e["UG"], e["lam"], e["UA"], e["mu"], M)
        assert torch.allclose(op, edited, atol=1e-10)
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)  # svd bands: 6 values cut 1/1/1/3
    assert torch.allclose(ops["svd"][0], S[0] * torch.outer(U[:, 0], Vh[0]), atol=1e-10)


def inputs_at(model, mods, ids, positions):
    """Brute force: one sequence, hooks of our own; {name: (inputs, outputs)} at the positions."""
    got = {}
    hs = [m.module.register_forward_hook(
        lambda mod, a, o, k=m.name: got.__setitem__(k, (a[0][0, positions].double(),
                                                        o[0, positions].double())))
          for m in mods]
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]))
    for h in hs:
        h.remove()
    return got


def test_activation_ratio_equals_a_one_item_at_a_time_computation():
    model, tok = tiny_olmo2(), CharTokenizer()
    eigen, rows = model_eigen(model), mem_rows()
    res = ar.activation_ratio(model, tok, eigen, [1], MODS, rows, CLEAN, max_clean_blocks=5,
                              batch_size=4)
    mods = mlp_modules(model, [1], MODS)

    from curvmem.evaluate.lm import token_blocks
    blocks = token_blocks(CLEAN, tok, 16, 16 * 5)
    positions = list(range(9, 15))
    mem_in = [inputs_at(model, mods, r["prefix_ids"] + r["suffix_ids"], positions) for r in rows]
    clean_in = [inputs_at(model, mods, b.tolist(), positions) for b in blocks]
    for m, record in zip(mods, res["modules"]):
        e, W = eigen[(1, m.name)], m.weight().detach().double()
        a_mem = torch.cat([x[m.name][0] for x in mem_in])
        a_clean = torch.cat([x[m.name][0] for x in clean_in])
        assert torch.allclose(a_mem @ W.T, torch.cat([x[m.name][1] for x in mem_in]), atol=1e-5)
        for b, M in enumerate(pair_share_masks(e["lam"], e["mu"])):
            Wb, _ = kfac_edit_weight(W, e["UG"], e["lam"], e["UA"], e["mu"], M)
            want = (a_mem @ Wb.T).norm(dim=1).mean() / (a_clean @ Wb.T).norm(dim=1).mean()
            assert record["ratio"]["all"]["kfac_pairs"][b] == pytest.approx(
                float(want), rel=FLOAT32_FORWARD_REL)
        assert record["n_positions"] == {"all": 36, "documents": 36, "clean": 30, "natural": 18,
                                         "random": 18}
        assert record["same_kind"] == {}  # no control given: the held-out column only
    assert "definition" in res and res["params"]["bands"][0] == [0.0, 0.1]


def kind_rows(kinds, seed, p=(10, 10), s=(6, 6)):
    """Memorized-format rows of the given kinds; prefix and suffix lengths drawn from p and s."""
    rng = random.Random(seed)
    return [{"prefix_ids": [rng.randrange(2, 61) for _ in range(rng.randint(*p))],
             "suffix_ids": [rng.randrange(2, 61) for _ in range(rng.randint(*s))],
             "kind": k, "id": f"{seed}-{i}"} for i, k in enumerate(kinds)]


def test_same_kind_contrast_equals_a_brute_force_over_positions():
    """Memorized ÷ control of the same kinds, every kind weighing the same (unequal counts
    here), a kind without a control left out; quotes of several lengths; the held-out twins read
    at each item's own shape; the full output's ratio; against per-sequence forwards."""
    model, tok = tiny_olmo2(), CharTokenizer()
    eigen = model_eigen(model)
    mem = kind_rows(["menu", "table", "menu", "table", "orphan", "menu"], 0)
    ctl = kind_rows(["menu", "table", "table", "table"], 1)
    quotes = kind_rows(["quote"] * 4, 2, p=(5, 9), s=(2, 4))
    cquotes = kind_rows(["quote"] * 3, 3, p=(5, 9), s=(2, 4))
    res = ar.activation_ratio(model, tok, eigen, [1], MODS, mem, CLEAN, control_rows=ctl,
                              quote_rows=quotes, control_quote_rows=cquotes, max_clean_blocks=3,
                              batch_size=3, n_resamples=50)
    assert res["contrasts"] == ["documents", "menu", "table", "quotes", "quote"]
    assert res["kinds"] == {"documents": ["menu", "table", "orphan"], "quotes": ["quote"]}
    mods = mlp_modules(model, [1], MODS)
    from curvmem.evaluate.lm import token_blocks
    longest = max(len(r["prefix_ids"]) + len(r["suffix_ids"]) for r in mem + ctl + quotes + cquotes)
    blocks = [b.tolist() for b in token_blocks(CLEAN, tok, longest, longest * 3)]

    def positions(r):
        p = len(r["prefix_ids"])
        return list(range(p - 1, p + len(r["suffix_ids"]) - 1))

    for m, record in zip(mods, res["modules"]):
        e, W = eigen[(1, m.name)], m.weight().detach().double()
        masks = pair_share_masks(e["lam"], e["mu"])
        ops = [kfac_edit_weight(W, e["UG"], e["lam"], e["UA"], e["mu"], M)[0] for M in masks]
        ops.append(W)  # the full output

        def norms(ids, pos, m=m, ops=ops):  # [positions, bands + full]
            a = inputs_at(model, [m], ids, pos)[m.name][0]
            return torch.stack([(a @ op.T).norm(dim=1) for op in ops], 1)

        def pooled(rows, kinds):  # per kind the mean over its positions, then over kinds
            return torch.stack([torch.cat([norms(r["prefix_ids"] + r["suffix_ids"],
                                                 positions(r)) for r in rows
                                           if r["kind"] == k]).mean(0) for k in kinds]).mean(0)

        def twins(rows, kinds):  # each item's held-out twin: every block at its shape, averaged
            per_kind = []
            for k in kinds:
                vals = []
                for r in (r for r in rows if r["kind"] == k):
                    n = len(r["prefix_ids"]) + len(r["suffix_ids"])
                    vals.append(torch.stack([norms(b[:n], positions(r)) for b in blocks]).mean(0))
                # every position of a kind weighs the same: items weighted by their positions
                w = torch.tensor([len(positions(r)) for r in rows if r["kind"] == k],
                                 dtype=torch.float64)
                per_kind.append((torch.stack([v.mean(0) for v in vals]) * w[:, None]).sum(0)
                                / w.sum())
            return torch.stack(per_kind).mean(0)

        for contrast, (num, den, kinds) in {
                "documents": (mem, ctl, ["menu", "table"]), "menu": (mem, ctl, ["menu"]),
                "table": (mem, ctl, ["table"]), "quotes": (quotes, cquotes, ["quote"])}.items():
            want = pooled(num, kinds) / pooled(den, kinds)
            got = record["same_kind"][contrast]
            assert got["kfac_pairs"] == pytest.approx(want[:-1].tolist(), rel=FLOAT32_FORWARD_REL)
            assert got["full"] == pytest.approx(float(want[-1]), rel=FLOAT32_FORWARD_REL)
            assert got["vs_full"]["kfac_pairs"] == pytest.approx(
                (want[:-1] / want[-1]).tolist(), rel=4 * FLOAT32_FORWARD_REL)
            lo, hi = got["ci95"]["full"]
            assert lo <= hi and all(len(c) == 2 for c in got["ci95"]["svd"])
        assert record["same_kind"]["documents"]["n_items"] == {"memorized": 5, "control": 4}
        for side, rows, group, kinds in (("memorized", mem, "documents", ["menu", "table",
                                                                          "orphan"]),
                                         ("control", cquotes, "quotes", ["quote"])):
            want = pooled(rows, kinds) / twins(rows, kinds)
            got = record["heldout"][side][group]
            assert got["kfac_pairs"] == pytest.approx(want[:-1].tolist(), rel=FLOAT32_FORWARD_REL)
            assert got["full"] == pytest.approx(float(want[-1]), rel=FLOAT32_FORWARD_REL)
        assert record["ratio"]["all"] == record["heldout"]["memorized"]["documents"]
        assert len(record["items"]["memorized"]) == 10 and len(record["items"]["control"]) == 7
    mean = res["mean_over_modules"]["same_kind"]["menu"]["svd"]
    assert mean == pytest.approx([np.mean([r["same_kind"]["menu"]["svd"][b]
                                           for r in res["modules"]]) for b in range(4)])


def test_bootstrap_resamples_within_kinds_and_collapses_on_identical_items():
    rng = np.random.default_rng(1)
    kinds = ["a", "b", "a", "c", "b", "a"]
    idx = resample_within(kinds, 200, rng)
    assert idx.shape == (200, 6)
    assert (np.asarray(kinds, dtype=object)[idx] == np.asarray(kinds, dtype=object)).all()
    assert set(idx[:, 0]) == {0, 2, 5}  # every item of the kind is drawn somewhere
    # the kind-balanced mean: per kind weighted by positions, then the plain mean over kinds
    vals, n = np.arange(12.0).reshape(6, 2), np.array([1, 2, 3, 1, 1, 1])
    want = np.mean([(vals[[0, 2, 5]] * n[[0, 2, 5], None]).sum(0) / 5,
                    (vals[[1, 4]] * n[[1, 4], None]).sum(0) / 3, vals[3]], axis=0)
    assert ar.kind_balanced_mean(vals, n, kinds) == pytest.approx(want)
    # identical items in each group: every resample gives the point, so the interval is it
    same = ar.same_kind_contrast(np.ones((4, 7)) * 3, np.ones(4), ["a", "a", "b", "b"],
                                 np.ones((3, 7)) * 2, np.ones(3), ["a", "b", "b"], 2, rng, 30)
    assert same["full"] == 1.5 and same["ci95"]["full"] == [1.5, 1.5]
    assert same["ci95"]["kfac_pairs"] == [[1.5, 1.5]] * 2 and same["vs_full"]["svd"] == [1, 1]


def test_capture_keeps_item_order_across_length_groups():
    model = tiny_olmo2()
    items = [{"ids": list(range(2, 2 + n)), "positions": [n - 1]} for n in (7, 4, 7, 5)]
    got = capture_inputs(model, mlp_modules(model, [0], ["mlp.up_proj"]), items, batch_size=2)
    alone = [capture_inputs(model, mlp_modules(model, [0], ["mlp.up_proj"]), [it])
             for it in items]
    want = torch.cat([a[(0, "mlp.up_proj")] for a in alone])
    assert torch.allclose(got[(0, "mlp.up_proj")], want, atol=1e-6)


# --------------------------------------------------------------------------- per-example


def test_per_example_projection_equals_the_kronecker_product_of_the_weight_gradient():
    model = tiny_olmo2()
    m = mlp_modules(model, [1], ["mlp.up_proj"])[0]
    e = random_eigen(m.d_out, m.d_in, seed=5)
    item = {"ids": [3, 9, 4, 17, 22, 5, 8, 30], "positions": [3, 4, 5, 6]}
    _, grads = next(pe.example_gradients(model, [m], [item]))
    P = pe.project(grads[(1, "mlp.up_proj")], e)
    # brute force: autograd on the weight itself, then (U_G ⊗ U_A)ᵀ vec(grad W) (row-major vec)
    w = m.module.weight
    w.requires_grad_(True)
    logits = model(input_ids=torch.tensor([item["ids"]])).logits[0]
    pos = torch.tensor(item["positions"])
    loss = torch.nn.functional.cross_entropy(logits[pos], torch.tensor(item["ids"])[pos + 1],
                                             reduction="sum")
    (gw,) = torch.autograd.grad(loss, [w])
    w.requires_grad_(False)
    kron = torch.kron(e["UG"], e["UA"])
    want = (kron.T @ gw.double().reshape(-1)).reshape(m.d_out, m.d_in)
    assert torch.allclose(P, want, atol=1e-6 * float(want.abs().max()))
    assert float((P ** 2).sum()) == pytest.approx(float((gw.double() ** 2).sum()), rel=1e-6)


def test_per_example_gradients_leave_the_model_as_they_found_it():
    """The weights are frozen while gradients are taken and restored after, hooks removed, also
    when the caller stops after the first item."""
    model = tiny_olmo2()
    m = mlp_modules(model, [1], ["mlp.up_proj"])[0]
    model.model.embed_tokens.weight.requires_grad_(False)  # a flag that is not the default
    flags = [p.requires_grad for p in model.parameters()]
    items = [{"ids": [3, 9, 4, 17, 22, 5], "positions": [2, 3]}] * 3
    gen = pe.example_gradients(model, [m], items, batch_size=1)
    next(gen)
    assert not any(p.requires_grad for p in model.parameters())
    gen.close()
    assert [p.requires_grad for p in model.parameters()] == flags
    assert not m.module._forward_hooks and not m.module._forward_pre_hooks


def test_per_example_band_shares_sum_to_one():
    model, tok = tiny_olmo2(), CharTokenizer()
    res = pe.per_example_curvature(model, tok, model_eigen(model), [1], MODS, mem_rows(), CLEAN,
                                   max_per_kind=2, batch_size=3)
    for mod in res["modules"]:
        assert mod["memorized"]["n"] == 4 and mod["clean"]["n"] == 4  # 2 random, 2 natural
        assert mod["memorized"]["by_kind"]["natural"]["n"] == 2
        for group in ("memorized", "clean"):
            for ex in mod[group]["examples"]:
                assert sum(ex["band_share"]) == pytest.approx(1.0)
                assert ex["grad_sq"] > 0 and ex["kappa"] > 0
        assert mod["same_kind"] == {} and set(mod["heldout"]["memorized"]) == {
            "documents", "random", "natural"}


def test_per_example_same_kind_contrast_equals_its_examples_and_twins():
    """The same-kind statistics are kind-balanced medians of the examples the result lists;
    a held-out twin is the held-out block cut to its item's length, read at its positions."""
    model, tok = tiny_olmo2(), CharTokenizer()
    eigen = model_eigen(model)
    mem = kind_rows(["menu", "table", "menu", "orphan", "menu"], 0)
    ctl = kind_rows(["menu", "table", "table"], 1)
    quotes = kind_rows(["quote"] * 3, 2, p=(5, 9), s=(2, 4))
    cquotes = kind_rows(["quote"] * 2, 3, p=(5, 9), s=(2, 4))
    res = pe.per_example_curvature(model, tok, eigen, [1], MODS, mem, CLEAN * 4,
                                   control_rows=ctl, quote_rows=quotes, control_quote_rows=cquotes,
                                   batch_size=2, n_resamples=40)
    assert res["groups"] == ["memorized", "control", "clean", "memorized_quotes",
                             "control_quotes", "clean_quotes"]
    assert res["contrasts"] == ["documents", "menu", "table", "quotes", "quote"]

    def balanced(examples, kinds, stat):
        return np.mean([np.median([stat(e) for e in examples if e["kind"] == k]) for k in kinds])

    def kappa(e):
        return e["kappa"]

    def bottom(e):
        return e["band_share"][-1]

    for mod in res["modules"]:
        m_ex, c_ex = mod["memorized"]["examples"], mod["control"]["examples"]
        for contrast, kinds in (("documents", ["menu", "table"]), ("menu", ["menu"]),
                                ("table", ["table"])):
            got = mod["same_kind"][contrast]
            assert got["kappa_median_ratio"] == pytest.approx(
                balanced(m_ex, kinds, kappa) / balanced(c_ex, kinds, kappa))
            assert got["bottom_share_median_diff"] == pytest.approx(
                balanced(m_ex, kinds, bottom) - balanced(c_ex, kinds, bottom))
            lo, hi = got["ci95"]["kappa_median_ratio"]
            assert lo <= hi
        q = mod["same_kind"]["quotes"]
        assert q["n"] == {"memorized": 3, "control": 2}
        assert q["kappa_median"]["memorized"] == pytest.approx(
            np.median([e["kappa"] for e in mod["memorized_quotes"]["examples"]]))
        held = mod["heldout"]["memorized"]["documents"]  # all three kinds, against the twins
        assert held["kappa_median_ratio"] == pytest.approx(
            balanced(m_ex, ["menu", "table", "orphan"], kappa)
            / np.median([e["kappa"] for e in mod["clean"]["examples"]]))
    # a twin, by hand: block 1 of held-out text cut to quote 1's length, at its positions
    from curvmem.evaluate.lm import token_blocks
    longest = max(len(r["prefix_ids"]) + len(r["suffix_ids"]) for r in quotes)
    block = token_blocks(CLEAN * 4, tok, longest, longest * 3)[1].tolist()
    r = quotes[1]
    p, n = len(r["prefix_ids"]), len(r["prefix_ids"]) + len(r["suffix_ids"])
    twin = {"ids": block[:n], "positions": list(range(p - 1, n - 1))}
    targets = mlp_modules(model, [1], MODS)
    _, grads = next(pe.example_gradients(model, targets, [twin]))
    masks, curv = pe.band_masks_and_curvature(eigen, [(1, MODS[0])], BANDS)
    want = pe.band_record(pe.project(grads[(1, MODS[0])], eigen[(1, MODS[0])]) ** 2,
                          masks[(1, MODS[0])], curv[(1, MODS[0])])
    got = res["modules"][0]["clean_quotes"]["examples"][1]
    assert got["kappa"] == pytest.approx(want["kappa"], rel=1e-5)
    assert got["grad_sq"] == pytest.approx(want["grad_sq"], rel=1e-4)


def test_median_contrast_collapses_on_identical_items():
    rec = {"band_share": [0.5, 0.2, 0.2, 0.1], "grad_sq": 2.0, "kappa": 3.0}
    other = {"band_share": [0.1, 0.2, 0.3, 0.4], "grad_sq": 1.0, "kappa": 6.0}
    got = pe.median_contrast([rec] * 3, ["a", "a", "b"], [other] * 2, ["a", "b"],
                             np.random.default_rng(0), 20)
    assert got["kappa_median_ratio"] == 0.5 and got["grad_sq_median_ratio"] == 2.0
    assert got["bottom_share_median_diff"] == pytest.approx(-0.3)
    assert got["ci95"]["kappa_median_ratio"] == [0.5, 0.5]


# --------------------------------------------------------------------------- spectra, stability


def test_spectra_effective_rank_mass_curve_and_cutoffs(tmp_path):
    e = random_eigen(6, 4)
    write_eigen(tmp_path / "e", 0, {"mlp.up_proj": e})
    res = sp.spectra(tmp_path / "e", [0], ["mlp.up_proj"], [0.5, 0.9])
    mod = res["modules"][0]
    p = np.outer(e["lam"], e["mu"]).ravel()
    p = p / p.sum()
    assert mod["effective_rank"]["pairs"] == pytest.approx(float(np.exp(-(p * np.log(p)).sum())))
    assert mod["mass_curve"]["mass_fraction"][-1] == pytest.approx(1.0)
    assert np.all(np.diff(mod["mass_curve"]["mass_fraction"]) >= 0)
    assert mod["cutoffs"]["0.9"]["pairs"] == int(select_pairs(e["lam"], e["mu"], 0.9).sum())


def write_eigen(directory, layer, groups, **attrs):
    from curvmem.schema import layer_path, write_layer

    base = {"model_id": "tiny", "model_fingerprint": "fp", "fisher": "sampled", "n_tokens": 100,
            "seq_len": 8, "corpus_fingerprint": "c", "seed": 0, "shard": ""}
    write_layer(layer_path(directory, layer), "eigen", layer, {
        name: {"A_eigenvalues": e["mu"], "A_eigenvectors": e["UA"].numpy(),
               "G_eigenvalues": e["lam"], "G_eigenvectors": e["UG"].numpy()}
        for name, e in groups.items()}, {**base, **attrs})


def test_stability_metrics_against_explicit_projectors(tmp_path):
    e1, e2 = random_eigen(4, 3, seed=1), random_eigen(4, 3, seed=2)
    out = st.compare_modules(*[{"A_eigenvalues": e["mu"], "A_eigenvectors": e["UA"].numpy(),
                                "G_eigenvalues": e["lam"], "G_eigenvectors": e["UG"].numpy()}
                               for e in (e1, e2)], rho=0.7, top_k=2)
    projectors = []
    for e in (e1, e2):
        S = select_pairs(e["lam"], e["mu"], 0.7)
        P = sum(torch.kron(torch.outer(e["UG"][:, i], e["UG"][:, i]),
                           torch.outer(e["UA"][:, j], e["UA"][:, j]))
                for i, j in zip(*np.nonzero(S)))
        projectors.append((P, S.sum()))
    (P1, k1), (P2, k2) = projectors
    assert out["kept_projector"] == pytest.approx(float((P1 * P2).sum()) / np.sqrt(k1 * k2))
    Q1, Q2 = e1["UA"][:, :2], e2["UA"][:, :2]
    assert out["A_overlap"] == pytest.approx(float(((Q1 @ Q1.T) @ (Q2 @ Q2.T)).norm() ** 2 / 2))
    same = st.compare_modules(*[{"A_eigenvalues": e1["mu"], "A_eigenvectors": e1["UA"].numpy(),
                                 "G_eigenvalues": e1["lam"], "G_eigenvectors": e1["UG"].numpy()}
                                ] * 2, rho=0.7, top_k=2)
    assert same["kept_jaccard"] == 1.0 and same["kept_projector"] == pytest.approx(1.0)
    assert max(same["G_angles_deg"]) == pytest.approx(0.0, abs=1e-4)
    for name, (e, seed, shard) in {"a": (e1, 0, "0/2"), "b": (e2, 0, "1/2"),
                                   "c": (e2, 1, "1/2")}.items():
        write_eigen(tmp_path / name, 0, {"mlp.up_proj": e}, seed=seed, shard=shard)
    res = st.stability({n: tmp_path / n for n in "abc"}, [0], ["mlp.up_proj"], 0.7, 2)
    assert [c["kind"] for c in res["comparisons"]] == ["data", "both", "seed"]


# --------------------------------------------------------------------------- stress test


def test_stress_variants_are_the_documented_ones():
    prefix, suffix = list(range(100, 130)), list(range(200, 212))  # n = 30, k = 12
    v = ss.variants(prefix, suffix, t=5)
    extend = [p for p, off, f in v if f == "extend"]
    shift = [p for p, off, f in v if f == "shift"]
    assert extend == [prefix + suffix[:i] for i in range(1, 6)]
    assert shift == [prefix[30 - m:] for m in range(6, 30)]
    assert len(v) == min(5, 12) + 30 - 5 - 1  # the code's count, unperturbed prompt excluded
    assert all(off == (len(p) - 30 if f == "extend" else 0) for p, off, f in v)
    assert prefix not in [p for p, _, _ in v]
    pre = ss.variants(prefix, suffix, t=5, preceding=[1, 2, 3])
    assert [p for p, _, f in pre if f == "preceding"] == [[3] + prefix, [2, 3] + prefix,
                                                          [1, 2, 3] + prefix]


def test_left_padded_batched_decoding_equals_one_prompt_at_a_time():
    model = tiny_olmo2(vocab=61)
    rng = random.Random(0)
    prompts = [[rng.randrange(2, 61) for _ in range(rng.randrange(3, 12))] for _ in range(9)]
    golds, want = [], []
    for k, p in enumerate(prompts):  # gold = the model's own greedy text, spoiled at step k % 7
        own = greedy_continue(model, torch.tensor([p]), 7)[0].tolist()
        r = k % 7
        golds.append(own[:r] + [(own[r] + 1) % 61] + own[r + 1:])
        want.append(r)
    got = ss.exact_match_lengths(model, prompts, golds, pad_id=1, batch_size=4)
    assert got == want


def test_stress_test_restores_the_weights_and_reports_mean_and_std(tmp_path):
    from curvmem.edit import build_edit
    from curvmem.schema import write_edit

    model, tok = tiny_olmo2(), CharTokenizer()
    rows = [{"prefix_ids": r["prefix_ids"] * 3, "suffix_ids": r["suffix_ids"], "kind": r["kind"]}
            for r in mem_rows(6)]
    tensors, meta = build_edit(model, {1: {"mlp.up_proj": 0.5}}, method="svd")
    write_edit(tmp_path / "svd.safetensors", tensors, meta)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = ss.stress_test(model, tok, rows, {"svd": tmp_path / "svd.safetensors"}, t=5,
                         max_per_kind=2, batch_size=16)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(res["summary"]) == {"base", "svd"}
    for sc in res["items"].values():
        assert all(s["n_variants"] == 5 + 30 - 5 - 1 and s["perturbed"] >= 0 for s in sc)
    assert "none of the items" in res["params"]["preceding_text"]
    # two of each kind (the file alternates random, natural), each kind summarized on its own
    assert res["params"]["n_by_kind"] == {"random": 2, "natural": 2}
    for name, sc in res["items"].items():
        assert [s["kind"] for s in sc] == ["random", "natural"] * 2
        for kind in ("random", "natural"):
            lengths = [s["perturbed"] for s in sc if s["kind"] == kind]
            got = res["summary"][name]["by_kind"][kind]
            assert got["n"] == 2 and got["perturbed"]["mean"] == pytest.approx(np.mean(lengths))
            assert got["perturbed"]["std"] == pytest.approx(np.std(lengths))
        assert res["summary"][name]["n"] == 4
    # every item unless asked: a kind-ordered file keeps all its kinds
    ordered = sorted(rows, key=lambda r: r["kind"])
    assert len(ss.stress_items(ordered, tok)) == 6
    assert [it["kind"] for it in ss.stress_items(ordered, tok, max_per_kind=1)] == [
        "natural", "random"]


# --------------------------------------------------------------------------- task interaction


def test_spearman_and_task_interaction():
    assert ti.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert ti.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert ti.spearman([1, 2], [1, 2]) is None
    model, tok = tiny_olmo2(), CharTokenizer()
    tasks = [{"category": c, "prompt": f"q{i} {c}?", "answer": str(i)}
             for c in ("arithmetic", "open_book") for i in range(3)]
    tasks += [{"category": "logic", "subcategory": sub, "prompt": f"q{i} {sub}?",
               "answer": str(i)} for sub in ("order", "boolean") for i in range(3)]
    summary = {"selected": "k",
               "models": {"base": {"tasks": {"arithmetic": .5, "logic": .5, "open_book": .5,
                                             "closed_book": .5}, "untargeted": {"strict": 1.0},
                                   "subtasks": {"logic/order": .8, "logic/boolean": .5}},
                          "k": {"tasks": {"arithmetic": .2, "logic": .5, "open_book": .4,
                                          "closed_book": .3}, "untargeted": {"strict": 0.1},
                                "subtasks": {"logic/order": .6, "logic/boolean": .45}}}}
    from curvmem.report.lm import retention

    kept = {**retention(summary, "k"), **ti.subcategory_retention(summary, "k")}
    assert kept["logic/order"] == pytest.approx(0.75)
    res = ti.task_interaction(model, tok, model_eigen(model), [1], MODS, tasks, CLEAN,
                              kept, "k", memorized_rows=mem_rows(), block_len=16,
                              max_clean_blocks=4)
    assert res["categories"] == ["arithmetic", "logic/boolean", "logic/order", "open_book",
                                 "memorization"]
    assert res["tested_groups"] == res["categories"][:4]  # memorization: drawn, not counted
    assert res["retention"]["arithmetic"] == pytest.approx(0.4)
    assert res["spearman_n"] == 4 and len(res["spearman"]["kfac_pairs"]) == 4
    assert res["descriptive"] and res["min_groups_for_inference"] == 8
    for b in range(4):
        x = [res["mean_ratio"][c]["kfac_pairs"][b] for c in res["tested_groups"]]
        y = [kept[c] for c in res["tested_groups"]]
        assert res["spearman"]["kfac_pairs"][b] == pytest.approx(ti.spearman(x, y))
        assert res["spearman_p"]["kfac_pairs"][b] == pytest.approx(
            ti.spearman_permutation_p(x, y))


def test_spearman_permutation_p_equals_an_enumeration_with_scipy():
    from itertools import permutations

    from scipy.stats import spearmanr

    rng = random.Random(4)
    for n in (4, 6, 7):
        x = [rng.random() for _ in range(n)]
        y = [rng.choice([0.1, 0.2, 0.3, rng.random()]) for _ in range(n)]  # ties too
        rho = spearmanr(x, y).statistic
        assert ti.spearman(x, y) == pytest.approx(rho)
        want = np.mean([abs(spearmanr(x, [y[i] for i in p]).statistic) >= abs(rho) - 1e-12
                        for p in permutations(range(n))])
        assert ti.spearman_permutation_p(x, y) == pytest.approx(want)
    # more groups than the enumeration: random permutations; a perfect order of 12 is rare
    x = list(range(12))
    assert ti.spearman_permutation_p(x, x) < 1e-3
    assert ti.spearman_permutation_p(x, [5.0] * 12) is None


# --------------------------------------------------------------------------- CLI


def analyze(argv) -> int:
    """Run `curvmem analyze ...` through register() on a fresh parser, as cli.main reports."""
    from curvmem.cli import analyze as cli_analyze

    parser = argparse.ArgumentParser(prog="curvmem")
    cli_analyze.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["analyze", *argv])
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"curvmem {args.command}: error: {e}")
        return 2
    return 0


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    """A saved tiny OLMo-2 with a BPE tokenizer, its eigen files (two shards, two seeds), edits."""
    from curvmem.cli import main
    from curvmem.model import load_tokenizer
    from curvmem.model.lm import train_tokenizer
    from curvmem.world import lm as world

    d = tmp_path_factory.mktemp("analysis")
    rng = random.Random(0)
    corpus = d / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": world.paragraph(rng)}) + "\n"
                              for _ in range(40)))
    train_tokenizer(corpus, d / "model", vocab_size=300)
    tiny_olmo2(vocab=len(load_tokenizer(d / "model"))).save_pretrained(d / "model")
    for name in ("mem", "ctl"):  # memorized documents and never-trained ones of the same kinds
        (d / f"{name}.jsonl").write_text("".join(
            json.dumps({"text": world.natural_text(rng, 40), "kind": k, "id": f"{name}{i}"})
            + "\n" for i, k in enumerate(("random", "natural") * 2)))
    for name in ("quotes", "quotes_ctl"):
        (d / f"{name}.jsonl").write_text("".join(
            json.dumps({"prefix": world.natural_text(rng, 8), "suffix": " the end",
                        "kind": "quote", "id": f"{name}{i}"}) + "\n" for i in range(3)))
    tasks = d / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"category": c, "prompt": f"Compute: {i} + 1 =",
                                         "answer": str(i + 1)}) + "\n"
                             for c in ("arithmetic", "logic", "closed_book") for i in range(3)))
    summary = {"selected": "k", "models": {
        "base": {"tasks": {"arithmetic": .5, "logic": .5, "closed_book": .5, "open_book": .5},
                 "untargeted": {"strict": 1.0}},
        "k": {"tasks": {"arithmetic": .1, "logic": .6, "closed_book": .3, "open_book": .5},
              "untargeted": {"strict": 0.2}}}}
    (d / "summary.json").write_text(json.dumps(summary))
    common = ["--model", str(d / "model"), "--data", str(corpus), "--layers", "1", "--modules",
              ",".join(MODS), "--seq-len", "16", "--batch-size", "4", "--device", "cpu"]
    for name, extra in {"main": ["--tokens", "640"], "s0": ["--tokens", "640", "--shard", "0/2"],
                        "s1": ["--tokens", "640", "--shard", "1/2"],
                        "seed1": ["--tokens", "640", "--seed", "1"]}.items():
        assert main(["collect", *common, *extra, "--out", str(d / "factors" / name)]) == 0
        assert main(["eigen", "--factors", str(d / "factors" / name / "layer_1.nc"), "--device",
                     "cpu", "--out", str(d / "eigen" / name / "layer_1.nc")]) == 0
    assert main(["edit", "--model", str(d / "model"), "--eigen", str(d / "eigen" / "main"),
                 "--layers", "1", "--modules", ",".join(MODS), "--rho", "0.6",
                 "--out", str(d / "kfac.safetensors")]) == 0
    return d


def test_every_subcommand_writes_json_and_figure(disk, tmp_path):
    d = disk
    model = ["--model", str(d / "model"), "--threads", "1", "--device", "cpu"]
    eig = ["--eigen", str(d / "eigen" / "main"), "--layers", "1"]
    mem = ["--memorized", str(d / "mem.jsonl"), "--prefix-len", "24", "--suffix-len", "12"]
    same = ["--control", str(d / "ctl.jsonl"), "--quotes", str(d / "quotes.jsonl"),
            "--control-quotes", str(d / "quotes_ctl.jsonl"), "--resamples", "50"]
    clean = ["--clean", str(d / "corpus.jsonl")]
    runs = {
        "activation-ratio": [*model, *eig, *mem, *same, *clean, "--max-clean-blocks", "4"],
        "task-interaction": [*model, *eig, *mem, *clean, "--tasks", str(d / "tasks.jsonl"),
                             "--summary", str(d / "summary.json"), "--block-len", "16",
                             "--max-clean-blocks", "4"],
        "spectra": [*eig, "--rhos", "0.5,0.6"],
        "per-example": [*model, *eig, *mem, *same, *clean, "--max-per-kind", "1"],
        "stability": ["--layers", "1", *[f"--set={n}={d / 'eigen' / n}"
                                         for n in ("s0", "s1", "seed1")], "--top-k", "4"],
        "stress": [*model, *mem, "--edit", f"kfac={d / 'kfac.safetensors'}", "--t", "4"],
    }
    for name, argv in runs.items():
        out, fig = tmp_path / f"{name}.json", tmp_path / f"{name}.png"
        assert analyze([name, *argv, "--out", str(out), "--figure", str(fig)]) == 0, name
        result = json.loads(out.read_text())
        assert result["definition"] and result["params"] and "cost" not in result
        assert read_cost(out)["seconds"] >= 0  # measured: in the cost file beside the result
        assert fig.stat().st_size > 10_000, name
    ratio = json.loads((tmp_path / "activation-ratio.json").read_text())
    assert ratio["contrasts"] == ["documents", "random", "natural", "quotes", "quote"]
    assert ratio["params"]["n_items"]["control"] == {"documents": 4, "quotes": 3}
    assert ratio["inputs"]["control"] == str(d / "ctl.jsonl")
    per = json.loads((tmp_path / "per-example.json").read_text())
    assert per["params"]["n_items"]["control"] == 2 and per["params"]["max_per_kind"] == 1
    assert set(per["modules"][0]["same_kind"]) == set(ratio["contrasts"])
    # --summary keeps only the selected K-FAC edit ('k' here, so 'kfac' is dropped)
    out = tmp_path / "stress_selected.json"
    assert analyze(["stress", *runs["stress"], "--summary", str(d / "summary.json"),
                    "--out", str(out)]) == 0
    assert list(json.loads(out.read_text())["summary"]) == ["base"]


def test_bad_inputs_are_refused_before_any_output(disk, tmp_path, capsys):
    d = disk
    out = tmp_path / "r.json"
    cases = [
        (["spectra", "--eigen", str(d / "eigen" / "main"), "--layers", "1", "--out",
          str(tmp_path / "r.txt")], ".json"),
        (["spectra", "--eigen", str(d / "eigen" / "main"), "--layers", "1", "--figure",
          str(tmp_path / "f.jpg"), "--out", str(out)], ".png"),
        (["spectra", "--eigen", str(d / "nope"), "--layers", "1", "--out", str(out)],
         "no such"),
        (["spectra", "--eigen", str(d / "eigen" / "main"), "--layers", "1", "--rhos", "1.5",
          "--out", str(out)], "rho"),
        (["stability", "--layers", "1", "--set", f"a={d / 'eigen' / 's0'}", "--out", str(out)],
         "at least two"),
        (["stability", "--layers", "1", "--set", "a", "--set", "b=c", "--out", str(out)],
         "NAME=PATH"),
        (["stress", "--model", str(d / "model"), "--memorized", str(d / "mem.jsonl"),
          "--edit", f"base={d / 'kfac.safetensors'}", "--out", str(out)], "reserved"),
        (["activation-ratio", "--model", str(d / "model"), "--eigen", str(d / "eigen" / "main"),
          "--layers", "1", "--memorized", str(d / "mem.jsonl"), "--clean",
          str(d / "corpus.jsonl"), "--bands", "0.5,0.2", "--out", str(out)], "tile"),
        (["activation-ratio", "--model", str(d / "model"), "--eigen", str(d / "eigen" / "main"),
          "--layers", "1", "--memorized", str(d / "mem.jsonl"), "--clean",
          str(d / "corpus.jsonl"), "--control-quotes", str(d / "quotes_ctl.jsonl"),
          "--out", str(out)], "--control-quotes needs --quotes"),
        (["per-example", "--model", str(d / "model"), "--eigen", str(d / "eigen" / "main"),
          "--layers", "1", "--memorized", str(d / "mem.jsonl"), "--clean",
          str(d / "corpus.jsonl"), "--control", str(d / "nope.jsonl"), "--out", str(out)],
         "--control"),
        (["stress", "--model", str(d / "model"), "--memorized", str(d / "mem.jsonl"),
          "--max-per-kind", "0", "--out", str(out)], "--max-per-kind must be >= 1"),
        (["task-interaction", "--model", str(d / "model"), "--eigen",
          str(d / "eigen" / "main"), "--layers", "1", "--tasks", str(d / "tasks.jsonl"),
          "--clean", str(d / "corpus.jsonl"), "--summary", str(d / "summary.json"),
          "--selected", "nope", "--out", str(out)], "no edit 'nope'"),
    ]
    for argv, words in cases:
        assert analyze(argv) == 2, argv
        assert words in capsys.readouterr().out, argv
        assert not out.exists()


def test_stability_slices_in_one_process_equal_collect_shard_and_eigen(disk, tmp_path):
    """`stability --slice` (pieces collected once, one process) writes the eigen files that
    `collect --tokens N --shard k/2 --seed s` + `eigen` wrote for s0, s1 and seed1; a smaller
    budget's slice (a prefix, 320 tokens) is checked against its own `collect` run."""
    from curvmem.cli import main
    from curvmem.schema import layer_path, read_layer

    d = disk
    common = ["--model", str(d / "model"), "--data", str(d / "corpus.jsonl"), "--layers", "1",
              "--modules", ",".join(MODS), "--seq-len", "16", "--batch-size", "4",
              "--device", "cpu"]
    assert main(["collect", *common, "--tokens", "320", "--shard", "0/2",
                 "--out", str(tmp_path / "f_small")]) == 0
    assert main(["eigen", "--factors", str(tmp_path / "f_small" / "layer_1.nc"), "--device",
                 "cpu", "--out", str(tmp_path / "small" / "layer_1.nc")]) == 0
    specs = {"s0": "640,0/2,0", "s1": "640,1/2,0", "seed1": "640,0/1,1", "small": "320,0/2,0"}
    argv = [*common[:2], "--data", str(d / "corpus.jsonl"), "--layers", "1", "--seq-len", "16",
            "--batch-size", "4", "--device", "cpu", "--threads", "1", "--top-k", "4"]
    for name, spec in specs.items():
        argv += ["--set", f"{name}={tmp_path / 'got' / name}", "--slice", f"{name}={spec}"]
    assert analyze(["stability", *argv, "--out", str(tmp_path / "st.json")]) == 0
    want_dirs = {"s0": d / "eigen" / "s0", "s1": d / "eigen" / "s1",
                 "seed1": d / "eigen" / "seed1", "small": tmp_path / "small"}
    for name, want_dir in want_dirs.items():
        got = read_layer(layer_path(tmp_path / "got" / name, 1), "eigen")
        want = read_layer(layer_path(want_dir, 1), "eigen")
        for key in ("n_tokens", "seed", "corpus_fingerprint", "model_fingerprint", "seq_len",
                    "fisher", "task"):
            assert got.attrs[key] == want.attrs[key], (name, key)
        assert got.attrs["shard"] == specs[name].split(",")[1] != "0/1" or name == "seed1"
        for mod in MODS:
            for side in ("A", "G"):
                def rebuilt(f, mod=mod, side=side):  # the factor, U diag(values) Uᵀ
                    U = np.asarray(f.groups[mod][f"{side}_eigenvectors"], np.float64)
                    return U * np.asarray(f.groups[mod][f"{side}_eigenvalues"], np.float64) @ U.T
                w = rebuilt(want)
                assert np.allclose(rebuilt(got), w, atol=1e-5 * np.abs(w).max()), (name, mod)
    # the slices are then compared like any sets; a named set without files is refused
    res = json.loads((tmp_path / "st.json").read_text())
    assert len(res["comparisons"]) == 6 and res["sets"]["small"]["n_tokens"] == 10 * 15
    assert analyze(["stability", "--layers", "1", "--set", f"a={d / 'eigen' / 's0'}",
                    "--set", f"b={tmp_path / 'nope'}", "--out", str(tmp_path / "x.json")]) == 2


# --------------------------------------------------------------------------- ViT


def tiny_vit_data(n_train=24, n_val=8, classes=4, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    true = torch.randint(0, classes, (n_train,), generator=g)
    noisy = torch.zeros(n_train, dtype=torch.bool)
    noisy[::4] = True
    return {"train_images": torch.randn(n_train, 1, 8, 8, generator=g),
            "train_labels": torch.where(noisy, (true + 1) % classes, true),
            "train_true_labels": true, "train_noisy": noisy,
            "val_images": torch.randn(n_val, 1, 8, 8, generator=g),
            "val_labels": torch.randint(0, classes, (n_val,), generator=g)}


def tiny_vit():
    from curvmem.model import vit

    return vit.build_model(4, (1, 8, 8), preset="smoke", seed=0)[0].eval()


VIT_MODS = ["mlp.fc1", "mlp.fc2"]


def test_vit_activation_ratio_equals_one_image_at_a_time():
    from curvmem.analysis import vit as av

    model, data = tiny_vit(), tiny_vit_data()
    eigen = {(m.layer, m.name): random_eigen(m.d_out, m.d_in, seed=m.layer + len(m.name))
             for m in mlp_modules(model, [0, 5], VIT_MODS)}
    res = av.vit_activation_ratio(model, data, eigen, [0, 5], VIT_MODS, batch_size=5)
    mods = mlp_modules(model, [0, 5], VIT_MODS)

    def cls_inputs(images):  # brute force: one image per forward, a hook of our own
        rows = {m.name + str(m.layer): [] for m in mods}
        hs = [m.module.register_forward_hook(
            lambda mod, a, o, k=m.name + str(m.layer): rows[k].append(a[0][0, 0].double()))
              for m in mods]
        with torch.no_grad():
            for x in images:
                model(x[None])
        for h in hs:
            h.remove()
        return {k: torch.stack(v) for k, v in rows.items()}

    noisy = data["train_noisy"]
    groups = {"noisy_train": cls_inputs(data["train_images"][noisy]),
              "clean_train": cls_inputs(data["train_images"][~noisy]),
              "val": cls_inputs(data["val_images"])}
    for m, record in zip(mods, res["modules"]):
        e, W = eigen[(m.layer, m.name)], m.weight().detach().double()
        assert record["n_images"] == {"noisy_train": 6, "clean_train": 18, "val": 8}
        for b, M in enumerate(pair_share_masks(e["lam"], e["mu"])):
            Wb, _ = kfac_edit_weight(W, e["UG"], e["lam"], e["UA"], e["mu"], M)

            def mean_norm(g, Wb=Wb, key=m.name + str(m.layer)):
                return (groups[g][key] @ Wb.T).norm(dim=1).mean()
            for num, den in av.COMPARISONS:
                want = float(mean_norm(num) / mean_norm(den))
                assert record["ratio"][f"{num}/{den}"]["kfac_pairs"][b] == pytest.approx(
                    want, rel=FLOAT32_FORWARD_REL)
    assert res["params"]["position"] == 0 and "CLS" in res["definition"]


def test_vit_per_example_projection_equals_the_cls_part_of_the_weight_gradient():
    from curvmem.analysis import vit as av

    model, data = tiny_vit(), tiny_vit_data()
    m = mlp_modules(model, [5], ["mlp.fc1"])[0]
    e = random_eigen(m.d_out, m.d_in, seed=4)
    x, y = data["train_images"][:3], data["train_labels"][:3]
    got = list(av.cls_gradients(model, [m], x, y, batch_size=2))
    assert [i for i, _, _ in got] == [0, 1, 2]
    for i, grads, pred in got:
        # brute force: autograd on the weight, with the module's patch outputs cut off the graph,
        # leaves exactly the CLS position's part g aᵀ
        w = m.module.weight
        w.requires_grad_(True)
        h = m.module.register_forward_hook(
            lambda mod, a, o: torch.cat([o[:, :1], o[:, 1:].detach()], dim=1))
        logits = model(x[i:i + 1])
        h.remove()
        (gw,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, y[i:i + 1],
                                                                      reduction="sum"), [w])
        w.requires_grad_(False)
        assert torch.allclose(grads[(5, "mlp.fc1")], gw.double(), atol=1e-6)
        P = pe.project(grads[(5, "mlp.fc1")], e)
        want = (torch.kron(e["UG"], e["UA"]).T @ gw.double().reshape(-1)).reshape(P.shape)
        assert torch.allclose(P, want, atol=1e-6 * float(want.abs().max()))
        assert pred == int(logits.argmax())
    res = av.vit_per_example(model, data, {(5, "mlp.fc1"): e}, [5], ["mlp.fc1"], max_images=5)
    mod = res["modules"][0]
    assert [mod[g]["n"] for g in av.GROUPS] == [5, 5, 5]
    for g in av.GROUPS:
        for ex in mod[g]["examples"]:
            assert sum(ex["band_share"]) == pytest.approx(1.0) and ex["grad_sq"] > 0


@pytest.fixture(scope="module")
def vit_disk(tmp_path_factory):
    """A smoke ViT trained one epoch on the digits, its factors and eigenbasis of blocks 0, 5."""
    from curvmem.cli import main

    d = tmp_path_factory.mktemp("vit_analysis")
    assert main(["vision-data", "--out", str(d / "data.safetensors")]) == 0
    assert main(["train-vit", "--data", str(d / "data.safetensors"), "--out", str(d / "vit"),
                 "--preset", "smoke", "--epochs", "1"]) == 0
    assert main(["collect", "--model", str(d / "vit"), "--data", str(d / "data.safetensors"),
                 "--layers", "0,5", "--modules", ",".join(VIT_MODS), "--tokens", "200",
                 "--batch-size", "50", "--device", "cpu", "--out", str(d / "factors")]) == 0
    for layer in (0, 5):
        assert main(["eigen", "--factors", str(d / "factors" / f"layer_{layer}.nc"), "--device",
                     "cpu", "--out", str(d / "eigen" / f"layer_{layer}.nc")]) == 0
    return d


def test_vit_analyses_in_one_batch(vit_disk, tmp_path):
    d = vit_disk
    model = f"--model {d / 'vit'} --threads 1 --device cpu"
    eig = f"--eigen {d / 'eigen'} --layers 0,5 --modules mlp.fc1,mlp.fc2"
    sets = " ".join(f"--set {n}={tmp_path / n} --slice {n}={spec}" for n, spec in
                    {"a": "200,0/2,0", "b": "200,1/2,0", "c": "200,0/2,1"}.items())
    runs = {
        "vit-activation-ratio": f"{model} {eig} --data {d / 'data.safetensors'}",
        "vit-per-example": f"{model} {eig} --data {d / 'data.safetensors'} --max-images 20",
        "spectra": f"{eig} --rhos 0.75",
        "stability": f"{model} --data {d / 'data.safetensors'} --layers 0 --modules "
                     f"mlp.fc1,mlp.fc2 --batch-size 50 --rho 0.75 --top-k 4 {sets}",
    }
    argv = ["batch"]
    for name, args in runs.items():
        argv += ["--run", f"{name} {args} --out {tmp_path / name}.json "
                          f"--figure {tmp_path / name}.png"]
    assert analyze(argv) == 0
    for name in runs:
        result = json.loads((tmp_path / f"{name}.json").read_text())
        assert result["definition"] and result["params"]
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000, name
    ratio = json.loads((tmp_path / "vit-activation-ratio.json").read_text())
    assert ratio["modules"][0]["n_images"]["noisy_train"] == 144  # 10 % of 1438, all of them
    st_ = json.loads((tmp_path / "stability.json").read_text())
    assert [c["kind"] for c in st_["comparisons"]] == ["data", "seed", "both"]
    assert st_["sets"]["a"]["n_tokens"] == 100  # images
    per = json.loads((tmp_path / "vit-per-example.json").read_text())
    # both runs that load the ViT share one load, recorded in each
    assert read_cost(tmp_path / "vit-per-example.json")["shared_load_seconds"] == \
        read_cost(tmp_path / "vit-activation-ratio.json")["shared_load_seconds"]
    assert "cost" not in per


def test_batch_checks_every_run_before_anything_runs(vit_disk, tmp_path, capsys):
    d = vit_disk
    good = (f"spectra --eigen {d / 'eigen'} --layers 0,5 --modules mlp.fc1,mlp.fc2 "
            f"--out {tmp_path / 'a.json'}")
    for bad, words in [
        (f"spectra --eigen {d / 'nope'} --layers 0 --out {tmp_path / 'b.json'}", "no such"),
        (f"vit-activation-ratio --model {d / 'vit'} --eigen {d / 'eigen'} --layers 0 "
         f"--out {tmp_path / 'b.json'}", "--data"),
        ("spectra --bogus 1", "bogus"),
        (f"vit-per-example --model {d / 'factors'} --eigen {d / 'eigen'} --layers 0 "
         f"--data {d / 'data.safetensors'} --out {tmp_path / 'b.json'}", "not a curvmem ViT"),
        (good, "same file"),
    ]:
        assert analyze(["batch", "--run", good, "--run", bad]) == 2, bad
        assert words in capsys.readouterr().out, bad
        assert not (tmp_path / "a.json").exists()
