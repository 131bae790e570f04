"""A Fisher that is not in-sample and not thin (docs/vision.md, "The Fisher's sample"; issue 30,
item 4), measured on the embedded default ViT and written into this folder.

For each training augmentation (none, and random 1-pixel shifts with a few probabilities) and
seed: train the default preset's ViT on vit-decide's dataset (digits, noise 0.1, 1258 training
images, 126 noisy, 180 held out, 359 validation), then in one study cell collect the Fisher on
each image set (the training images, the clean ones, the held-out ones, and augmented copies
of the training and held-out images), record its effective sample size, and make the K-FAC
edits of blocks 0+5 and of all six blocks at a few rho. The edit is selected by the committed
rule of "Deciding Table 2" (`curvmem.report.vit_study.table2_rows`: max clean train acc -
memorized on the selection half; memorized reported on the other half). Run from the
repository root:

    nice -n 19 python docs/results/vit-fisher/measure.py --machine "TEXT"

Writes vit_fisher.json (every number, with the commit, machine and versions) and vit_fisher.md
(the tables docs/vision.md quotes).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from curvmem.analysis.vit_study import run_cell
from curvmem.model import vit
from curvmem.report.vit_study import table2_rows
from curvmem.world import images

HERE = Path(__file__).resolve().parent
SEEDS = (0, 1)
# the training augmentations compared: none (the default preset) and random shifts by up to
# one pixel with these probabilities (8x8 digits: a larger shift moves a stroke off the image)
AUGMENTATIONS = {"none": {}, "shift1-p0.1": {"shift": 1, "shift_prob": 0.1},
                 "shift1-p0.25": {"shift": 1, "shift_prob": 0.25},
                 "shift1-p0.5": {"shift": 1, "shift_prob": 0.5}}
DATA = {"seed": 0, "noise": 0.1, "val_fraction": 0.2, "heldout_fraction": 0.1}  # vit-decide's
FISHER_SETS = ("train", "clean", "heldout", "train+aug2", "heldout+aug4")
CELL = {"kfac_layers": [[0, -1], [0, 1, 2, 3, 4, 5]], "rhos": [0.3, 0.5, 0.75, 0.9],
        "svd_layers": [], "svd_drops": [], "modules": ["mlp.fc1", "mlp.fc2"],
        "fisher": "sampled", "seed": 0, "batch_size": 128, "positions": ["all"],
        "selection_fraction": 0.5, "selection_seed": 0, "augment_seed": 0}
TRAIN_KEYS = ("memorized", "memorized_report", "train_gt_acc", "clean_train_acc", "val_acc")


def cpu_model() -> str:
    text = Path("/proc/cpuinfo").read_text()
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                 if line.startswith("model name")), "unknown")
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return f"{name}{', avx512_bf16' if 'avx512_bf16' in flags.split() else ''}"


def measure_model(data: Path, scratch: Path, name: str, seed: int) -> dict:
    model_dir = scratch / f"{name}-s{seed}"
    cpu0, t0 = time.process_time(), time.perf_counter()
    cfg = vit.train_vit(data, model_dir, "default", seed, progress=False,
                        overrides=AUGMENTATIONS[name])
    train_cpu, train_wall = time.process_time() - cpu0, time.perf_counter() - t0
    cpu0, t0 = time.process_time(), time.perf_counter()
    cell = run_cell(model_dir, data, image_sets=FISHER_SETS, **CELL)
    cell_cpu, cell_wall = time.process_time() - cpu0, time.perf_counter() - t0
    fisher = {}
    for row in table2_rows(cell):
        kfac = cell["kfac"][row["images"]]
        fisher[row["images"]] = {"n_images": kfac["n_images"], "ess": kfac["fisher_ess"],
                                 "selected": row["selected"], "holds": row["holds"],
                                 "bound_validation_no_worse": row["bound_validation_no_worse"]}
    return {"augment": name, "seed": seed, "recipe": cfg["train"],
            "base": {k: cell["base"][k] for k in TRAIN_KEYS},
            "n_noisy": cell["base"]["n_noisy"], "n_report": cell["base"]["n_report"],
            "fisher": fisher,
            "seconds": {"train_wall": round(train_wall, 1), "train_cpu": round(train_cpu, 1),
                        "cell_wall": round(cell_wall, 1), "cell_cpu": round(cell_cpu, 1)}}


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _times(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def _pair(rows, get, fmt=_pct) -> str:
    return " / ".join(fmt(get(r)) for r in rows)


def markdown(doc: dict) -> str:
    by_aug: dict[str, list] = {}
    for m in doc["models"]:
        by_aug.setdefault(m["augment"], []).append(m)
    seeds = " / ".join(f"seed {s}" for s in doc["seeds"])
    epochs = doc["models"][0]["recipe"]["epochs"]
    lines = [f"Training (default preset, {epochs} epochs; {seeds}; memorized of all "
             f"{doc['models'][0]['n_noisy']} noisy images and of the reported half):", "",
             "| augmentation | memorized % | memorized % (reported half) | train GT % | "
             "clean train % | val % | train CPU s |", "|---|---|---|---|---|---|---|"]
    for aug, rows in by_aug.items():
        lines.append(f"| {aug} | {_pair(rows, lambda r: r['base']['memorized'])} | "
                     f"{_pair(rows, lambda r: r['base']['memorized_report'])} | "
                     f"{_pair(rows, lambda r: r['base']['train_gt_acc'])} | "
                     f"{_pair(rows, lambda r: r['base']['clean_train_acc'])} | "
                     f"{_pair(rows, lambda r: r['base']['val_acc'])} | "
                     f"{_pair(rows, lambda r: r['seconds']['train_cpu'], str)} |")
    sites = [("0", "mlp.fc1"), ("0", "mlp.fc2"), ("5", "mlp.fc1"), ("5", "mlp.fc2")]
    for aug, rows in by_aug.items():
        lines += ["", f"Fisher effective sample size, training augmentation `{aug}` ({seeds}; "
                  "G: images carrying trace(G), W: the weight-gradient trace ‖g‖²‖a‖²):", "",
                  "| Fisher images | n | " + " | ".join(f"G L{b} {m[4:]}" for b, m in sites)
                  + " | W L0 fc1 | W L5 fc1 |",
                  "|---|---|" + "---|" * (len(sites) + 2)]
        for images_ in doc["fisher_sets"]:
            cells = [_pair(rows, lambda r, b=b, m=m, side=side, i=images_:
                           r["fisher"][i]["ess"][b][m][side], lambda x: f"{x:.1f}")
                     for b, m, side in [(b, m, "G") for b, m in sites]
                     + [("0", "mlp.fc1", "W"), ("5", "mlp.fc1", "W")]]
            lines.append(f"| {images_} | {rows[0]['fisher'][images_]['n_images']} | "
                         + " | ".join(cells) + " |")
        lines += ["", f"Selected K-FAC edit, training augmentation `{aug}` (reported half; "
                  f"{seeds}):", "",
                  "| Fisher images | edit | memorized % | reduction × | val change (pts) | "
                  "holds | bound × (val no worse) |", "|---|---|---|---|---|---|---|"]
        for images_ in doc["fisher_sets"]:
            sel = [r["fisher"][images_] for r in rows]
            cells = [" / ".join(s["selected"]["edit"] for s in sel),
                     _pair(sel, lambda s: s["selected"]["memorized"]),
                     _pair(sel, lambda s: s["selected"]["reduction"], _times),
                     _pair(sel, lambda s: s["selected"]["val_change"],
                           lambda x: f"{100 * x:+.1f}"),
                     _pair(sel, lambda s: s["holds"], lambda x: "yes" if x else "no"),
                     _pair(sel, lambda s: s["bound_validation_no_worse"], _times)]
            lines.append(f"| {images_} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--machine", required=True, help="the machine, in words (and its load)")
    ap.add_argument("--out", default=str(HERE))
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], capture_output=True,
                           text=True, check=True).stdout.strip()
    models = []
    with tempfile.TemporaryDirectory(prefix="vit-fisher-") as tmp:
        scratch = Path(tmp)
        data = scratch / "data.safetensors"
        tensors, config = images.make_dataset(**DATA)
        images.save_dataset(data, tensors, config)
        for name in AUGMENTATIONS:
            for seed in SEEDS:
                models.append(measure_model(data, scratch, name, seed))
                print(f"{name} seed {seed}: memorized {models[-1]['base']['memorized']:.3f}, "
                      f"val {models[-1]['base']['val_acc']:.3f}", flush=True)
    doc = {"commit": commit, "src_modified": bool(dirty), "machine": args.machine,
           "cpu": cpu_model(),
           "versions": {p: version(p) for p in ("torch", "timm", "numpy", "scikit-learn")},
           "data": DATA, "seeds": list(SEEDS), "augmentations": AUGMENTATIONS,
           "fisher_sets": list(FISHER_SETS), "cell": CELL, "models": models}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vit_fisher.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "vit_fisher.md").write_text(markdown(doc))


if __name__ == "__main__":
    main()
