"""K-FAC factors against references that share no code with curvmem.factors.

Reference: a float64 copy of the model in which every requested module is replaced by `Tap`, a
wrapper whose forward returns inner(x) + eps with eps a zeros tensor that requires grad. Plain
autograd of the summed next-token cross-entropy then gives d loss / d output at every position
(eps.grad) and Tap records every input, so A and G are written out directly, position by position.
No hooks, no batching, no detach tricks. A second, independent cross-check uses curvlinops' KFAC.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import tiny_gpt2, tiny_neox, tiny_olmo2
from curvmem import factors
from curvmem.factors import (
    ClassificationTask,
    LMTask,
    add_gram_,
    batched,
    collect,
    sample_targets,
    symmetrized,
)
from curvmem.model import mlp_modules

# The tiny models are so small that 2 threads only add contention (a 16x16 linear takes 40 ms
# instead of 0.2 ms on a busy 2-core box). TODO(lead): move this into conftest.py.
torch.set_num_threads(1)

BLOCKS = {"olmo2": "model.layers", "gpt2": "transformer.h", "neox": "gpt_neox.layers",
          "vit": "blocks"}
VOCAB = 61


class Tap(nn.Module):
    """Stands in for a module: records its input, and adds a zero leaf whose grad is d loss/d out."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.x = self.eps = None

    def forward(self, x):
        y = self.inner(x)
        self.x = x.detach()
        self.eps = torch.zeros_like(y, requires_grad=True)
        return y + self.eps


def tap_modules(model, blocks_path: str, keys) -> dict:
    taps = {}
    for layer, name in keys:
        parent_name, attr = f"{blocks_path}.{layer}.{name}".rsplit(".", 1)
        parent = model.get_submodule(parent_name)
        taps[(layer, name)] = Tap(getattr(parent, attr))
        setattr(parent, attr, taps[(layer, name)])
    return taps


def reference_lm_factors(model, family, tokens, keys, targets=None) -> tuple[dict, dict]:
    """A, G in float64 from all positions but each sequence's last. targets=None: gold tokens."""
    model = copy.deepcopy(model).double()
    taps = tap_modules(model, BLOCKS[family], keys)
    logits = model(input_ids=tokens).logits[:, :-1]
    y = tokens[:, 1:] if targets is None else targets
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")
    grads = torch.autograd.grad(loss, [t.eps for t in taps.values()])
    A, G = {}, {}
    for (key, tap), g in zip(taps.items(), grads):
        a = tap.x[:, :-1].reshape(-1, tap.x.shape[-1])  # the last position has no target
        g = g[:, :-1].reshape(-1, g.shape[-1])
        assert a.shape[0] == tokens.shape[0] * (tokens.shape[1] - 1)
        A[key] = a.T @ a / a.shape[0]
        G[key] = g.T @ g / g.shape[0]
    return A, G


def sampled_targets_like_the_library(model, tokens, batch_size, seed):
    """The library's documented sampler on the float32 model's own logits, batch by batch."""
    out, index = [], 0
    with torch.no_grad():
        for batch in batched(tokens, batch_size):
            logits = model(input_ids=batch).logits[:, :-1].float()
            out.append(sample_targets(logits, seed, index))
            index += batch.shape[0]
    return torch.cat(out)


def max_rel_err(got, ref) -> float:
    """max |got - ref| relative to max |ref| (entries of A and G span many magnitudes)."""
    return ((got.double() - ref).abs().max() / ref.abs().max()).item()


