"""vision-data, train-vit, evaluate vit, report-vit: the ViT on noisy digits (the paper's Table 2)."""

from __future__ import annotations

from pathlib import Path


def register(sub, evaluate_sub) -> None:
    p = sub.add_parser("vision-data", help="real digit images with a seeded split and label noise",
                       description="Write a vision dataset: standardized images, noisy and true "
                       "training labels, the noisy mask (safetensors + JSON sidecar).")
    p.add_argument("--out", required=True, help="FILE.safetensors")
    p.add_argument("--source", default="digits",
                   help="'digits' (sklearn, embedded), 'imagefolder:PATH' or 'cifar10:PATH' "
                   "(binary version); nothing is downloaded")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", type=float, default=0.1,
                   help="fraction of training labels replaced by a different random class")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--image-size", type=int, default=None,
                   help="imagefolder only: resize every image to N x N")
    p.set_defaults(func=run_data)

    p = sub.add_parser("train-vit", help="train a timm ViT from scratch on the noisy labels",
                       description="Train until it fits the noisy training labels; writes "
                       "DIR/model.safetensors and DIR/timm_config.json.")
    p.add_argument("--data", required=True, help="FILE.safetensors from vision-data")
    p.add_argument("--out", required=True, help="model directory")
    p.add_argument("--preset", default="default", choices=["default", "smoke"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--model-name", default=None,
                   help="a timm ViT name instead of the preset's small ViT")
    p.add_argument("--pretrained", default=None,
                   help="with --model-name: 'none' (from scratch, default), 'cache' (locally "
                   "cached hub weights, no download) or a weights FILE")
    p.set_defaults(func=run_train)

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


def _check_out(path, suffix: str, flag: str = "--out") -> None:
    if Path(path).suffix != suffix:
        raise ValueError(f"{flag} {path}: must end in {suffix}")


def run_data(args) -> None:
    from curvmem.world import images

    _check_out(args.out, ".safetensors")
    tensors, config = images.make_dataset(args.source, args.seed, args.noise, args.val_fraction,
                                         args.image_size)
    images.save_dataset(args.out, tensors, config)
    print(f"{config['n_train']} train ({config['n_noisy']} noisy) + {config['n_val']} val images, "
          f"{config['num_classes']} classes -> {args.out}")


def run_train(args) -> None:
    from curvmem.model import vit

    cfg = vit.train_vit(args.data, args.out, args.preset, args.seed, args.epochs,
                           args.model_name, args.pretrained)
    m = cfg["final_metrics"]
    print(f"trained in {cfg['train_seconds']} s: memorized {m['memorized']}, "
          f"val acc {m['val_acc']} -> {args.out}")


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
