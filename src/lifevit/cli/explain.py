"""``lifevit explain --checkpoint PATH --images ...``: roll-out, Dense Attention Roll-Out and baseline overlays."""

from __future__ import annotations

import argparse

# the same names as lifevit.explain.api.METHODS (spelled out: this module must not import torch)
METHODS = ("rollout", "dense-rollout", "chefer", "gradcam", "random")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "explain",
        help="attention roll-out / Dense Attention Roll-Out overlays for image files",
        description="Writes one PNG per input: the image and its maps side by side (see docs/explain.md).",
    )
    p.add_argument("--checkpoint", required=True, help="lifevit checkpoint (.safetensors or run folder)")
    p.add_argument("--images", nargs="+", required=True, help="image files or folders of images")
    p.add_argument("--output", default="explain", help="folder for the PNGs (and maps.npz, explain.json)")
    p.add_argument(
        "--method",
        choices=METHODS,
        default="rollout",
        help="rollout: class-token roll-out; dense-rollout: Dense Attention Roll-Out (segmentation / detection); "
        "chefer: gradient-weighted attention relevance (Chefer et al. 2021); gradcam: Grad-CAM on the last block's "
        "tokens; random: random token scores",
    )
    p.add_argument(
        "--class",
        dest="class_names",
        action="append",
        metavar="NAME",
        help="class to map (repeatable; default: the classes the model predicts; not with rollout)",
    )
    p.add_argument("--head-fusion", choices=("mean", "max", "min"), default="mean", help="fusion over heads")
    p.add_argument("--discard-ratio", type=float, default=0.0, help="lowest attentions discarded per row, in [0, 1)")
    p.add_argument("--score-threshold", type=float, default=0.3, help="detection: box score defining the tokens")
    p.add_argument("--save-arrays", action="store_true", help="also write the maps as maps.npz")
    p.add_argument("--seed", type=int, default=0, help="random: seed of the maps")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from lifevit.explain.files import ExplainConfig, explain_files

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = ExplainConfig(
        checkpoint=args.checkpoint,
        images=args.images,
        output=args.output,
        method=args.method,
        class_names=args.class_names,
        head_fusion=args.head_fusion,
        discard_ratio=args.discard_ratio,
        score_threshold=args.score_threshold,
        save_arrays=args.save_arrays,
        device=device,
        seed=args.seed,
    )
    summary = explain_files(cfg)
    for entry in summary["images"]:
        extra = entry.get("prediction") or ", ".join(entry.get("classes", [])) or "no predicted class"
        print(f"{entry['image']} -> {entry['output']} ({extra})")
    return 0
