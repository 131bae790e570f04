"""Eigenbases, curvature-mass pair selection, the K-FAC edit, its controls, SVD, apply.

Selection is checked against a brute-force full sort of all m·n pairs (descending λᵢμⱼ, ties by
flat index i·n + j), which the library avoids doing.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from conftest import tiny_gpt2, tiny_neox, tiny_olmo2
from curvmem import edit, io, schema
from curvmem.edit import kfac
from curvmem.eigen import eigen_layer, eigh_descending
from curvmem.factors import LMTask, batched, collect
from curvmem.model import mlp_modules, model_fingerprint
from curvmem.model.load import read_layer

torch.set_num_threads(1)  # tiny models: threads only add contention (see test_factors.py)


# --------------------------------------------------------------------------- brute force


def brute_force_order(lam, mu):
    """Flat pair indices i*n+j in selection order, and their masses."""
    prod = np.outer(np.asarray(lam, np.float64), np.asarray(mu, np.float64)).ravel()
    order = np.lexsort((np.arange(prod.size), -prod))  # last key first: -mass, then flat index
    return order, prod[order]


def brute_force_pairs(lam, mu, rho) -> tuple[np.ndarray, int]:
    """The first k pairs in that order whose cumulative mass reaches rho·(Σλ)(Σμ); (mask, k)."""
    order, mass = brute_force_order(lam, mu)
    target = rho * np.sum(lam, dtype=np.float64) * np.sum(mu, dtype=np.float64)
    k = int(np.argmax(np.cumsum(mass) >= target)) + 1
    mask = np.zeros(order.size, dtype=bool)
    mask[order[:k]] = True
    return mask.reshape(len(lam), len(mu)), k


def descending(x):
    return np.sort(np.asarray(x, np.float64))[::-1].copy()


def spectra(kind: str, rng):
    if kind == "random":
        return descending(rng.exponential(size=13)), descending(rng.exponential(size=17))
    if kind == "zeros":  # rank-deficient factors: trailing exact zeros on both sides
        return (np.concatenate([descending(rng.exponential(size=9)), np.zeros(4)]),
                np.concatenate([descending(rng.exponential(size=11)), np.zeros(6)]))
    if kind == "ties":  # small integers: many equal products, and exact sums
        return (descending(rng.integers(0, 4, size=12)), descending(rng.integers(0, 5, size=15)))
    if kind == "wide":  # 14 decades, like real K-FAC spectra
        return (np.logspace(0, -14, 20), descending(rng.exponential(size=30)) ** 4)
    if kind == "large":  # 70 x 90 = 6300 pairs: more than BAND_LIMIT, so bisection runs
        return descending(rng.exponential(size=70)), descending(rng.exponential(size=90))
    raise AssertionError(kind)


KINDS = ["random", "zeros", "ties", "wide", "large"]
RHOS = [1e-6, 0.1, 0.25, 0.5, 0.6, 0.75, 0.9, 0.999]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("band_limit", [edit.BAND_LIMIT, 3])
def test_select_pairs_equals_brute_force_sort(kind, band_limit, monkeypatch):
    monkeypatch.setattr(kfac, "BAND_LIMIT", band_limit)  # 3: bisect down to a tiny band
    rng = np.random.default_rng(KINDS.index(kind))
    for trial in range(3):
        lam, mu = spectra(kind, rng)
        for rho in RHOS:
            got = edit.select_pairs(lam, mu, rho)
            want, _ = brute_force_pairs(lam, mu, rho)
            assert got.dtype == bool and got.shape == (lam.size, mu.size)
            assert np.array_equal(got, want), (kind, trial, rho)


@pytest.mark.parametrize("kind", KINDS)
def test_selection_keeps_rho_of_the_mass_and_is_minimal(kind):
    rng = np.random.default_rng(10 + KINDS.index(kind))
    lam, mu = spectra(kind, rng)
    mass = np.outer(lam, mu)
    total = lam.sum() * mu.sum()
    order, _ = brute_force_order(lam, mu)
    for rho in RHOS:
        mask = edit.select_pairs(lam, mu, rho)
        kept = mass[mask].sum()
        assert kept >= rho * total * (1 - 1e-12)
        k = int(mask.sum())
        last = order[k - 1]  # the last pair taken, in selection order
        assert mask.ravel()[order[:k]].all()  # the kept pairs are exactly a prefix of the order
        assert kept - mass.ravel()[last] < rho * total  # without it, too little mass


def test_ties_at_the_boundary_break_by_flat_index():
    lam, mu = np.array([2.0, 1.0, 1.0, 0.0]), np.array([1.0, 1.0, 0.0])
    # masses: row 0: 2 2 0; rows 1, 2: 1 1 0; total 8. rho = 5/8 needs 2 + 2 + one of four 1s:
    # the first by flat index is (1, 0).
    mask = edit.select_pairs(lam, mu, 5 / 8)
    assert mask.tolist() == [[True, True, False], [True, False, False],
                             [False, False, False], [False, False, False]]
    # exactly reaching the target stops there (>=, not >)
    assert edit.select_pairs(lam, mu, 4 / 8).sum() == 2


def test_rho_one_keeps_everything_and_bad_rho_is_refused():
    lam, mu = np.array([3.0, 1.0, 0.0]), np.array([2.0, 0.0])
    assert edit.select_pairs(lam, mu, 1.0).all()
    for rho in (0.0, -0.1, 1.0001, 2, float("nan")):
        with pytest.raises(ValueError, match=r"rho must be in \(0, 1\]"):
            edit.select_pairs(lam, mu, rho)


@pytest.mark.parametrize("lam, mu, words", [
    ([1.0, 2.0], [1.0], "descending"),
    ([1.0, -0.5], [1.0], "non-negative"),
    ([1.0, float("nan")], [1.0], "finite"),
    ([], [1.0], "non-empty"),
    ([0.0, 0.0], [1.0], "all curvature is zero"),
])
def test_bad_spectra_are_refused(lam, mu, words):
    with pytest.raises(ValueError, match=words):
        edit.select_pairs(lam, mu, 0.5)


def test_keep_bottom_is_the_complement_and_random_the_same_count():
    lam, mu = spectra("random", np.random.default_rng(3))
    top = edit.pair_mask(lam, mu, 0.6, "top")
    assert np.array_equal(edit.pair_mask(lam, mu, 0.6, "bottom"), ~top)
    r1, r2 = (edit.pair_mask(lam, mu, 0.6, "random", seed=s) for s in (1, 1))
    assert np.array_equal(r1, r2) and r1.sum() == top.sum()
    assert not np.array_equal(r1, edit.pair_mask(lam, mu, 0.6, "random", seed=2))
    with pytest.raises(ValueError, match="--keep must be one of"):
        edit.pair_mask(lam, mu, 0.6, "middle")


def test_mass_matched_random_pairs_reach_the_mass_by_brute_force():
    lam, mu = spectra("random", np.random.default_rng(5))
    mass = np.outer(lam, mu)
    kept = edit.pair_mask(lam, mu, 0.6, "random-mass", seed=1)
    order = np.random.default_rng(1).permutation(mass.size)  # the same draw, replayed
    cum = np.cumsum(mass.ravel()[order])
    k = int(np.argmax(cum >= 0.6 * mass.sum())) + 1  # the shortest prefix holding 60 %
    assert np.array_equal(np.flatnonzero(kept.ravel()), np.sort(order[:k]))
    assert mass[kept].sum() >= 0.6 * mass.sum() > mass[kept].sum() - mass.ravel()[order[k - 1]]
    # the same mass takes far more random pairs than top pairs
    assert kept.sum() > edit.pair_mask(lam, mu, 0.6, "top").sum()


@pytest.mark.parametrize("band", ["ablate-mass-top", "ablate-mass-middle"])
def test_band_ablations_remove_equal_mass(band):
    """Each ablation removes the band holding 1 - ρ of the curvature mass (at the top, or centred
    on the middle of the order) and keeps the rest; by brute force over the sorted pairs."""
    lam, mu = spectra("random", np.random.default_rng(6))
    rho = 0.6
    mass = np.outer(lam, mu).ravel()
    ranked = sorted(range(mass.size), key=lambda f: (-mass[f], f))
    cum = np.cumsum(mass[ranked]) / mass.sum()

    def prefix(x):  # the fewest top pairs that hold x of the mass
        return 0 if x == 0 else int(np.argmax(cum >= x)) + 1

    lo, hi = {"ablate-mass-top": (0.0, 0.4), "ablate-mass-middle": (0.3, 0.7)}[band]
    want = np.ones(mass.size, bool)
    want[ranked[prefix(lo):prefix(hi)]] = False
    kept = edit.pair_mask(lam, mu, rho, band)
    assert np.array_equal(kept.ravel(), want)
    removed = mass[~kept.ravel()].sum() / mass.sum()
    assert removed == pytest.approx(1 - rho, abs=mass.max() / mass.sum() * 2)
    # neither is another mode's mask: no duplicate rows among the controls
    for other in ("top", "bottom"):
        assert not np.array_equal(kept, edit.pair_mask(lam, mu, rho, other))
    # the bottom 1 - ρ band, removed, leaves the top-ρ set: the edit itself (so no mode)
    assert np.array_equal(~edit.band_mask(lam, mu, rho, 1.0), edit.pair_mask(lam, mu, rho, "top"))
    with pytest.raises(ValueError, match="removes no mass"):
        edit.pair_mask(lam, mu, 1.0, band)


def test_random_basis_control_is_the_edit_in_a_random_orthonormal_basis(tmp_path):
    q = kfac.random_orthonormal(7, seed=3)
    np.testing.assert_allclose(q.T @ q, np.eye(7), atol=1e-12)
    assert np.array_equal(q, kfac.random_orthonormal(7, seed=3))
    model = tiny_olmo2()
    eigen_dir = make_eigen_dir(model, tmp_path, [1])
    name = mlp_modules(model, [1])[0].name
    tensors, meta = edit.build_edit(model, {1: {name: 0.6}}, eigen_dir=eigen_dir,
                                    keep="random-basis", seed=4)
    g = read_layer(schema.layer_path(eigen_dir, 1), "eigen", model=model).groups[name]
    lam, mu = g["G_eigenvalues"], g["A_eigenvalues"]
    UG, UA = kfac.random_orthonormal(lam.size, 4), kfac.random_orthonormal(mu.size, 5)
    W = mlp_modules(model, [1])[0].weight().detach().double().numpy()
    want = UG @ ((UG.T @ W @ UA) * edit.select_pairs(lam, mu, 0.6)) @ UA.T
    (param, got), = tensors.items()
    np.testing.assert_allclose(got.double().numpy(), want, atol=1e-5)
    assert meta["method"] == "kfac-random-basis"


def test_bands_partition_the_pairs():
    lam, mu = spectra("random", np.random.default_rng(4))
    edges = [0.0, 0.1, 0.25, 0.5, 1.0]
    bands = [edit.band_mask(lam, mu, lo, hi) for lo, hi in itertools.pairwise(edges)]
    assert np.array_equal(sum(b.astype(int) for b in bands), np.ones((lam.size, mu.size), int))
    assert np.array_equal(bands[0], edit.select_pairs(lam, mu, 0.1))
    with pytest.raises(ValueError, match="0 <= lo < hi <= 1"):
        edit.band_mask(lam, mu, 0.5, 0.5)


# --------------------------------------------------------------------------- eigenbases


def random_psd(n, rng, rank=None):
    x = rng.standard_normal((rank or n + 2, n))
    return (x.T @ x).astype(np.float32)


def test_eigh_descending_reconstructs_the_factor():
    m = random_psd(12, np.random.default_rng(0))
    vals, vecs = eigh_descending(m)
    assert vals.dtype == torch.float64 and vecs.shape == (12, 12)
    assert torch.all(vals[:-1] >= vals[1:]) and torch.all(vals >= 0)
    torch.testing.assert_close(vecs.T @ vecs, torch.eye(12, dtype=torch.float64), rtol=0,
                               atol=1e-12)
    m64 = torch.as_tensor(m, dtype=torch.float64)
    torch.testing.assert_close((vecs * vals) @ vecs.T, m64, rtol=0, atol=1e-10 * m64.abs().max())


def test_eigh_clips_rounding_negatives_and_refuses_real_ones():
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((4, 4)))
    tiny_negative = (q * [5.0, 1.0, 0.0, -1e-9]) @ q.T
    vals, _ = eigh_descending(tiny_negative)
    assert vals[-1].item() == 0.0 and torch.all(vals >= 0)
    assert abs(vals[0].item() - 5.0) < 1e-12
    with pytest.raises(ValueError, match="not positive semi-definite"):
        eigh_descending((q * [5.0, 1.0, 0.0, -0.1]) @ q.T)


def factor_attrs(model, layer, n_tokens, fisher="empirical"):
    return {"model_id": "tiny", "model_fingerprint": model_fingerprint(model), "layer": layer,
            "fisher": fisher, "n_tokens": n_tokens, "seq_len": 12, "corpus_fingerprint": "t",
            "seed": 0}


def make_eigen_dir(model, tmp_path, layers, seq=8):
    """collect -> factor files -> eigen files, through the library and the store."""
    tokens = torch.randint(0, 61, (seq, 12), generator=torch.Generator().manual_seed(0))
    modules = mlp_modules(model, layers)
    f = collect(model, batched(tokens, 4), modules, LMTask(), fisher="empirical")
    for layer in layers:
        groups = {m.name: {"A": f.A[(layer, m.name)].numpy(), "G": f.G[(layer, m.name)].numpy()}
                  for m in modules if m.layer == layer}
        fpath = schema.layer_path(tmp_path / "factors", layer)
        schema.write_layer(fpath, "factors", layer, groups, factor_attrs(model, layer, f.n_tokens))
        eigen_layer(fpath, schema.layer_path(tmp_path / "eigen", layer))
    return tmp_path / "eigen"


def test_eigen_files_are_descending_and_reconstruct_the_factors(tmp_path):
    model = tiny_olmo2()
    eigen_dir = make_eigen_dir(model, tmp_path, [1])
    factors = read_layer(schema.layer_path(tmp_path / "factors", 1), "factors")
    eigen = read_layer(schema.layer_path(eigen_dir, 1), "eigen", model=model)
    assert eigen.attrs["model_fingerprint"] == model_fingerprint(model)
    assert eigen.attrs["n_tokens"] == factors.attrs["n_tokens"]
    for name, g in eigen.groups.items():
        for side in ("A", "G"):
            vals = g[f"{side}_eigenvalues"].astype(np.float64)
            vecs = g[f"{side}_eigenvectors"].astype(np.float64)
            assert np.all(np.diff(vals) <= 0) and np.all(vals >= 0)
            f = factors.groups[name][side].astype(np.float64)
            err = np.abs((vecs * vals) @ vecs.T - f).max() / np.abs(f).max()
            assert err < 1e-5, (name, side, err)  # eigenbases are stored in float32
    # gate_proj and up_proj read one input: one A eigenbasis
    for var in ("A_eigenvalues", "A_eigenvectors"):
        assert np.array_equal(eigen.groups["mlp.gate_proj"][var], eigen.groups["mlp.up_proj"][var])


# --------------------------------------------------------------------------- the weight edit


def random_orthogonal(n, rng):
    return np.linalg.qr(rng.standard_normal((n, n)))[0]


def test_kfac_edit_weight_is_UG_C_times_M_UAt():
    rng = np.random.default_rng(5)
    W = rng.standard_normal((6, 4))
    UG, UA = random_orthogonal(6, rng), random_orthogonal(4, rng)
    lam, mu = descending(rng.exponential(size=6)), descending(rng.exponential(size=4))
    mask = rng.random((6, 4)) < 0.5
    W_new, stats = edit.kfac_edit_weight(torch.tensor(W, dtype=torch.float32), UG, lam, UA, mu,
                                         mask)
    W32 = np.float32(W).astype(np.float64)
    want = UG @ ((UG.T @ W32 @ UA) * mask) @ UA.T
    np.testing.assert_allclose(W_new.numpy(), want, rtol=0, atol=1e-12)
    mass = np.outer(lam, mu)
    assert stats["pairs_kept"] == mask.sum() and stats["pairs_total"] == 24
    assert stats["mass_kept"] == pytest.approx(mass[mask].sum() / mass.sum(), rel=1e-12)
    assert stats["g_eigenvectors_touched"] == (~mask).any(axis=1).sum()
    assert stats["a_eigenvectors_touched"] == (~mask).any(axis=0).sum()
    # the full mask reproduces W (orthonormal bases); top + bottom also sum back to W
    full, _ = edit.kfac_edit_weight(W32, UG, lam, UA, mu, np.ones((6, 4), bool))
    np.testing.assert_allclose(full.numpy(), W32, atol=1e-12)
    bottom, _ = edit.kfac_edit_weight(W32, UG, lam, UA, mu, ~mask)
    np.testing.assert_allclose(W_new.numpy() + bottom.numpy(), W32, atol=1e-12)
    with pytest.raises(ValueError, match="does not match eigenbases"):
        edit.kfac_edit_weight(W32.T, UG, lam, UA, mu, mask.T)


@pytest.mark.parametrize("factory", [tiny_olmo2, tiny_gpt2, tiny_neox])
def test_rho_one_leaves_every_weight_unchanged(tmp_path, factory):
    model = factory()
    eigen_dir = make_eigen_dir(model, tmp_path, [0, 2])
    spec = {0: {m.name: 1.0 for m in mlp_modules(model, [0])},
            2: {mlp_modules(model, [2])[0].name: 1.0}}
    tensors, meta = edit.build_edit(model, spec, eigen_dir=eigen_dir)
    params = dict(model.named_parameters())
    assert len(tensors) == len(mlp_modules(model, [0])) + 1
    for name, t in tensors.items():
        assert t.shape == params[name].shape and t.dtype == params[name].dtype
        torch.testing.assert_close(t, params[name].detach(), rtol=0, atol=1e-6)
        assert meta["modules"][name]["mass_kept"] == 1.0


def test_gpt2_conv1d_edit_round_trips_through_file_and_apply(tmp_path):
    """Edit file in the stored (d_in, d_out) layout; apply restores W' = U_G (C ⊙ M) U_Aᵀ."""
    model = tiny_gpt2()
    eigen_dir = make_eigen_dir(model, tmp_path, [1])
    spec = {1: {"mlp.c_fc": 0.6, "mlp.c_proj": 0.8}}
    tensors, meta = edit.build_edit(model, spec, eigen_dir=eigen_dir)
    path = tmp_path / "edit.safetensors"
    schema.write_edit(path, tensors, meta)

    fresh = tiny_gpt2()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    got_meta = edit.apply(fresh, path)
    assert got_meta["method"] == "kfac" and got_meta["spec"] == {"1": spec[1]}
    eigen = read_layer(schema.layer_path(eigen_dir, 1), "eigen")
    stored, _ = schema.read_edit(path)
    for m in mlp_modules(fresh, [1]):
        assert stored[m.param_name].shape == (m.d_in, m.d_out)  # Conv1D's own layout
        g = {k: v.astype(np.float64) for k, v in eigen.groups[m.name].items()}
        UG, UA = g["G_eigenvectors"], g["A_eigenvectors"]
        mask, _ = brute_force_pairs(g["G_eigenvalues"], g["A_eigenvalues"], spec[1][m.name])
        W = before[m.param_name].double().numpy().T  # (d_out, d_in)
        want = UG @ ((UG.T @ W @ UA) * mask) @ UA.T
        np.testing.assert_allclose(m.weight().detach().double().numpy(), want, rtol=0, atol=1e-6)
        assert not np.allclose(want, W, atol=1e-3)  # the edit did change this weight
        stats = meta["modules"][m.param_name]
        assert stats["mass_kept"] >= spec[1][m.name] and stats["pairs_kept"] == mask.sum()
    edited = {m.param_name for m in mlp_modules(fresh, [1])}
    for k, v in fresh.state_dict().items():
        if k not in edited:
            assert torch.equal(v, before[k]), k  # every other weight is untouched


