"""``lifevit compare``: train several models (or read their finished runs) and print the paper-style table."""

from __future__ import annotations

import argparse
from pathlib import Path

from .train import add_common_train_flags, overrides_from_args


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("compare", help="train / read several runs and print a markdown comparison table")
    p.add_argument("--models", nargs="+", required=True, help="registered model names")
    p.add_argument("--dataset", nargs="+", required=True, help="one or more data sets (one table column each)")
    add_common_train_flags(p)
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
    from lifevit.config import load_config
    from lifevit.engine.compare import comparison_table, train_or_read

    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    base = overrides_from_args(args)
    threads = args.threads
    configs = [
        load_config(args.config, [*base, f"model.name={m}", f"data.dataset={d}"])
        for d in args.dataset
        for m in args.models
    ]
    summaries = train_or_read(configs, args.runs_dir, jobs=args.jobs, threads=threads)
    table = comparison_table(summaries, args.dataset)
    n = configs[0].data.train_samples
    caption = (
        f"{configs[0].epochs} epochs, {'all' if n is None else f'{n} class-balanced'} training images, "
        f"seed {configs[0].seed}; top-1 of the final weights on the test split (EMA weights in brackets)"
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