def tokens_for_test(n_seq=6, seq_len=12, seed=1, high=VOCAB):
    return torch.randint(0, high, (n_seq, seq_len), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- exact references


@pytest.mark.parametrize("fisher", ["empirical", "sampled"])
def test_factors_equal_float64_reference(tiny_lm, fisher):
    family, model = tiny_lm
    tokens = tokens_for_test()
    modules = mlp_modules(model, [0, 2])
    keys = [(m.layer, m.name) for m in modules]
    got = collect(model, batched(tokens, 4), modules, LMTask(), fisher=fisher, seed=3)
    targets = None
    if fisher == "sampled":
        targets = sampled_targets_like_the_library(model, tokens, 4, seed=3)
        assert not torch.equal(targets, tokens[:, 1:])
    A, G = reference_lm_factors(model, family, tokens, keys, targets)
    assert got.n_tokens == 6 * 11
    assert sorted(got.A) == sorted(keys) and sorted(got.G) == sorted(keys)
    for key in keys:
        assert got.A[key].dtype == torch.float32
        assert max_rel_err(got.A[key], A[key]) < 1e-5, key
        assert max_rel_err(got.G[key], G[key]) < 1e-5, key


@pytest.mark.parametrize("fisher", ["empirical", "sampled"])
def test_generic_loss_path_equals_the_direct_head_gradient(monkeypatch, fisher):
    """Models without a plain LM head backpropagate from the loss; both paths give one answer."""
    model = tiny_olmo2()
    tokens = tokens_for_test()
    modules = mlp_modules(model, [1, 2])
    direct = collect(model, batched(tokens, 3), modules, LMTask(), fisher=fisher, seed=5)
    monkeypatch.setattr(factors, "plain_lm_head", lambda model: None)
    generic = collect(model, batched(tokens, 3), modules, LMTask(), fisher=fisher, seed=5)
    for key in direct.G:
        assert max_rel_err(direct.A[key], generic.A[key].double()) < 1e-6
        assert max_rel_err(direct.G[key], generic.G[key].double()) < 1e-5


@pytest.mark.parametrize(("n", "block"), [(7, 3), (12, 4), (5, 8), (9, 1)])
def test_block_upper_gram_completes_to_the_full_product(n, block):
    x = torch.randn(40, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    acc = torch.zeros(n, n, dtype=torch.float64)
    add_gram_(acc, x, block)
    add_gram_(acc, 2 * x, block)
    full = symmetrized(acc)
    torch.testing.assert_close(full, 5 * x.T @ x, rtol=1e-12, atol=1e-12)
    assert torch.equal(full, full.T)
    # only blocks on and above the diagonal are written: the rest costs nothing
    rows = torch.arange(n) // block
    assert not acc[rows[:, None] > rows[None, :]].any()


def test_float64_accumulation_on_float64_model_is_tighter():
    """With a float64 model and dtype=float64, A agrees to float64 rounding. G only to ~1e-7:
    LMTask computes the loss from logits cast to float32 (fine for bf16 models, a cap here)."""
    model = tiny_neox().double()
    tokens = tokens_for_test()
    modules = mlp_modules(model, [1])
    keys = [(m.layer, m.name) for m in modules]
    got = collect(model, batched(tokens, 3), modules, LMTask(), fisher="empirical",
                  dtype=torch.float64)
    A, G = reference_lm_factors(model, "neox", tokens, keys)
    for key in keys:
        assert got.A[key].dtype == torch.float64
        assert max_rel_err(got.A[key], A[key]) < 1e-12
        assert max_rel_err(got.G[key], G[key]) < 1e-6


def test_gate_and_up_share_one_A_equal_to_up_projs_own_input():
    model = tiny_olmo2()
    tokens = tokens_for_test()
    got = collect(model, batched(tokens, 6), mlp_modules(model, [1]), LMTask(),
                  fisher="empirical")
    # the reference taps up_proj separately: its recorded input is its own, not gate_proj's
    A, _ = reference_lm_factors(model, "olmo2", tokens, [(1, "mlp.up_proj")])
    assert torch.equal(got.A[(1, "mlp.gate_proj")], got.A[(1, "mlp.up_proj")])
    assert max_rel_err(got.A[(1, "mlp.up_proj")], A[(1, "mlp.up_proj")]) < 1e-5
    # asking for up_proj alone still works (its A is read at gate_proj's input)
    alone = collect(model, batched(tokens, 6), mlp_modules(model, [1], ["mlp.up_proj"]),
                    LMTask(), fisher="empirical")
    assert list(alone.A) == [(1, "mlp.up_proj")]
    torch.testing.assert_close(alone.A[(1, "mlp.up_proj")], got.A[(1, "mlp.up_proj")])
    torch.testing.assert_close(alone.G[(1, "mlp.up_proj")], got.G[(1, "mlp.up_proj")])


def test_vit_factors_at_cls_position_equal_reference():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=8, patch_size=4, embed_dim=16, depth=2, num_heads=2,
                            num_classes=5, mlp_ratio=1.5).eval()
    images = torch.randn(7, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    labels = torch.randint(0, 5, (7,), generator=torch.Generator().manual_seed(3))
    modules = mlp_modules(vit, [0, 1], ["mlp.fc1", "mlp.fc2"])
    keys = [(m.layer, m.name) for m in modules]
    got = collect(vit, batched((images, labels), 3), modules, ClassificationTask(),
                  fisher="empirical")
    ref = copy.deepcopy(vit).double()
    taps = tap_modules(ref, "blocks", keys)
    loss = F.cross_entropy(ref(images.double()), labels, reduction="sum")
    grads = torch.autograd.grad(loss, [t.eps for t in taps.values()])
    assert got.n_tokens == 7
    for (key, tap), g in zip(taps.items(), grads):
        a, g = tap.x[:, 0], g[:, 0]  # CLS token only (index 0 of the token axis)
        assert max_rel_err(got.A[key], a.T @ a / 7) < 1e-5
        assert max_rel_err(got.G[key], g.T @ g / 7) < 1e-5


# --------------------------------------------------------------------------- curvlinops


class Logits(nn.Module):
    """curvlinops wants a plain module returning [batch, classes, positions] for CrossEntropy."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, x):
        return self.lm(input_ids=x).logits.transpose(1, 2)


def conv1d_as_linear(model):
    """GPT-2's Conv1D is not a curvlinops-supported layer; swap in the identical nn.Linear."""
    from transformers.pytorch_utils import Conv1D

    model = copy.deepcopy(model)
    for name, mod in list(model.named_modules()):
        if isinstance(mod, Conv1D):
            lin = nn.Linear(*mod.weight.shape)
            with torch.no_grad():
                lin.weight.copy_(mod.weight.T)
                lin.bias.copy_(mod.bias)
            parent, attr = name.rsplit(".", 1)
            setattr(model.get_submodule(parent), attr, lin)
    return model


def curvlinops_factors(model, modules, tokens, batch_size, fisher_type, reduction, **kw):
    """curvlinops' KFAC-expand factors, keyed like curvmem's.

    The model reads tokens[:, :-1] and predicts tokens[:, 1:]. A causal model's activations at
    positions 0..T-2 do not depend on token T-1, so curvlinops sees exactly curvmem's positions
    (every position but the last) without being told to skip any.
    """
    from curvlinops import KFACLinearOperator

    lin = conv1d_as_linear(model)
    names = [m.param_name.removesuffix(".weight") for m in modules]
    data = [(b[:, :-1], b[:, 1:]) for b in batched(tokens, batch_size)]
    op = KFACLinearOperator(Logits(lin), nn.CrossEntropyLoss(reduction=reduction),
                            [lin.get_submodule(n).weight for n in names], data,
                            fisher_type=fisher_type, kfac_approx="expand",
                            check_deterministic=False, **kw)
    op.compute_kronecker_factors()
    A = {(m.layer, m.name): op._input_covariances[f"lm.{n}"] for m, n in zip(modules, names)}
    G = {(m.layer, m.name): op._gradient_covariances[f"lm.{n}"] for m, n in zip(modules, names)}
    return A, G


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_empirical_factors_match_curvlinops(tiny_lm, reduction):
    _, model = tiny_lm
    tokens = tokens_for_test()
    modules = mlp_modules(model, [0, 2])
    got = collect(model, batched(tokens, 3), modules, LMTask(), fisher="empirical")
    A, G = curvlinops_factors(model, modules, tokens, 3, "empirical", reduction)
    n = got.n_tokens  # 6 sequences x 11 positions with a target
    for key in A:
        # A: KFAC-expand divides Σ a aᵀ by N_data x (weight-sharing positions) = our n: no factor.
        assert max_rel_err(got.A[key], A[key].double()) < 1e-5
        # G: with reduction="sum" curvlinops keeps the plain sum Σ g gᵀ over positions (its
        # correction is 1 / mc_samples = 1), i.e. n times our mean. With reduction="mean" the loss
        # is divided by B x 11 per batch, and curvlinops multiplies the outer products back by
        # (B x 11)² / (N_data x 11): exactly our mean over the n positions.
        scale = n if reduction == "sum" else 1
        assert max_rel_err(got.G[key], G[key].double() / scale) < 1e-5


def test_sampled_G_agrees_with_curvlinops_mc_loosely():
    """Labels cannot be matched (curvlinops draws with one generator over the whole batch, curvmem
    seeds each sequence), so compare the Monte-Carlo estimates statistically. The data uses only 5
    of 61 tokens while the random model predicts ~uniformly, so the empirical G (gold labels) is
    far from the sampled one: a sampled path that silently used gold labels would fail."""
    model = tiny_gpt2()
    tokens = tokens_for_test(n_seq=32, seq_len=16, high=5)
    modules = mlp_modules(model, [1])
    sampled = collect(model, batched(tokens, 8), modules, LMTask(), fisher="sampled", seed=0)
    empirical = collect(model, batched(tokens, 8), modules, LMTask(), fisher="empirical")
    # mean reduction: curvlinops' G is then on our per-position scale (see the test above); its
    # mc_samples draws are averaged (correction 1 / mc_samples), which only reduces its noise.
    _, G = curvlinops_factors(model, modules, tokens, 8, "mc", "mean", mc_samples=4, seed=5)
    def rel(x, ref):
        return ((x.double() - ref.double()).norm() / ref.double().norm()).item()

    for key, ref in G.items():
        # measured (seed 0 vs 5): sampled 0.14, 0.18 (Monte-Carlo noise); empirical 1.24, 1.47
        assert rel(sampled.G[key], ref) < 0.4, key
        assert rel(empirical.G[key], ref) > 0.8, key


# --------------------------------------------------------------------------- the sampler


def test_sample_targets_follow_the_predictive_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    logits = probs.log().expand(4000, 1, 5)  # 4000 sequences, one position each
    draws = sample_targets(logits, seed=0, first_index=0).view(-1)
    freq = torch.bincount(draws, minlength=5).double() / draws.numel()
    # binomial standard error <= sqrt(.25 / 4000) = 0.008; 4 sigma
    assert (freq - probs.double()).abs().max() < 0.032
    assert freq[4] == 0


def test_sample_targets_depend_on_seed_and_example_index_only():
    logits = torch.randn(6, 9, VOCAB, generator=torch.Generator().manual_seed(0))
    whole = sample_targets(logits, seed=7, first_index=10)
    assert whole.shape == (6, 9) and whole.dtype == torch.long
    split = torch.cat([sample_targets(logits[:2], 7, 10), sample_targets(logits[2:], 7, 12)])
    assert torch.equal(whole, split)  # batch size / sharding does not change any draw
    assert torch.equal(whole, sample_targets(logits, 7, 10))
    assert not torch.equal(whole, sample_targets(logits, 8, 10))
    assert not torch.equal(whole, sample_targets(logits, 7, 11))


# --------------------------------------------------------------------------- invariances


def test_sampled_factors_are_bit_identical_for_the_same_seed():
    model = tiny_olmo2()
    tokens = tokens_for_test()
    modules = mlp_modules(model, [1, 2])

    def run(seed, batch_size=3):
        return collect(model, batched(tokens, batch_size), modules, LMTask(), fisher="sampled",
                       seed=seed)

    a, b, c = run(5), run(5), run(6)
    for key in a.G:
        assert torch.equal(a.A[key], b.A[key]) and torch.equal(a.G[key], b.G[key])
        assert not torch.equal(a.G[key], c.G[key])
        torch.testing.assert_close(a.A[key], c.A[key], rtol=0, atol=0)  # A has no labels
    # another batch size changes the float32 summation order only (same draws per sequence)
    d = run(5, batch_size=2)
    for key in a.G:
        assert max_rel_err(d.G[key], a.G[key].double()) < 1e-6


def test_collect_restores_the_model():
    model = tiny_gpt2()
    model.transformer.h[0].mlp.c_fc.weight.requires_grad_(False)  # one frozen param stays frozen
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = tokens_for_test()
    collect(model, batched(tokens, 3), mlp_modules(model, [1]), LMTask(), fisher="sampled")
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    hooked = [n for n, m in model.named_modules()
              if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks]
    assert hooked == []
    # plain training still works afterwards (no detached leaf left in the graph)
    model(input_ids=tokens, labels=tokens).loss.backward()
    assert model.transformer.h[0].mlp.c_proj.weight.grad is not None


def test_shards_by_first_index_merge_to_the_single_pass():
    model = tiny_neox()
    tokens = tokens_for_test(n_seq=7)
    modules = mlp_modules(model, [0])
    whole = collect(model, batched(tokens, 2), modules, LMTask(), fisher="sampled", seed=1)
    parts = [collect(model, batched(tokens[s:e], 2), modules, LMTask(), fisher="sampled", seed=1,
                     first_index=s) for s, e in ((0, 3), (3, 7))]
    assert sum(p.n_tokens for p in parts) == whole.n_tokens
    for key in whole.G:
        for side in ("A", "G"):
            merged = sum(getattr(p, side)[key].double() * p.n_tokens for p in parts) / whole.n_tokens
            assert max_rel_err(merged, getattr(whole, side)[key].double()) < 1e-6


def test_bad_collect_arguments():
    model = tiny_gpt2()
    tokens = tokens_for_test()
    modules = mlp_modules(model, [0])
    with pytest.raises(ValueError, match="'sampled' or 'empirical'"):
        collect(model, batched(tokens, 2), modules, LMTask(), fisher="true")
    with pytest.raises(ValueError, match="no modules"):
        collect(model, batched(tokens, 2), [], LMTask())
    with pytest.raises(ValueError, match="no positions"):
        collect(model, [], modules, LMTask())
    with pytest.raises(ValueError, match="--batch-size must be >= 1"):
        batched(tokens, 0)