def test_apply_refuses_edits_for_another_model(tmp_path):
    model = tiny_gpt2()
    name = "transformer.h.0.mlp.c_fc.weight"
    w = dict(model.named_parameters())[name].detach()
    path = tmp_path / "e.safetensors"
    schema.write_edit(path, {name: w}, {"method": "svd", "model_fingerprint": "v2:" + "0" * 16})
    with pytest.raises(ValueError, match="fingerprint v2:0000000000000000"):
        edit.apply(model, path)
    schema.write_edit(path, {name: w}, {"method": "svd", "model_fingerprint": "0" * 16})
    with pytest.raises(io.StoreError, match="made by an older curvmem .* remake"):
        edit.apply(model, path)
    fp = {"method": "svd", "model_fingerprint": model_fingerprint(model)}
    schema.write_edit(path, {"transformer.h.9.mlp.c_fc.weight": w}, fp)
    with pytest.raises(ValueError, match="no parameter 'transformer.h.9.mlp.c_fc.weight'"):
        edit.apply(model, path)
    schema.write_edit(path, {name: w.T.contiguous()}, fp)
    with pytest.raises(ValueError, match=r"\(24, 16\)"):
        edit.apply(model, path)
    assert torch.equal(dict(model.named_parameters())[name].detach(), w)  # nothing half-applied


