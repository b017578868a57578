"""``lifevit release CHECKPOINT``: read a NeurAI-Lab/LIFE checkpoint into the matching lifevit model."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "release",
        help="map a checkpoint of the reference release (NeurAI-Lab/LIFE, DeiT *_ms / SwinV2 *_ms) onto lifevit",
    )
    p.add_argument("checkpoint", help="file written by the release (torch.save; its 'model' entry is used)")
    p.add_argument("--model", default=None, help="release or lifevit model name (default: the checkpoint's args)")
    p.add_argument(
        "--lifevit-class-token-keys",
        action="store_true",
        help="give the class token lifevit's keys [k1 k2 k3] instead of the release's [k1 k1 k1] (outputs change)",
    )
    p.add_argument("--output", required=True, help="folder for the lifevit checkpoint (last.safetensors)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lifevit.engine.checkpoint import save_checkpoint
    from lifevit.layers import RELEASE_OPTIONS, life_layers
    from lifevit.profile import count_params
    from lifevit.release import RELEASE_MODELS, load_release_checkpoint

    model = load_release_checkpoint(
        args.checkpoint, args.model, release_class_token_keys=not args.lifevit_class_token_keys
    )
    name = RELEASE_MODELS.get(args.model, args.model) if args.model else model.pretrained_cfg.get("architecture")
    life = next(life_layers(model))
    options = dict(RELEASE_OPTIONS, prefix_keys_from_scale1=life.prefix_keys_from_scale1)
    meta = {
        "task": "classification",
        "model": name,
        "model_kwargs": {"num_classes": model.num_classes, "life_options": options},
        "source": f"NeurAI-Lab/LIFE checkpoint {args.checkpoint}",
    }
    path = save_checkpoint(args.output, model=model, meta=meta, epoch=0)
    print(f"{name}: {count_params(model) / 1e6:.3f} M parameters, LIFE options {options}; wrote {path}")
    return 0
