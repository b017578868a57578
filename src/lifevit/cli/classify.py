"""``lifevit classify train | eval | predict`` (``lifevit train`` and ``lifevit eval`` are the same commands).

Train a classifier (with or without LIFE) from scratch, evaluate a checkpoint, or predict image files; the grammar
is the one of every task (:mod:`lifevit.cli._grammar`). Run ``train`` under ``torchrun`` for several processes.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ._grammar import add_checkpoint_flag, add_predict_flags, add_train_parser, run_training

TASK_FLAGS = {
    "model": ("model.name", str, "registered model name (model.name)"),
    "dataset": (
        "data.dataset",
        str,
        "fashion_mnist, cifar10, cifar100, svhn, flowers102, tiny_imagenet, imagenet100 or imagefolder (data.dataset)",
    ),
    "train_samples": ("data.train_samples", int, "class-balanced subset of the training split (data.train_samples)"),
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("classify", help="image classification: train, evaluate, predict")
    sub = p.add_subparsers(dest="task_command", metavar="COMMAND")
    _add_commands(sub)
    p.set_defaults(func=lambda args: _usage(p))
    _add_commands(subparsers, alias=True)  # lifevit train / lifevit eval


def _add_commands(sub: argparse._SubParsersAction, alias: bool = False) -> None:
    t = add_train_parser(sub, "train", "train and evaluate a classifier (ViT with or without LIFE)", TASK_FLAGS)
    t.set_defaults(func=run_train)
    e = sub.add_parser("eval", help="top-1/top-5, per-class accuracy and confusion matrix of a checkpoint")
    add_checkpoint_flag(e)
    e.add_argument("--dataset", help="data set (default: the one the checkpoint was trained on)")
    e.add_argument("--data-root", help="folder holding the data set (default: the one it was trained with)")
    e.add_argument("--split", default="test", help="test (default), val or train")
    e.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    e.add_argument("--batch-size", type=int, default=500)
    e.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    e.add_argument("--output", type=Path, help="folder for eval.json and confusion.png (default: <run>/eval-...)")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.set_defaults(func=run_eval)
    if alias:
        return
    r = sub.add_parser("predict", help="top-k classes of image files")
    add_predict_flags(r, "JSON file for the predictions (one entry per image)")
    r.add_argument("--top-k", type=int, default=5)
    r.add_argument("--ema", action="store_true", help="use the EMA weights")
    r.set_defaults(func=run_predict)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def default_output(cfg) -> Path:
    n = f"-n{cfg.data.train_samples}" if cfg.data.train_samples else ""
    return Path("runs") / cfg.data.dataset / f"{cfg.model.name}-s{cfg.train.seed}{n}"


def _describe(summary, output: Path) -> str:
    ema = f", EMA {summary['ema_top1']:.2f}%" if summary.get("ema_top1") is not None else ""
    return (
        f"{summary['model']} on {summary['dataset']} ({summary['train_samples']} train images, "
        f"{summary['epochs']} epochs, {summary['train_seconds']:.0f} s training): "
        f"top-1 {summary['top1']:.2f}%, top-5 {summary['top5']:.2f}%{ema}  ->  {output}"
    )


def run_train(args: argparse.Namespace) -> int:
    from lifevit.tasks.classification import ClassificationConfig, ClassificationTask

    return run_training(args, ClassificationConfig, ClassificationTask, "classify train", _describe, default_output)


def run_eval(args: argparse.Namespace) -> int:
    from lifevit.engine.checkpoint import load_checkpoint, resolve_checkpoint
    from lifevit.tasks.classification import evaluate_checkpoint

    path = resolve_checkpoint(args.checkpoint)
    output = args.output
    if output is None:
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        dataset = args.dataset or load_checkpoint(path).meta.get("dataset", "data")
        output = run_dir / f"eval-{dataset}-{args.split}{'-ema' if args.ema else ''}"
    result = evaluate_checkpoint(
        path, args.dataset, args.data_root, args.split, args.batch_size, args.device, args.ema, output
    )
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "confusion"}, indent=2))
        return 0
    print(
        f"{result['model']} ({result['weights']} weights, epoch {result['epoch']}) on {result['dataset']} "
        f"{args.split}, {result['num_samples']} images"
    )
    print(f"top-1 {result['top1']:.2f}%   top-5 {result['top5']:.2f}%   loss {result['loss']:.4f}")
    print("per-class accuracy:")
    width = max(len(c) for c in result["per_class_acc"])
    for name, acc in result["per_class_acc"].items():
        print(f"  {name:<{width}}  {'n/a' if math.isnan(acc) else f'{acc:6.2f}%'}")
    print(f"wrote {output / 'eval.json'} and {result['confusion_png']}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from lifevit.engine.rundir import write_json
    from lifevit.tasks.classification import predict_images

    if args.output.exists() and args.output.is_dir():
        raise ValueError(f"--output {args.output} is a folder; expected the path of a JSON file to write")
    results = predict_images(args.checkpoint, args.images, args.top_k, args.device, args.ema)
    for r in results:
        best = r["top"][0]
        print(f"{r['image']}: {best['class']} ({best['probability']:.3f})")
    write_json(args.output, results)
    print(f"wrote {args.output}")
    return 0
