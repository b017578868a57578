"""``lifevit segment train | eval | predict``: semantic segmentation on Cityscapes-layout data (the grammar of every
task, :mod:`lifevit.cli._grammar`). ``train`` runs under ``torchrun`` for several processes (DDP)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._grammar import add_checkpoint_flag, add_predict_flags, add_set_flag, add_train_parser, run_training

TASK_FLAGS = {
    "label_table": ("data.label_table", str, "JSON label table for non-Cityscapes data (data.label_table)"),
    "backbone": ("model.backbone", str, "timm / lifevit model name (model.backbone)"),
    "decoder": ("model.decoder", str, "linear or mask_transformer (model.decoder)"),
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("segment", help="semantic segmentation: train, evaluate (mIoU), predict masks")
    sub = p.add_subparsers(dest="task_command", metavar="COMMAND")
    t = add_train_parser(
        sub, "train", "train a segmentation model in a run folder (checkpoints, metrics, plots)", TASK_FLAGS
    )
    t.set_defaults(func=run_train)

    e = sub.add_parser("eval", help="mIoU and per-class IoU of a checkpoint on a split")
    add_checkpoint_flag(e)
    e.add_argument("--data-root", help="data root (default: the one the checkpoint was trained on)")
    e.add_argument("--label-table", help="JSON label table (default: the checkpoint's)")
    e.add_argument("--split", help="split to evaluate (default: the checkpoint's val split)")
    e.add_argument("--output", type=Path, help="also write the results to this JSON file")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    _add_inference_flags(e)
    e.set_defaults(func=run_eval)

    r = sub.add_parser("predict", help="write colourised masks and overlays (PNG) for images")
    add_predict_flags(r, "folder for <stem>_mask.png, _overlay.png, _trainIds.png")
    r.add_argument("--alpha", type=float, default=0.5, help="opacity of the mask in the overlay")
    _add_inference_flags(r)
    r.set_defaults(func=run_predict)
    p.set_defaults(func=lambda args: _usage(p))


def _add_inference_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=("whole", "slide"), help="inference.mode")
    p.add_argument("--window", type=int, nargs=2, metavar=("H", "W"), help="sliding window (inference.window)")
    p.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"), help="sliding stride (inference.stride)")
    p.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average in the prediction of the horizontally flipped image (inference.flip)",
    )
    p.add_argument(
        "--scales",
        type=float,
        nargs="+",
        metavar="S",
        help="multi-scale test: average the predictions at these resize factors, e.g. 0.75 1 1.25 (inference.scales)",
    )
    add_set_flag(p, "inference.batch_size=4")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _describe(summary, output: Path) -> str:
    lines = [
        f"mIoU {summary['mIoU']:.4f} (best {summary['best_score']:.4f} at epoch {summary['best_epoch']}), "
        f"pixel acc {summary['pixel_acc']:.4f}, {summary['train_seconds']:.0f} s training"
    ]
    lines += [f"  {name:<16} {iou:.4f}" for name, iou in summary["per_class_iou"].items()]
    lines.append(f"run folder: {output}")
    return "\n".join(lines)


def run_train(args: argparse.Namespace) -> int:
    from lifevit.tasks.segmentation import SegmentationConfig
    from lifevit.tasks.segmentation.task import SegmentationTask

    return run_training(args, SegmentationConfig, SegmentationTask, "segment train", _describe)


def _checkpoint_config(args: argparse.Namespace):
    """The model from the checkpoint and its config with the command-line inference overrides."""
    from lifevit.config import build_config, config_to_dict
    from lifevit.engine import resolve_device
    from lifevit.tasks.segmentation import SegmentationConfig
    from lifevit.tasks.segmentation.task import load_model

    device = resolve_device(args.device)
    model, cfg, ckpt = load_model(args.checkpoint, device)
    flags = {
        f"inference.{k}": getattr(args, k)
        for k in ("mode", "window", "stride", "flip", "scales")
        if getattr(args, k) is not None
    }
    cfg = build_config(SegmentationConfig, None, args.overrides, base=config_to_dict(cfg), flags=flags)
    return model, cfg, ckpt, device


def run_eval(args: argparse.Namespace) -> int:
    from lifevit.data.cityscapes import CityscapesSegmentation
    from lifevit.engine.rundir import write_json
    from lifevit.tasks.segmentation.task import evaluate
    from lifevit.tasks.segmentation.transforms import SegmentationTransform

    model, cfg, ckpt, device = _checkpoint_config(args)
    data = cfg.data
    root = args.data_root or data.root
    table = args.label_table or data.label_table
    split = args.split or data.val_split
    dataset = CityscapesSegmentation(
        root, split, label_table=table, transforms=SegmentationTransform(False, mean=data.mean, std=data.std)
    )
    if dataset.num_classes != model.num_classes:
        raise ValueError(f"the checkpoint predicts {model.num_classes} classes but {root} has {dataset.num_classes}")
    stats = evaluate(model, dataset, device, cfg.inference)
    stats.update(
        checkpoint=str(ckpt.path), epoch=ckpt.epoch, data_root=str(root), split=split, inference=cfg.inference.mode
    )
    print(f"{ckpt.path} (epoch {ckpt.epoch}) on {root} [{split}], {stats['num_images']} images, {cfg.inference.mode}")
    print(f"mIoU {stats['mIoU']:.4f}  mAcc {stats['mAcc']:.4f}  pixel acc {stats['pixel_acc']:.4f}")
    for name, iou in stats["per_class_iou"].items():
        print(f"  {name:<16} {iou:.4f}")
    if args.output:
        write_json(args.output, stats)
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from lifevit.tasks.segmentation.task import predict_files

    model, cfg, ckpt, device = _checkpoint_config(args)
    written = predict_files(
        model, args.images, args.output, ckpt.meta["colors"], cfg.data, cfg.inference, device, alpha=args.alpha
    )
    for w in written:
        print(f"{w['image']} -> {w['mask']}, {w['overlay']}")
    return 0
