"""``lifevit detect train | eval | predict``: object detection with the EncDec heads (the grammar of every task,
:mod:`lifevit.cli._grammar`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._grammar import add_checkpoint_flag, add_predict_flags, add_train_parser, run_training


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("detect", help="object detection: train, evaluate, predict (EncDec heads)")
    sub = p.add_subparsers(dest="task_command", metavar="COMMAND")
    t = add_train_parser(sub, "train", "train a detector (run folder with checkpoints, metrics, curves)", {})
    t.set_defaults(func=run_train)

    e = sub.add_parser("eval", help="VOC mAP@0.5, COCO mAP and F1 of a checkpoint on the validation split")
    add_checkpoint_flag(e)
    e.add_argument("--data-root", help="evaluate on this data root instead of the training one")
    e.add_argument("--split", help="VOC image set to evaluate (default: the config's data.val_split)")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--score-threshold", type=float, help="score for F1 (default: the config's)")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    e.add_argument("--output", type=Path, help="also write the metrics to this JSON file")
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    e.set_defaults(func=run_eval)

    r = sub.add_parser("predict", help="draw detected boxes with labels and scores on images (PNG)")
    add_predict_flags(r, "folder for the <name>_det.png files")
    r.add_argument("--score-threshold", type=float, help="draw detections from this score (default: config's)")
    r.set_defaults(func=run_predict)
    p.set_defaults(func=lambda args: _usage(p))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _describe(summary, output: Path) -> str:
    lines = [
        f"run         {output}",
        f"model       {summary['model']} ({summary['params'] / 1e6:.2f} M params)",
        f"trained     {summary['epochs']} epochs in {summary['train_seconds'] / 60:.1f} min",
    ]
    if "map_50" in summary:
        lines.append(
            f"val         mAP@0.5 {summary['map_50']:.4f}  mAP {summary['map']:.4f}  F1 {summary['f1']:.4f} "
            f"(P {summary['precision']:.3f}, R {summary['recall']:.3f})"
        )
    return "\n".join(lines)


def run_train(args: argparse.Namespace) -> int:
    from lifevit.tasks.detection.config import DetectConfig
    from lifevit.tasks.detection.task import DetectionTask

    return run_training(args, DetectConfig, DetectionTask, "detect train", _describe)


def run_eval(args: argparse.Namespace) -> int:
    import dataclasses
    import sys

    from lifevit.engine import load_checkpoint, resolve_device, write_json
    from lifevit.tasks.detection.config import config_from_dict
    from lifevit.tasks.detection.task import evaluate_checkpoint

    data = None
    if args.data_root or args.split:
        data = config_from_dict(load_checkpoint(args.checkpoint).meta["config"]).data
        data = dataclasses.replace(data, root=args.data_root or data.root, val_split=args.split or data.val_split)
    stats = evaluate_checkpoint(
        args.checkpoint,
        data,
        args.batch_size,
        resolve_device(args.device),
        args.score_threshold,
        progress=sys.stderr.isatty(),
    )
    if args.output:
        write_json(args.output, stats)
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(f"images      {stats['num_images']}")
    print(f"mAP@0.5     {stats['map_50']:.4f}   (VOC-style, IoU 0.5)")
    print(f"mAP         {stats['map']:.4f}   (COCO, IoU 0.50:0.95)")
    print(
        f"F1          {stats['f1']:.4f}   (IoU 0.5; precision {stats['precision']:.4f}, recall {stats['recall']:.4f})"
    )
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from lifevit.engine import resolve_device
    from lifevit.tasks.detection.task import predict_images

    results = predict_images(
        args.checkpoint, args.images, args.output, args.score_threshold, resolve_device(args.device)
    )
    for r in results:
        dets = ", ".join(f"{d['label']} {d['score']:.2f}" for d in r["detections"]) or "nothing"
        print(f"{r['image']} -> {r['output']}: {dets}")
    return 0
