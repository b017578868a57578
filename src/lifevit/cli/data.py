"""``lifevit data ...``: make the data sets that are generated locally (``lifevit data canvas``)."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="generate local data sets (the Fashion-MNIST canvas set)")
    sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    c = sub.add_parser(
        "canvas",
        help="Fashion-MNIST items pasted on canvases, written in the Pascal VOC and the Cityscapes layouts",
    )
    c.add_argument(
        "--output", required=True, help="output folder, new or empty (VOCdevkit/ and cityscapes/ are written in it)"
    )
    c.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a canvas set already in --output (refused if the folder holds any other file)",
    )
    c.add_argument("--num-train", type=int, default=2000, help="training canvases")
    c.add_argument("--num-val", type=int, default=500, help="validation canvases")
    c.add_argument("--canvas-size", type=int, default=96, help="canvas side in pixels")
    c.add_argument("--max-items", type=int, default=4, help="1 to this many items per canvas")
    c.add_argument("--min-scale", type=float, default=0.25, help="smallest item side / canvas side")
    c.add_argument("--max-scale", type=float, default=0.5, help="largest item side / canvas side")
    c.add_argument("--seed", type=int, default=0, help="random seed")
    c.add_argument(
        "--fashion-mnist-root",
        default=None,
        help="folder with the Fashion-MNIST IDX files (default: $LIFEVIT_FASHION_MNIST, else the system copy)",
    )
    c.set_defaults(func=run_canvas)
    p.set_defaults(func=lambda args: _usage(p))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_canvas(args: argparse.Namespace) -> int:
    from lifevit.data.canvas import make_canvas_dataset

    summary = make_canvas_dataset(
        args.output,
        num_train=args.num_train,
        num_val=args.num_val,
        canvas_size=args.canvas_size,
        max_items=args.max_items,
        seed=args.seed,
        scale_range=(args.min_scale, args.max_scale),
        fashion_mnist_root=args.fashion_mnist_root,
        overwrite=args.overwrite,
    )
    print(json.dumps(summary, indent=2))
    return 0
