"""``lifevit train``: train a classifier (with or without LIFE) from scratch and evaluate it.

Flags override the values of ``--config``; ``--set group.key=value`` reaches any other config key.
Run it under ``torchrun`` for several processes or nodes (see ``docs/training.md``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import List

import yaml

_logger = logging.getLogger(__name__)

# flag name -> dotted config key
FLAG_KEYS = {
    "model": "model.name",
    "dataset": "data.dataset",
    "data_root": "data.root",
    "train_samples": "data.train_samples",
    "epochs": "epochs",
    "batch_size": "data.batch_size",
    "lr": "optim.lr",
    "seed": "seed",
    "device": "device",
    "threads": "threads",
    "eval_interval": "eval_interval",
}


def add_common_train_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``train`` and ``compare``."""
    p.add_argument("--data-root", help="folder holding the data set (see docs/training.md for the layouts)")
    p.add_argument("--train-samples", type=int, help="class-balanced subset of the training split")
    p.add_argument("--epochs", type=int, help="training epochs")
    p.add_argument("--batch-size", type=int, help="images per batch per process")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--seed", type=int, help="random seed (fixed seeds give identical results on CPU)")
    p.add_argument("--config", type=Path, help="YAML config (configs/...); flags override its values")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, help="torch CPU threads per process")
    p.add_argument("--eval-interval", type=int, help="evaluate every N epochs (and after the last)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any config value, e.g. --set optim.weight_decay=0.05 (repeatable)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train and evaluate a classifier (ViT with or without LIFE)")
    p.add_argument("--model", help="registered model name (default: vit_lite_patch4_28_life)")
    p.add_argument(
        "--dataset",
        help="fashion_mnist, cifar10, cifar100, svhn, flowers102, tiny_imagenet, imagenet100 or imagefolder",
    )
    add_common_train_flags(p)
    p.add_argument("--output", type=Path, help="run folder (default: runs/<dataset>/<model>-s<seed>[-n<samples>])")
    p.add_argument("--resume", type=Path, metavar="DIR", help="continue the run in DIR from its last checkpoint")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def overrides_from_args(args: argparse.Namespace) -> List[str]:
    """Dotted ``key=value`` overrides for the flags that were given, then the ``--set`` ones."""
    out = []
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag, None)
        if value is not None:
            out.append(f"{key}={json.dumps(value) if not isinstance(value, str) else value}")
    if getattr(args, "no_progress", False):
        out.append("progress=false")
    return out + list(args.overrides)


def default_output(cfg) -> Path:
    n = f"-n{cfg.data.train_samples}" if cfg.data.train_samples else ""
    return Path("runs") / cfg.data.dataset / f"{cfg.model.name}-s{cfg.seed}{n}"


def run(args: argparse.Namespace) -> int:
    from lifevit.config import load_config
    from lifevit.engine.classification import NonFiniteLossError, train
    from lifevit.engine.distributed import is_main

    overrides = overrides_from_args(args)
    if args.resume is not None:
        saved = args.resume / "config.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"cannot resume: {saved} not found (is {args.resume} a lifevit run folder?)")
        if args.output is not None and args.output.resolve() != args.resume.resolve():
            raise ValueError(f"--resume {args.resume} continues in place; --output {args.output} must be omitted")
        cfg = load_config(args.config, overrides, base=yaml.safe_load(saved.read_text()))
        output = args.resume
    else:
        cfg = load_config(args.config, overrides)
        output = args.output or default_output(cfg)
    try:
        summary = train(cfg, output, resume=args.resume is not None)
    except NonFiniteLossError as err:
        print(f"lifevit train: stopped: {err}", file=sys.stderr)
        return 1
    if not is_main():
        return 0
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if k != "per_class_acc"}, indent=2))
        return 0
    ema = f", EMA {summary['ema_top1']:.2f}%" if summary.get("ema_top1") is not None else ""
    print(
        f"{summary['model']} on {summary['dataset']} ({summary['train_samples']} train images, "
        f"{summary['epochs']} epochs, {summary['train_seconds']:.0f} s training): "
        f"top-1 {summary['top1']:.2f}%, top-5 {summary['top5']:.2f}%{ema}  ->  {output}"
    )
    return 0
