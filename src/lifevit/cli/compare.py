"""``lifevit compare``: train several models (or read their finished runs) and print the paper-style table."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._grammar import COMMON_TRAIN_FLAGS, add_config_flags, add_value_flags


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("compare", help="train / read several runs and print a markdown comparison table")
    p.add_argument("--models", nargs="+", required=True, help="registered model names")
    p.add_argument("--dataset", nargs="+", required=True, help="one or more data sets (one table column each)")
    add_config_flags(p)
    add_value_flags(
        p,
        {
            "train_samples": ("data.train_samples", int, "class-balanced subset of the training split"),
            **COMMON_TRAIN_FLAGS,
        },
    )
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="root of the run folders (default: runs)")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs trained at the same time in separate processes (default 1: one after another)",
    )
    p.add_argument("--table", type=Path, help="also write the table here (default: <runs-dir>/comparison.md)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lifevit.config import build_config
    from lifevit.tasks.classification import ClassificationConfig
    from lifevit.tasks.classification.compare import comparison_table, train_or_read

    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    flags = {key: getattr(args, d) for d, (key, _, _) in COMMON_TRAIN_FLAGS.items() if getattr(args, d) is not None}
    if args.train_samples is not None:
        flags["data.train_samples"] = args.train_samples
    if args.no_progress:
        flags["train.progress"] = False
    threads = flags.pop("train.threads", None)
    configs = [
        build_config(
            ClassificationConfig, args.config, args.overrides, flags={**flags, "model.name": m, "data.dataset": d}
        )
        for d in args.dataset
        for m in args.models
    ]
    summaries = train_or_read(configs, args.runs_dir, jobs=args.jobs, threads=threads)
    table = comparison_table(summaries, args.dataset)
    n = configs[0].data.train_samples
    caption = (
        f"{configs[0].train.epochs} epochs, {'all' if n is None else f'{n} class-balanced'} training images, "
        f"seed {configs[0].train.seed}; top-1 of the final weights on the test split (EMA weights in brackets)"
    )
    print(table)
    print(f"\n{caption}")
    for s in summaries:
        print(f"  {s['model']} on {s['dataset']}: {s['train_seconds']:.0f} s training -> {s['run_dir']}")
    out = args.table or args.runs_dir / "comparison.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"{table}\n\n{caption}\n")
    print(f"wrote {out}")
    return 0
