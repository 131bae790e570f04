"""Vision: digits split and label noise, CLS-only factors, ViT metrics, the smoke pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from curvmem.cli import main
from curvmem.model import vit
from curvmem.report import vit as report_vit
from curvmem.world import images as vision_data


def run_cli(*argv) -> int:
    return main([str(a) for a in argv])


# --------------------------------------------------------------------------- data


def test_split_and_noise_are_deterministic_disjoint_and_always_wrong():
    _, labels, classes = vision_data.load_source("digits")
    a = vision_data.split_and_corrupt(labels, len(classes), seed=3, noise=0.1, val_fraction=0.2)
    b = vision_data.split_and_corrupt(labels, len(classes), seed=3, noise=0.1, val_fraction=0.2)
    c = vision_data.split_and_corrupt(labels, len(classes), seed=4, noise=0.1, val_fraction=0.2)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["train_noisy"], c["train_noisy"])
    train, val = set(a["train_index"].tolist()), set(a["val_index"].tolist())
    assert not train & val and train | val == set(range(len(labels)))
    assert len(val) == round(0.2 * len(labels))
    noisy = a["train_noisy"]
    assert int(noisy.sum()) == round(0.1 * len(train))
    assert torch.equal(a["train_true_labels"], labels[a["train_index"]])
    assert bool((a["train_labels"][noisy] != a["train_true_labels"][noisy]).all())
    assert torch.equal(a["train_labels"][~noisy], a["train_true_labels"][~noisy])
    # the replacement class is spread over the other classes, not a fixed shift
    assert len(set((a["train_labels"][noisy] - a["train_true_labels"][noisy]).remainder(10)
                   .tolist())) > 5


def test_dataset_round_trip_and_load_images(tmp_path):
    path = tmp_path / "d.safetensors"
    assert run_cli("vision-data", "--out", path, "--seed", 1, "--noise", 0.2) == 0
    tensors, cfg = vision_data.load_dataset(path)
    side = json.loads(path.with_suffix(".json").read_text())
    assert cfg["n_noisy"] == int(tensors["train_noisy"].sum()) == round(0.2 * cfg["n_train"])
    assert side["noisy_train_positions"] == torch.nonzero(tensors["train_noisy"]).flatten().tolist()
    images, labels = vision_data.load_images(path, "train")
    assert images.shape == (cfg["n_train"], 1, 8, 8) and images.dtype == torch.float32
    assert torch.equal(labels, tensors["train_labels"])  # the NOISY labels
    assert not torch.equal(labels, tensors["train_true_labels"])
    assert abs(float(images.mean())) < 1e-4  # standardized with the training split's statistics
    v_images, v_labels = vision_data.load_images(path, "val")
    assert v_images.shape[0] == v_labels.shape[0] == cfg["n_val"]
    fresh, _ = vision_data.make_dataset(seed=1, noise=0.2)
    assert torch.equal(fresh["train_labels"], tensors["train_labels"])


def test_imagefolder_and_cifar10_sources(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "folder" / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).save(
                tmp_path / "folder" / cls / f"{i}.png")
    images, labels, classes = vision_data.load_source(f"imagefolder:{tmp_path / 'folder'}")
    assert images.shape == (10, 3, 6, 6) and classes == ["cat", "dog"]
    assert labels.tolist() == [0] * 5 + [1] * 5
    Image.fromarray(rng.integers(0, 255, (9, 7, 3), dtype=np.uint8)).save(
        tmp_path / "folder" / "dog" / "big.png")
    with pytest.raises(ValueError, match="--image-size"):
        vision_data.load_source(f"imagefolder:{tmp_path / 'folder'}")
    images, _, _ = vision_data.load_source(f"imagefolder:{tmp_path / 'folder'}", image_size=4)
    assert images.shape == (11, 3, 4, 4)

    records = np.zeros((7, 3073), dtype=np.uint8)
    records[:, 0] = np.arange(7) % 10
    records[:, 1:] = rng.integers(0, 255, (7, 3072), dtype=np.uint8)
    (tmp_path / "c" / "cifar-10-batches-bin").mkdir(parents=True)
    records.tofile(tmp_path / "c" / "cifar-10-batches-bin" / "data_batch_1.bin")
    images, labels, classes = vision_data.load_source(f"cifar10:{tmp_path / 'c'}")
    assert images.shape == (7, 3, 32, 32) and labels.tolist() == list(range(7))
    assert float(images[3, 0, 0, 0]) == pytest.approx(records[3, 1] / 255.0)

    out = tmp_path / "cf.safetensors"
    assert run_cli("vision-data", "--source", f"imagefolder:{tmp_path / 'folder'}",
                   "--val-fraction", 0.3, "--image-size", 6, "--out", out) == 0
    assert vision_data.load_images(out)[0].shape == (8, 3, 6, 6)


def test_bad_inputs_get_clear_errors_and_no_output(tmp_path, capsys):
    out = tmp_path / "d.safetensors"
    for argv, msg in [
        (["--noise", "1.5"], "--noise"),
        (["--val-fraction", "0"], "--val-fraction"),
        (["--source", "cifar"], "unknown --source"),
        (["--source", f"imagefolder:{tmp_path / 'none'}"], "no such directory"),
        (["--source", f"cifar10:{tmp_path}"], "data_batch"),
    ]:
        assert run_cli("vision-data", "--out", out, *argv) == 2
        assert msg in capsys.readouterr().err
    assert run_cli("vision-data", "--out", tmp_path / "d.npy") == 2
    assert not list(tmp_path.iterdir())

    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        vision_data.load_images(tmp_path / "junk.safetensors")
    with pytest.raises(ValueError, match="no such vision dataset"):
        vision_data.load_images(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="split"):
        vision_data.load_images(tmp_path / "junk.safetensors", split="test")
    with pytest.raises(ValueError, match="not a curvmem vision model"):
        vit.load_model(tmp_path)
    with pytest.raises(ValueError, match="--preset"):
        vit.build_model(10, (1, 8, 8), preset="huge")
    with pytest.raises(ValueError, match="patches"):
        vit.build_model(10, (1, 6, 6))
    with pytest.raises(ValueError, match="patches"):
        vit.build_model(10, (1, 8, 8), model_name="vit_tiny_patch16_224")
    with pytest.raises(ValueError, match="not a timm model"):
        vit.build_model(10, (1, 8, 8), model_name="no_such_model")
    with pytest.raises(ValueError, match="--pretrained"):
        vit.build_model(10, (1, 8, 8), pretrained="cache")
    with pytest.raises(ValueError, match="'base'"):
        report_vit.summarize([("x", {"memorized": 0, "val_acc": 0, "clean_train_acc": 0,
                                 "train_gt_acc": 0, "edit": {"method": "kfac"}})])


def test_is_vision_model_is_cheap_and_never_raises(tmp_path):
    assert not vit.is_vision_model("allenai/OLMo-2-0425-1B")
    assert not vit.is_vision_model(tmp_path)
    assert not vit.is_vision_model("bad\x00path")
    (tmp_path / vit.CONFIG_FILE).write_text("{}")
    assert vit.is_vision_model(tmp_path) and vit.is_vision_model(str(tmp_path))


def test_random_shift_moves_images_and_is_off_at_zero():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 64, dtype=torch.float32).reshape(2, 1, 8, 8)
    assert vit.random_shift(x, 0, 1.0, g) is x
    assert torch.equal(vit.random_shift(x, 1, 0.0, g), x)  # probability 0: the unshifted crop
    shifted = vit.random_shift(x.repeat(20, 1, 1, 1), 1, 1.0, g)
    assert shifted.shape == (40, 1, 8, 8)
    assert any(not torch.equal(s, x[i % 2]) for i, s in enumerate(shifted))


# --------------------------------------------------------------------------- CLS-only factors


def _direct_cls_factors(model, images, labels, modules):
    """A and G at the CLS position from plain autograd: each module's output gets `+ eps`, eps
    a zero tensor that requires grad, so eps.grad is the gradient at the module's output."""
    inputs, eps = {}, {}

    def hook(key):
        def fn(module, args, out):
            inputs[key] = args[0].detach()
            eps[key] = torch.zeros_like(out, requires_grad=True)
            return out + eps[key]
        return fn

    handles = [m.module.register_forward_hook(hook((m.layer, m.name))) for m in modules]
    loss = torch.nn.functional.cross_entropy(model(images), labels, reduction="sum")
    loss.backward()
    for h in handles:
        h.remove()
    n = images.shape[0]
    A = {k: a[:, 0].T @ a[:, 0] / n for k, a in inputs.items()}
    G = {k: e.grad[:, 0].T @ e.grad[:, 0] / n for k, e in eps.items()}
    all_tokens = {k: a.flatten(0, 1).T @ a.flatten(0, 1) / a[:, :, 0].numel()
                  for k, a in inputs.items()}
    return A, G, all_tokens


