"""``lifevit eval``: evaluate a checkpoint (the model is rebuilt from the file alone)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="top-1/top-5, per-class accuracy and confusion matrix of a checkpoint")
    p.add_argument("--checkpoint", type=Path, required=True, help="a .safetensors checkpoint or a run folder")
    p.add_argument("--dataset", help="data set (default: the one the checkpoint was trained on)")
    p.add_argument("--data-root", help="folder holding the data set")
    p.add_argument("--split", default="test", help="test (default), val or train")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--output",
        type=Path,
        help="folder for eval.json and confusion.png (default: <run>/eval-<dataset>-<split>[-ema])",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lifevit.engine.checkpoint import load_checkpoint, resolve_checkpoint
    from lifevit.engine.classification import evaluate_checkpoint

    path = resolve_checkpoint(args.checkpoint)
    output = args.output
    if output is None:
        dataset = args.dataset or load_checkpoint(path).meta.get("dataset", "data")
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        output = run_dir / f"eval-{dataset}-{args.split}{'-ema' if args.ema else ''}"
    result = evaluate_checkpoint(
        path,
        dataset=args.dataset,
        root=args.data_root,
        split=args.split,
        batch_size=args.batch_size,
        device=args.device,
        use_ema=args.ema,
        output_dir=output,
    )
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
