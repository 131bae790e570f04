"""A Fisher that is not in-sample and not thin (issue 30, item 4): the ViT Fisher's effective
sample size against a brute-force computation, the augmented Fisher image sets, and training
with augmentation on the smoke preset."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from curvmem import factors
from curvmem.cli import main
from curvmem.model import vit
from curvmem.presets import VISION_PRESETS
from curvmem.schema import read_layer
from curvmem.world import images as vision_data
from test_vision import toy_float64_vit


def run_cli(*argv) -> int:
    return main([str(a) for a in argv])


# --------------------------------------------------------------------------- effective sample size


def test_effective_sample_size_counts_the_positions_that_carry_the_mass():
    def ess(w):
        w = torch.tensor(w, dtype=torch.float64)
        return factors.effective_sample_size(float(w.sum()), float(w.pow(2).sum()))

    assert ess([2.0, 2.0, 2.0, 2.0]) == pytest.approx(4.0)  # all alike: every position
    assert ess([5.0, 0.0, 0.0, 0.0]) == pytest.approx(1.0)  # one carries all of it
    assert ess([1.0, 1.0, 0.0, 0.0]) == pytest.approx(2.0)
    assert ess([0.0, 0.0]) == 0.0


def _per_image_masses(model, images, targets, modules):
    """Brute force, one image at a time: ‖a‖², ‖g‖² and ‖g aᵀ‖² at the CLS position of each
    module, g the gradient of that image's cross-entropy with its target at the module's output
    (an `+ eps` leaf on the output), g aᵀ formed explicitly."""
    out = {(side, m.layer, m.name): [] for m in modules for side in factors.MASS_SIDES}
    inputs, eps = {}, {}

    def hook(key):
        def fn(module, args, output):
            inputs[key] = args[0].detach()[0, 0]
            eps[key] = torch.zeros_like(output, requires_grad=True)
            return output + eps[key]
        return fn

    for i in range(images.shape[0]):
        inputs.clear()
        eps.clear()
        handles = [m.module.register_forward_hook(hook((m.layer, m.name))) for m in modules]
        loss = torch.nn.functional.cross_entropy(model(images[i:i + 1]), targets[i:i + 1],
                                                 reduction="sum")
        loss.backward()
        for h in handles:
            h.remove()
        for key, a in inputs.items():
            g = eps[key].grad[0, 0]
            out[("A", *key)].append(float(a @ a))
            out[("G", *key)].append(float(g @ g))
            out[("W", *key)].append(float(torch.outer(g, a).pow(2).sum()))
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in out.items()}


@pytest.mark.parametrize("fisher", ["empirical", "sampled"])
def test_vit_fisher_masses_equal_a_per_image_brute_force(fisher):
    model, images, labels, modules = toy_float64_vit(11)
    got = factors.collect(model, factors.batched((images, labels), 4), modules,
                          factors.ClassificationTask(), fisher=fisher, seed=3,
                          dtype=torch.float64, position_mass=True)
    if fisher == "empirical":
        targets = labels
    else:  # the collector's draws: one seeded generator per image index
        with torch.no_grad():
            targets = factors.sample_targets(model(images), 3, 0)
    brute = _per_image_masses(model, images, targets, modules)
    for key, w in brute.items():
        w_sum, w_sq = got.mass[key]
        assert float(w_sum) == pytest.approx(float(w.sum()), rel=1e-10), key
        assert float(w_sq) == pytest.approx(float(w.pow(2).sum()), rel=1e-10), key
        # Σ ‖g‖² / n is trace(G), Σ ‖a‖² / n trace(A)
        side, layer, name = key
        if side != "W":
            trace = float(torch.trace(getattr(got, side)[(layer, name)]))
            assert float(w_sum) / 11 == pytest.approx(trace, rel=1e-10), key
    ess = factors.mass_summary(got.mass, 5, ["mlp.fc1"])["mlp.fc1"]["G"]["ess"]
    w = brute[("G", 5, "mlp.fc1")]
    assert ess == pytest.approx(float(w.sum() ** 2 / w.pow(2).sum()), rel=1e-10)
    assert 1.0 <= ess < 11.0
    plain = factors.collect(model, factors.batched((images, labels), 4), modules,
                            factors.ClassificationTask(), fisher=fisher, seed=3,
                            dtype=torch.float64)
    assert plain.mass == {}  # off by default (an LM's collection keeps none)
    assert all(torch.equal(plain.G[k], got.G[k]) for k in plain.G)


@pytest.fixture(scope="module")
def untrained_vit(tmp_path_factory):
    """A dataset with a held-out split and an untrained smoke ViT directory for it."""
    root = tmp_path_factory.mktemp("fisher")
    data, model_dir = root / "d.safetensors", root / "vit"
    tensors, cfg = vision_data.make_dataset(heldout_fraction=0.1)
    vision_data.save_dataset(data, tensors, cfg)
    model, mcfg = vit.build_model(10, (1, 8, 8), preset="smoke", seed=0)
    model_dir.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(model_dir / vit.WEIGHTS_FILE))
    mcfg.update(preset="smoke", seed=0, train=VISION_PRESETS["smoke"]["train"])
    (model_dir / vit.CONFIG_FILE).write_text(json.dumps(mcfg))
    return root, data, model_dir


def _ess(path) -> dict:
    return json.loads(read_layer(path, "factors").attrs["effective_sample_size"])


def test_collect_records_the_ess_and_shards_merge_it_exactly(untrained_vit, tmp_path):
    _, data, model_dir = untrained_vit
    common = ("--model", model_dir, "--data", data, "--layers", "0,5", "--tokens", 60,
              "--batch-size", 16, "--images", "heldout+aug2")
    assert run_cli("collect", *common, "--out", tmp_path / "full") == 0
    for k in (0, 1):
        assert run_cli("collect", *common, "--shard", f"{k}/2", "--out", tmp_path / f"s{k}") == 0
    assert run_cli("merge", tmp_path / "s0" / "layer_5.nc", tmp_path / "s1" / "layer_5.nc",
                   "--out", tmp_path / "merged.nc") == 0
    full = read_layer(tmp_path / "full" / "layer_5.nc", "factors")
    assert full.attrs["n_tokens"] == 180  # 60 held-out images and 2 shifted copies of each
    assert json.loads(full.attrs["augment"]) == {"copies": 2, "shift": 1, "seed": 0}
    ess, merged = _ess(tmp_path / "full" / "layer_5.nc"), _ess(tmp_path / "merged.nc")
    assert set(ess) == {"mlp.fc1", "mlp.fc2"} and set(ess["mlp.fc1"]) == {"A", "G", "W"}
    for name in ess:
        for side in ess[name]:
            assert merged[name][side]["ess"] == pytest.approx(ess[name][side]["ess"], rel=1e-6)
            assert 1.0 <= ess[name][side]["ess"] <= 180.0
    # a shard's own ESS is its half's, not the whole run's
    assert _ess(tmp_path / "s0" / "layer_5.nc")["mlp.fc1"]["G"]["ess"] <= 90.0
    # the eigen file keeps the record
    assert run_cli("eigen", "--factors", tmp_path / "full" / "layer_5.nc",
                   "--out", tmp_path / "e.nc") == 0
    assert "effective_sample_size" in read_layer(tmp_path / "e.nc", "eigen").attrs


# --------------------------------------------------------------------------- augmented Fisher data


def test_fisher_image_set_names():
    sets = vision_data.IMAGE_SETS
    assert vit.fisher_image_set("train", sets) == ("train", 0, 0)
    assert vit.fisher_image_set("heldout+aug4", sets) == ("heldout", 4, 1)
    assert vit.fisher_image_set("clean+aug2s3", sets) == ("clean", 2, 3)
    for bad in ("val", "train+aug0", "train+aug", "train+aug2s0", "train+shift2", "Train",
                "train+aug2 "):
        with pytest.raises(ValueError, match="SET\\+augK"):
            vit.fisher_image_set(bad, sets)


def test_augmented_copies_are_seeded_shifts_of_the_originals():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 1, 8, 8, generator=g)
    y = torch.arange(5)
    assert vit.augmented_copies(x, y, 0, 1)[0] is x
    out, labels = vit.augmented_copies(x, y, 3, 1, seed=7)
    assert out.shape == (20, 1, 8, 8) and torch.equal(out[:5], x)
    assert labels.tolist() == list(range(5)) * 4
    again, _ = vit.augmented_copies(x, y, 3, 1, seed=7)
    other, _ = vit.augmented_copies(x, y, 3, 1, seed=8)
    assert torch.equal(out, again) and not torch.equal(out, other)
    # each copy is its original translated by at most one pixel, the border filled
    background = float(x.min())
    padded = torch.nn.functional.pad(x, (1,) * 4, value=background)
    for j in range(5, 20):
        i = j % 5
        crops = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(out[j], c) for c in crops), j
    assert any(not torch.equal(out[j], x[j % 5]) for j in range(5, 20))
    with pytest.raises(ValueError, match="copies"):
        vit.augmented_copies(x, y, -1, 1)


def test_collect_refuses_a_bad_image_set_before_any_compute(untrained_vit, tmp_path, capsys):
    _, data, model_dir = untrained_vit
    for bad in ("val", "train+aug0"):
        assert run_cli("collect", "--model", model_dir, "--data", data, "--layers", 0,
                       "--tokens", 10, "--images", bad, "--out", tmp_path / "F") == 2
        assert "--images" in capsys.readouterr().err
    assert run_cli("vit-study-cell", "--model", model_dir, "--data", data, "--out",
                   tmp_path / "c.json", "--images", "train,heldout+augx") == 2
    assert "--images" in capsys.readouterr().err
    assert not (tmp_path / "F").exists() and not (tmp_path / "c.json").exists()


def test_study_cell_with_augmented_fisher_sets_reports_their_ess(untrained_vit, tmp_path):
    _, data, model_dir = untrained_vit
    cell = tmp_path / "cell.json"
    assert run_cli("vit-study-cell", "--model", model_dir, "--data", data, "--out", cell,
                   "--images", "heldout,heldout+aug1", "--kfac-layers", "0,-1", "--rho", 0.75,
                   "--svd-drop", 0.5) == 0
    result = json.loads(cell.read_text())
    assert {k: v["n_images"] for k, v in result["kfac"].items()} == \
        {"heldout": 180, "heldout+aug1": 360}
    for image_set, kfac in result["kfac"].items():
        assert set(kfac["fisher_ess"]) == {"0", "5"}
        for sides in kfac["fisher_ess"].values():
            for name in ("mlp.fc1", "mlp.fc2"):
                assert 1.0 <= sides[name]["G"] <= kfac["n_images"], image_set
        assert set(kfac["entries"]) == {"kfac-L0+5-rho0.75"}
    # the augmented set's factors differ from the plain set's, so its edit may too; the ESS is
    # the collect command's (the same images, the same seeds)
    factors_dir = tmp_path / "F"
    assert run_cli("collect", "--model", model_dir, "--data", data, "--layers", "0,5",
                   "--modules", "mlp.fc1,mlp.fc2", "--tokens", 180, "--batch-size", 128,
                   "--images", "heldout+aug1", "--out", factors_dir) == 0
    cli = _ess(factors_dir / "layer_0.nc")
    assert result["kfac"]["heldout+aug1"]["fisher_ess"]["0"]["mlp.fc1"]["G"] == \
        pytest.approx(cli["mlp.fc1"]["G"]["ess"], abs=0.01)


# --------------------------------------------------------------------------- training with augmentation


def test_train_vit_with_shifts_is_seeded_recorded_and_checked(tmp_path, capsys):
    data = tmp_path / "d.safetensors"
    assert run_cli("vision-data", "--out", data) == 0
    runs = {}
    for name, flags_ in (("a", ("--shift", 1, "--shift-prob", 0.5)),
                         ("b", ("--shift", 1, "--shift-prob", 0.5)),
                         ("plain", ())):
        out = tmp_path / name
        assert run_cli("train-vit", "--data", data, "--out", out, "--preset", "smoke",
                       "--epochs", 1, *flags_) == 0
        runs[name] = (json.loads((out / vit.CONFIG_FILE).read_text()),
                      vit.load_model(out).state_dict())
    cfg = runs["a"][0]
    assert cfg["train"]["shift"] == 1 and cfg["train"]["shift_prob"] == 0.5
    assert runs["plain"][0]["train"]["shift_prob"] == 0.0  # the preset's: no augmentation
    w = "blocks.0.mlp.fc1.weight"
    assert torch.equal(runs["a"][1][w], runs["b"][1][w])  # seeded: the same shifts
    assert not torch.equal(runs["a"][1][w], runs["plain"][1][w])
    for flags_, message in ((("--shift", 1), "--shift-prob"), (("--shift-prob", 0.5), "--shift"),
                            (("--shift", -1), "--shift"), (("--shift-prob", 1.5), "--shift-prob")):
        out = tmp_path / f"bad{len(flags_)}{flags_[1]}"
        assert run_cli("train-vit", "--data", data, "--out", out, "--preset", "smoke",
                       "--epochs", 1, *flags_) == 2
        assert message in capsys.readouterr().err and not out.exists()
