"""``lifevit detect train | eval | predict``: object detection with the EncDec heads.

Configuration flows one way: the YAML file (``--config``), then ``--set section.key=value`` overrides, then the
named flags, merged here into a :class:`~lifevit.tasks.detection.config.DetectConfig`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

logger = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("detect", help="object detection: train, evaluate, predict (EncDec heads)")
    sub = p.add_subparsers(dest="detect_command", metavar="DETECT_COMMAND")

    t = sub.add_parser("train", help="train a detector (run folder with checkpoints, metrics, curves)")
    t.add_argument("--config", help="YAML experiment file (configs/detection/*.yaml)")
    t.add_argument("--output", help="run folder (new or empty)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (YAML syntax), e.g. --set train.epochs=5 --set model.head=encdec",
    )
    t.add_argument("--data-root", help="data.root: folder holding VOCdevkit")
    t.add_argument("--epochs", type=int, help="train.epochs")
    t.add_argument("--batch-size", type=int, help="train.batch_size")
    t.add_argument("--lr", type=float, help="train.lr (head)")
    t.add_argument("--device", help="train.device (cpu or cuda)")
    t.add_argument("--max-minutes", type=float, help="train.max_minutes: stop after this much training time")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.set_defaults(func=run_train)

    e = sub.add_parser("eval", help="VOC mAP@0.5, COCO mAP and F1 of a checkpoint on the validation split")
    e.add_argument("checkpoint", help="a .safetensors checkpoint or a run folder")
    e.add_argument("--data-root", help="evaluate on this VOC root instead of the training one")
    e.add_argument("--split", help="VOC image set to evaluate (default: the config's val_split)")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--score-threshold", type=float, help="score for F1 (default: the config's, 0.5)")
    e.add_argument("--device", default="cpu")
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    e.set_defaults(func=run_eval)

    r = sub.add_parser("predict", help="draw detected boxes with labels and scores on images (PNG)")
    r.add_argument("checkpoint", help="a .safetensors checkpoint or a run folder")
    r.add_argument("images", nargs="+", help="image files")
    r.add_argument("--output", required=True, help="folder for the <name>_det.png files")
    r.add_argument("--score-threshold", type=float, help="draw detections from this score (default: config's)")
    r.add_argument("--device", default="cpu")
    r.set_defaults(func=run_predict)
    p.set_defaults(func=lambda args: _usage(p))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _set(values: Dict[str, Any], assignment: str) -> None:
    key, sep, raw = assignment.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) != 2 or not all(parts):
        raise ValueError(f"--set expects SECTION.KEY=VALUE (e.g. train.epochs=5), got {assignment!r}")
    values.setdefault(parts[0], {})
    if not isinstance(values[parts[0]], dict):
        raise ValueError(f"config section {parts[0]!r} is not a mapping")
    values[parts[0]][parts[1]] = yaml.safe_load(raw)


def load_config_dict(path: Optional[str], sets: List[str]) -> Dict[str, Any]:
    """The YAML file (if any) with the ``--set`` overrides applied."""
    values: Dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} does not exist")
        try:
            values = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"config file {p} is not valid YAML: {err}") from err
        if not isinstance(values, dict):
            raise ValueError(f"config file {p} must hold a mapping of sections, got {type(values).__name__}")
    for s in sets:
        _set(values, s)
    return values


def run_train(args: argparse.Namespace) -> int:
    from lifevit.tasks.detection.config import config_from_dict
    from lifevit.tasks.detection.engine import fit

    if args.resume:
        if args.config or args.set:
            raise ValueError("--resume continues a run with its stored config; do not give --config or --set")
        summary = fit(None, args.resume, resume=True, progress=not args.no_progress)  # type: ignore[arg-type]
    else:
        if not args.output:
            raise ValueError("--output RUN_DIR is required (or --resume RUN_DIR)")
        values = load_config_dict(args.config, args.set)
        flags = {
            ("data", "root"): args.data_root,
            ("train", "epochs"): args.epochs,
            ("train", "batch_size"): args.batch_size,
            ("train", "lr"): args.lr,
            ("train", "device"): args.device,
            ("train", "max_minutes"): args.max_minutes,
        }
        for (section, key), v in flags.items():
            if v is not None:
                values.setdefault(section, {})[key] = v
        cfg = config_from_dict(values)
        summary = fit(cfg, args.output, progress=not args.no_progress)
    final = summary["final"]
    print(f"run         {summary['output_dir']}")
    print(f"model       {summary['backbone']} + {summary['head']} ({summary['params'] / 1e6:.2f} M params)")
    print(f"trained     {summary['epochs']} epochs in {summary['train_seconds'] / 60:.1f} min")
    if final:
        print(
            f"val         mAP@0.5 {final['map_50']:.4f}  mAP {final['map']:.4f}  F1 {final['f1']:.4f} "
            f"(P {final['precision']:.3f}, R {final['recall']:.3f})"
        )
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import dataclasses

    from lifevit.engine import load_checkpoint
    from lifevit.tasks.detection.config import config_from_dict
    from lifevit.tasks.detection.engine import evaluate_checkpoint

    data = None
    if args.data_root or args.split:
        data = config_from_dict(load_checkpoint(args.checkpoint).meta["config"]).data
        data = dataclasses.replace(data, root=args.data_root or data.root, val_split=args.split or data.val_split)
    stats = evaluate_checkpoint(
        args.checkpoint, data, args.batch_size, args.device, args.score_threshold, progress=sys.stderr.isatty()
    )
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
    from lifevit.tasks.detection.engine import predict_images

    results = predict_images(args.checkpoint, args.images, args.output, args.score_threshold, args.device)
    for r in results:
        dets = ", ".join(f"{d['label']} {d['score']:.2f}" for d in r["detections"]) or "nothing"
        print(f"{r['image']} -> {r['output']}: {dets}")
    return 0
