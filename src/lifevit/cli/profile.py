"""``lifevit profile MODEL``: parameters, MACs and throughput of a registered model."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("profile", help="parameters, MACs and train/inference throughput of a model")
    p.add_argument("model", nargs="?", help="registered model name, e.g. deit_tiny_patch4_32_life")
    p.add_argument("--img-size", type=int, default=None, help="input side in pixels (default: the model's)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default: the model's)")
    p.add_argument("--in-chans", type=int, default=None, help="input channels (default: the model's)")
    p.add_argument("--batch-size", type=int, default=64, help="batch for the throughput measurement")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--iters", type=int, default=10, help="timed steps per throughput measurement")
    p.add_argument("--no-throughput", action="store_true", help="only count parameters and MACs")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--paper-table",
        action="store_true",
        help="print #params and GMACs of the paper's cost table (DeiT-T/S, T2T-ViT-12, SwinV2-T with and without "
        "LIFE, ResNet-18/50; 100 classes) next to the paper's numbers; see docs/backbones.md",
    )
    p.set_defaults(func=run)


def run_paper_table(args: argparse.Namespace) -> int:
    from lifevit.profile import paper_cost_table

    if args.model:
        raise ValueError(f"--paper-table takes no model name, got {args.model!r}")
    rows = paper_cost_table(num_classes=args.num_classes or 100)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    print(f"{'model':<16} {'timm name':<30} {'px':>4} {'params M':>9} {'paper':>6} {'GMACs':>6} {'paper':>6}  note")
    for r in rows:
        print(
            f"{r['label']:<16} {r['model']:<30} {r['img_size']:>4} {r['params_m']:>9.2f} "
            f"{fmt(r['paper_params_m'], '.2f'):>6} {r['gmacs']:>6.2f} {fmt(r['paper_gmacs'], '.2f'):>6}  {r['note']}"
        )
    return 0


def run(args: argparse.Namespace) -> int:
    from lifevit.engine.trainer import resolve_device
    from lifevit.profile import profile_model

    if getattr(args, "paper_table", False):
        return run_paper_table(args)
    if not args.model:
        raise ValueError("a model name is required, e.g. `lifevit profile deit_tiny_patch4_32_life`")
    cost = profile_model(
        args.model,
        img_size=args.img_size,
        num_classes=args.num_classes,
        in_chans=args.in_chans,
        batch_size=args.batch_size,
        device=str(resolve_device(args.device)),
        throughput=not args.no_throughput,
        iters=args.iters,
    )
    if args.json:
        print(json.dumps(cost.as_dict(), indent=2))
        return 0
    h, w = cost.img_size
    print(f"model       {cost.model}")
    print(f"input       {cost.in_chans}x{h}x{w}, {cost.num_classes} classes")
    print(f"params      {cost.params_m:.2f} M ({cost.params:,})")
    print(f"MACs        {cost.gmacs:.3f} G per image")
    if cost.train_img_per_s is not None:
        where = "allocated" if cost.device.startswith("cuda") else "process RSS"
        mem = lambda v: f", peak {v:.0f} MiB {where}" if v is not None else ""  # noqa: E731
        print(
            f"train       {cost.train_img_per_s:.1f} img/s on {cost.device} (batch {cost.batch_size}"
            f"{mem(cost.train_peak_mem_mb)})"
        )
        print(
            f"inference   {cost.infer_img_per_s:.1f} img/s on {cost.device} (batch {cost.batch_size}"
            f"{mem(cost.infer_peak_mem_mb)})"
        )
    if cost.device == "cpu" and "life" in cost.model:
        from lifevit.layers.dwconv import native_status

        print(f"LIFE convs  {native_status()}")  # the native depthwise kernel, or why PyTorch's are used
    return 0
