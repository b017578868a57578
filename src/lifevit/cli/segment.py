"""``lifevit segment train | eval | predict``: semantic segmentation on Cityscapes-layout data.

Configuration is merged here, once: the YAML file (``--config``), then the dedicated flags, then any
``--set section.key=value`` overrides, into a typed :class:`~lifevit.tasks.segmentation.SegmentationConfig`.
``train`` runs under ``torchrun`` for several processes (DDP; gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

logger = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("segment", help="semantic segmentation: train, evaluate (mIoU), predict masks")
    sub = p.add_subparsers(dest="segment_command", metavar="SEGMENT_COMMAND")

    t = sub.add_parser("train", help="train a segmentation model in a run folder (checkpoints, metrics, plots)")
    t.add_argument("--config", help="YAML experiment file, e.g. configs/segmentation/canvas_vit_lite_life.yaml")
    t.add_argument("--output", required=True, help="run folder (must be new or empty unless --resume)")
    t.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    t.add_argument("--data-root", help="Cityscapes root holding leftImg8bit/ and gtFine/ (data.root)")
    t.add_argument("--label-table", help="JSON label table for non-Cityscapes data (data.label_table)")
    t.add_argument("--backbone", help="timm / lifevit model name (model.backbone)")
    t.add_argument("--decoder", choices=("linear", "mask_transformer"), help="decode head (model.decoder)")
    t.add_argument("--epochs", type=int, help="train.epochs")
    t.add_argument("--batch-size", type=int, help="train.batch_size")
    t.add_argument("--lr", type=float, help="train.lr")
    t.add_argument("--device", help="cpu or cuda (train.device)")
    t.add_argument("--threads", type=int, help="CPU threads for torch (train.threads)")
    _add_set(t)
    t.set_defaults(func=run_train)

    e = sub.add_parser("eval", help="mIoU and per-class IoU of a checkpoint on a split")
    e.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint or a run folder")
    e.add_argument("--data-root", help="data root (default: the one the checkpoint was trained on)")
    e.add_argument("--label-table", help="JSON label table (default: the checkpoint's)")
    e.add_argument("--split", help="split to evaluate (default: the checkpoint's val split)")
    e.add_argument("--output", help="also write the results to this JSON file")
    _add_inference_flags(e)
    _add_set(e)
    e.set_defaults(func=run_eval)

    r = sub.add_parser("predict", help="write colourised masks and overlays (PNG) for images")
    r.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint or a run folder")
    r.add_argument("--input", required=True, nargs="+", help="image files and/or folders of images")
    r.add_argument("--output", required=True, help="folder for <stem>_mask.png, _overlay.png, _trainIds.png")
    r.add_argument("--alpha", type=float, default=0.5, help="opacity of the mask in the overlay")
    _add_inference_flags(r)
    _add_set(r)
    r.set_defaults(func=run_predict)

    p.set_defaults(func=lambda args: _usage(p))


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any config value (YAML syntax), e.g. --set data.crop_size=[768,768]; repeatable",
    )


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
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _apply_sets(values: Dict[str, Any], sets: List[str]) -> None:
    import yaml

    for item in sets:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise ValueError(f"--set expects SECTION.KEY=VALUE (e.g. train.epochs=5), got {item!r}")
        values.setdefault(parts[0], {})[parts[1]] = yaml.safe_load(raw)


def _put(values: Dict[str, Any], section: str, key: str, value: Optional[Any]) -> None:
    if value is not None:
        values.setdefault(section, {})[key] = value


def load_yaml(path: str) -> Dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {p} not found (expected a YAML file such as configs/segmentation/*.yaml)")
    values = yaml.safe_load(p.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{p} must hold a mapping of sections (model, data, train, inference), got {type(values)}")
    return values


def _inference_overrides(values: Dict[str, Any], args: argparse.Namespace) -> None:
    _put(values, "inference", "mode", args.mode)
    _put(values, "inference", "window", args.window)
    _put(values, "inference", "stride", args.stride)
    _put(values, "inference", "flip", args.flip)
    _put(values, "inference", "scales", args.scales)


def run_train(args: argparse.Namespace) -> int:
    from lifevit.engine.distributed import cleanup_distributed, is_main
    from lifevit.tasks.segmentation.config import config_from_dict
    from lifevit.tasks.segmentation.engine import fit

    out = Path(args.output)
    if args.resume:
        values = load_yaml(args.config) if args.config else _load_run_config(out)
    else:
        values = load_yaml(args.config) if args.config else {}
    _put(values, "data", "root", args.data_root)
    _put(values, "data", "label_table", args.label_table)
    _put(values, "model", "backbone", args.backbone)
    _put(values, "model", "decoder", args.decoder)
    _put(values, "train", "epochs", args.epochs)
    _put(values, "train", "batch_size", args.batch_size)
    _put(values, "train", "lr", args.lr)
    _put(values, "train", "device", args.device)
    _put(values, "train", "threads", args.threads)
    _apply_sets(values, args.set)
    cfg = config_from_dict(values)
    try:
        summary = fit(cfg, out, resume=args.resume)
        main = is_main()  # before the process group is gone
    finally:
        cleanup_distributed()
    if not main:
        return 0
    print(
        f"mIoU {summary['mIoU']:.4f} (best {summary['best_mIoU']:.4f} at epoch {summary['best_epoch']}), "
        f"pixel acc {summary['pixel_acc']:.4f}, {summary['train_wall_seconds']:.0f} s"
    )
    for name, iou in summary["per_class_iou"].items():
        print(f"  {name:<16} {iou:.4f}")
    print(f"run folder: {out}")
    return 0


def _load_run_config(out: Path) -> Dict[str, Any]:
    path = out / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: {path} not found (is {out} a `lifevit segment train` run folder?)")
    return json.loads(path.read_text())


def _checkpoint_config(args: argparse.Namespace):
    """The model from the checkpoint and the config merged with the command-line overrides."""
    from lifevit.tasks.segmentation.config import config_from_dict
    from lifevit.tasks.segmentation.engine import load_segmenter, resolve_device

    device = resolve_device(args.device)
    model, cfg, ckpt = load_segmenter(args.checkpoint, device)
    values = cfg.to_dict()
    _inference_overrides(values, args)
    _apply_sets(values, args.set)
    return model, config_from_dict(values), ckpt, device


def run_eval(args: argparse.Namespace) -> int:
    from lifevit.data.cityscapes import CityscapesSegmentation
    from lifevit.engine.rundir import write_json
    from lifevit.tasks.segmentation.engine import evaluate
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
    from lifevit.tasks.segmentation.engine import list_images, predict_files

    model, cfg, ckpt, device = _checkpoint_config(args)
    files = list_images(args.input)
    written = predict_files(
        model, files, args.output, ckpt.meta["colors"], cfg.data, cfg.inference, device, alpha=args.alpha
    )
    for w in written:
        print(f"{w['image']} -> {w['mask']}, {w['overlay']}")
    return 0
