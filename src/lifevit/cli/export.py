"""``lifevit export RUN_DIR --output DIR``: a trained run as a Hugging Face Hub-ready timm folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a run as a timm folder (config.json, model.safetensors, README.md) loadable with "
        "timm.create_model('local-dir:DIR') or, once pushed, 'hf-hub:USER/REPO'",
    )
    p.add_argument("run", type=Path, help="a run folder or a .safetensors checkpoint written by lifevit")
    p.add_argument("--output", type=Path, required=True, help="folder to write (must be new or empty)")
    p.add_argument("--ema", action="store_true", help="export the EMA weights")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx (checked in onnxruntime if installed)")
    p.add_argument(
        "--push-to-hub",
        metavar="REPO_ID",
        help="upload the folder to this Hugging Face Hub repository (USER/REPO; log in with huggingface-cli login "
        "or set HF_TOKEN)",
    )
    p.add_argument("--private", action="store_true", help="create the Hub repository as private")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lifevit.hub import export_run, push_to_hub

    if args.push_to_hub is not None and args.push_to_hub.count("/") != 1:
        raise ValueError(f"--push-to-hub takes USER/REPO, got {args.push_to_hub!r}")
    result = export_run(args.run, args.output, use_ema=args.ema, onnx=args.onnx, repo_id=args.push_to_hub)
    print(f"wrote {result['output']}: {', '.join(result['files'])} ({result['model']}, {result['weights']} weights)")
    print(
        f"timm.create_model('local-dir:{result['output']}', pretrained=True) reproduces the run's outputs "
        f"(max abs difference {result['max_abs_diff']:.2g})"
    )
    if args.onnx:
        checked = "checked in onnxruntime" if result["onnx_checked"] else "not checked (onnxruntime not installed)"
        print(f"ONNX: {result['onnx']} ({checked})")
    if args.push_to_hub:
        url = push_to_hub(result["output"], args.push_to_hub, private=args.private)
        print(f"pushed to https://huggingface.co/{args.push_to_hub} ({url})")
        print(f"load it with: import lifevit, timm; timm.create_model('hf-hub:{args.push_to_hub}', pretrained=True)")
    return 0