def toy_float64_vit(n_images: int):
    """An untrained smoke ViT in float64, `n_images` seeded random images with 4-class labels
    and its blocks 0 and 5 fc1/fc2: the toy case factor tests compare against autograd."""
    from curvmem.model import mlp_modules

    model, _ = vit.build_model(4, (1, 8, 8), preset="smoke", seed=0)
    model = model.double().eval()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n_images, 1, 8, 8, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (n_images,), generator=g)
    return model, images, labels, mlp_modules(model, [0, 5], ["mlp.fc1", "mlp.fc2"])


def test_cls_only_factors_equal_direct_float64_computation():
    from curvmem import factors

    model, images, labels, modules = toy_float64_vit(10)
    got = factors.collect(model, factors.batched((images, labels), 4), modules,
                          factors.ClassificationTask(), fisher="empirical", dtype=torch.float64)
    A, G, all_tokens = _direct_cls_factors(model, images, labels, modules)
    assert got.n_tokens == 10  # one position (CLS) per image
    for key in A:
        assert torch.allclose(got.A[key], A[key], rtol=1e-10, atol=1e-12), key
        assert torch.allclose(got.G[key], G[key], rtol=1e-10, atol=1e-14), key
        assert float(G[key].abs().max()) > 0
    # CLS only: the average over all tokens (CLS + patches) is a different matrix
    assert not torch.allclose(got.A[(0, "mlp.fc1")], all_tokens[(0, "mlp.fc1")], rtol=1e-3)