def test_build_edit_validates_before_reading_anything(tmp_path):
    model = tiny_olmo2()
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match=r"rho must be in \(0, 1\]"):
        edit.build_edit(model, {0: {"mlp.up_proj": 1.5}}, eigen_dir=missing)
    with pytest.raises(ValueError, match="out of range"):
        edit.build_edit(model, {7: {"mlp.up_proj": 0.5}}, eigen_dir=missing)
    with pytest.raises(ValueError, match="unknown module"):
        edit.build_edit(model, {0: {"mlp.c_fc": 0.5}}, eigen_dir=missing)
    with pytest.raises(io.StoreError, match="no such eigen file"):
        edit.build_edit(model, {0: {"mlp.up_proj": 0.5}}, eigen_dir=missing)
    eigen_dir = make_eigen_dir(model, tmp_path, [0])
    with pytest.raises(io.StoreError, match="fingerprint"):
        edit.build_edit(tiny_olmo2(seed=1), {0: {"mlp.up_proj": 0.5}}, eigen_dir=eigen_dir)


# --------------------------------------------------------------------------- SVD baseline


@pytest.mark.parametrize("drop, kept", [(0.0, 16), (0.25, 12), (0.5, 8), (0.9375, 1)])
def test_svd_truncation_keeps_the_stated_fraction(drop, kept):
    W = torch.randn(24, 16, generator=torch.Generator().manual_seed(0))
    W_new, stats = edit.svd_truncate(W, drop)
    assert stats["singular_values_kept"] == kept and stats["singular_values_total"] == 16
    s = np.linalg.svd(W.double().numpy(), compute_uv=False)
    s_new = np.linalg.svd(W_new.numpy(), compute_uv=False)
    np.testing.assert_allclose(s_new[:kept], s[:kept], rtol=1e-10)
    assert np.all(s_new[kept:] < 1e-10 * s[0])
    # best rank-k approximation: the residual holds exactly the dropped singular values
    resid = np.linalg.norm(W.double().numpy() - W_new.numpy())
    assert resid == pytest.approx(np.sqrt(np.sum(s[kept:] ** 2)), abs=1e-10)
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"drop fraction must be in \[0, 1\)"):
            edit.svd_truncate(W, bad)


def test_svd_edit_of_conv1d_in_model_layout():
    model = tiny_gpt2()
    tensors, meta = edit.build_edit(model, {2: {"mlp.c_proj": 0.5}}, method="svd")
    (name, t), = tensors.items()
    assert name == "transformer.h.2.mlp.c_proj.weight" and t.shape == (24, 16)
    s = np.linalg.svd(t.T.double().numpy(), compute_uv=False)  # (d_out, d_in) = (16, 24)
    assert np.sum(s > 1e-5 * s[0]) == 8
    assert meta["method"] == "svd" and meta["modules"][name]["drop"] == 0.5


def test_layer_set_label_names_the_layers_of_a_spec_in_order():
    from curvmem.edit import layer_set_label

    assert layer_set_label({"5": {"mlp.up_proj": 0.6}, "4": {"mlp.up_proj": 0.6}}) == "L4+5"
    assert layer_set_label({23: {"mlp.gate_proj": 0.6}}) == "L23"
    assert layer_set_label({"ratio": 0.03, "epochs": 5}) == ""  # BSN: no layer spec
