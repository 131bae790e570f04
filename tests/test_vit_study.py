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