# --------------------------------------------------------------------------- metrics and report


def test_metrics_on_a_hand_made_case():
    # 6 training images: positions 1, 3, 4 are noisy. Predictions: 1 -> noisy label (memorized),
    # 3 -> true label, 4 -> neither. Clean 0, 2, 5: two of three right. Val: 3 of 4 right.
    true = torch.tensor([0, 1, 2, 3, 4, 5])
    noisy_labels = torch.tensor([0, 7, 2, 8, 9, 5])
    mask = torch.tensor([False, True, False, True, True, False])
    pred = torch.tensor([0, 7, 1, 3, 6, 5])
    r = vit.metrics_from_predictions(pred, noisy_labels, true, mask,
                                        torch.tensor([1, 2, 3, 0]), torch.tensor([1, 2, 3, 4]))
    assert r["memorized"] == pytest.approx(1 / 3)
    assert r["train_gt_acc"] == pytest.approx(1 / 3)
    assert r["clean_train_acc"] == pytest.approx(2 / 3)
    assert r["val_acc"] == pytest.approx(3 / 4)
    assert (r["n_noisy"], r["n_clean_train"], r["n_val"]) == (3, 3, 4)


def _result(mem, gt, clean, val, method=None):
    r = {"memorized": mem, "train_gt_acc": gt, "clean_train_acc": clean, "val_acc": val}
    r["edit"] = {"method": method, "spec": {"rho": 0.75}} if method else None
    return r


def test_selection_uses_training_images_only():
    entries = [("base", _result(0.9, 0.05, 1.0, 0.9)),
               ("k_a", _result(0.1, 0.7, 0.95, 0.80, "kfac")),   # best on training images
               ("k_b", _result(0.5, 0.4, 0.97, 0.95, "kfac")),   # best on validation
               ("s_a", _result(0.8, 0.1, 0.99, 0.9, "svd"))]
    summary = report_vit.summarize(entries)
    assert summary["selected"] == {"kfac": "k_a", "svd": "s_a"}
    assert summary["models"]["k_a"]["method"] == "kfac"
    assert summary["models"]["k_a"]["spec"] == {"rho": 0.75}
    assert set(summary["models"]["base"]) == {"memorized", "train_gt_acc", "clean_train_acc",
                                              "val_acc"}
    table = report_vit.table_markdown(summary)
    assert "| K-FAC | 10.0 | 3.5 | 70.0 | 66.5 | 80.0 | 71.7 |" in table


def test_sweep_figure_draws_one_line_per_layer_set(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    def edit(mem, val, method, layers, value):
        r = _result(mem, 0.1, 0.99, val, method)
        r["edit"]["spec"] = {str(layer): {"mlp.fc1": value} for layer in layers}
        return r

    entries = [("base", _result(None, None, 1.0, 0.9))]  # no noisy labels: nothing memorized
    entries += [(f"k{layers}-{rho}", edit(0.5 + rho / 5, 0.8 + rho / 10, "kfac", layers, rho))
                for layers in ([11], [0, 11], [5]) for rho in (0.9, 0.6)]
    entries += [("s", edit(0.9, 0.9, "svd", [0, 11], 0.1)), ("k-bare", _result(0.3, 0.6, 0.9, 0.7, "kfac"))]
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    report_vit.plot_sweep(report_vit.summarize(entries), tmp_path / "f.png")
    labels = figures[0].axes[0].get_legend_handles_labels()[1]
    # layer sets in numeric order (L5 before L11), the knob-less edit as its own line, no base
    assert labels == ["K-FAC", "K-FAC L5", "K-FAC L11", "K-FAC L0+11", "SVD L0+11", "selected"]
    ticks = [a.get_text() for a in figures[0].axes[0].texts]
    assert sorted(ticks) == sorted(["0.6", "0.9"] * 3 + ["0.1"])
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


# --------------------------------------------------------------------------- smoke pipeline


def test_smoke_pipeline_trains_evaluates_and_reports(tmp_path):
    data, model = tmp_path / "d.safetensors", tmp_path / "vit"
    assert run_cli("vision-data", "--out", data) == 0
    assert run_cli("train-vit", "--data", data, "--out", model, "--preset", "smoke") == 0
    assert vit.is_vision_model(model)
    loaded = vit.load_model(model)
    assert not loaded.training and len(loaded.blocks) == 6
    assert "blocks.0.mlp.fc1.weight" in dict(loaded.named_parameters())
    cfg = json.loads((model / vit.CONFIG_FILE).read_text())
    assert cfg["train"]["epochs"] == 3 and cfg["seed"] == 0

    assert run_cli("evaluate", "vit", "--model", model, "--data", data,
                   "--out", tmp_path / "base.json") == 0
    base = json.loads((tmp_path / "base.json").read_text())
    tensors, _ = vision_data.load_dataset(data)
    assert base["memorized"] == pytest.approx(vit.metrics(loaded, tensors)["memorized"])
    assert base["val_acc"] > 0.3 and base["edit"] is None  # learned something in 3 epochs

    edit = tmp_path / "svd.safetensors"
    assert run_cli("edit", "--model", model, "--layers", "0,5", "--modules", "mlp.fc1,mlp.fc2",
                   "--method", "svd", "--svd-drop", 0.5, "--out", edit) == 0
    assert run_cli("evaluate", "vit", "--model", model, "--edit", edit, "--data", data,
                   "--out", tmp_path / "svd.json") == 0
    edited = json.loads((tmp_path / "svd.json").read_text())
    assert edited["edit"]["method"] == "svd"
    assert run_cli("report-vit", "--entry", f"base={tmp_path / 'base.json'}",
                   "--entry", f"svd50={tmp_path / 'svd.json'}", "--out", tmp_path / "s.json",
                   "--table", tmp_path / "t.md", "--figure", tmp_path / "f.png") == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["selected"] == {"kfac": None, "svd": "svd50"}
    assert summary["models"]["svd50"]["val_acc"] == edited["val_acc"]
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    assert "| Baseline |" in (tmp_path / "t.md").read_text()


def test_evaluate_refuses_mismatched_data(tmp_path, capsys):
    data, model = tmp_path / "d.safetensors", tmp_path / "vit"
    tensors, cfg = vision_data.make_dataset()
    vision_data.save_dataset(data, tensors, cfg)
    m, mcfg = vit.build_model(3, (1, 8, 8), preset="smoke")  # 3 classes, data has 10
    from safetensors.torch import save_file
    model.mkdir()
    save_file(m.state_dict(), str(model / vit.WEIGHTS_FILE))
    (model / vit.CONFIG_FILE).write_text(json.dumps(mcfg))
    assert run_cli("evaluate", "vit", "--model", model, "--data", data,
                   "--out", tmp_path / "e.json") == 2
    assert "classes" in capsys.readouterr().err
    assert not (tmp_path / "e.json").exists()


def test_model_name_with_a_local_weights_file(tmp_path):
    """--model-name NAME --pretrained FILE: timm's ViT built for the data's size, weights from the
    file (position embeddings resampled, head replaced), nothing downloaded."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    src = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()},
              str(tmp_path / "w.safetensors"))
    shallow = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2)
    save_file({k: v.contiguous() for k, v in shallow.state_dict().items()},
              str(tmp_path / "shallow.safetensors"))
    with pytest.raises(ValueError, match="lacks"):
        vit.build_model(10, (3, 32, 32), model_name="vit_tiny_patch16_224",
                           pretrained=str(tmp_path / "shallow.safetensors"))
    model, cfg = vit.build_model(10, (3, 32, 32), model_name="vit_tiny_patch16_224",
                                    pretrained=str(tmp_path / "w.safetensors"))
    assert cfg["kwargs"] == {"img_size": [32, 32], "in_chans": 3, "num_classes": 10}
    assert torch.equal(model.blocks[11].mlp.fc1.weight, src.blocks[11].mlp.fc1.weight)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_a_dataset_file_is_the_same_bytes_every_time_it_is_written(tmp_path):
    """One metadata key (the config inside it): with two, safetensors' hash-map order made the
    bytes differ between writes."""
    import hashlib

    tensors, cfg = vision_data.make_dataset()
    digests = set()
    for i in range(12):
        path = tmp_path / f"d{i}.safetensors"
        vision_data.save_dataset(path, tensors, cfg)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1
    assert vision_data.load_dataset(path)[1] == cfg
