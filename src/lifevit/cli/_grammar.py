"""The one command grammar of every task: ``lifevit TASK train | eval | predict``.

Every task's ``train`` takes the same flags with the same meaning::

    --config FILE       YAML run config (configs/...)
    --set a.b.c=VALUE   any config key at any depth, VALUE read as YAML (repeatable)
    --output DIR        the run folder (new or empty; a folder left before its first checkpoint is reused)
    --resume DIR        continue the run in DIR from its last checkpoint (with its config.yaml)
    --checkpoint PATH   start from the weights of a checkpoint (a run folder or a .safetensors file)
    --data-root --epochs --batch-size --lr --seed --device --threads --max-minutes --no-progress --json

and one precedence (later wins): the task's defaults < the resumed run's config.yaml < --config < the named
flags < --set. ``eval`` and ``predict`` take ``--checkpoint PATH`` (a run folder or a weights file) and read
nothing but that weights file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

__all__ = ["add_checkpoint_flag", "add_predict_flags", "add_train_parser", "run_training"]

# flag (argparse dest) -> (dotted config key, type, help); the same for every task
COMMON_TRAIN_FLAGS: Dict[str, Tuple[str, type, str]] = {
    "data_root": ("data.root", str, "folder holding the data set (data.root)"),
    "epochs": ("train.epochs", int, "training epochs (train.epochs)"),
    "batch_size": ("train.batch_size", int, "images per step and process (train.batch_size)"),
    "lr": ("train.lr", float, "peak learning rate (train.lr)"),
    "seed": ("train.seed", int, "random seed (train.seed)"),
    "device": ("train.device", str, "auto, cpu, cuda or cuda:N (train.device)"),
    "threads": ("train.threads", int, "torch CPU threads per process (train.threads)"),
    "max_minutes": ("train.max_minutes", float, "time budget in minutes of training (train.max_minutes)"),
}


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def add_train_parser(
    sub: argparse._SubParsersAction, name: str, help: str, task_flags: Dict[str, Tuple[str, type, str]]
) -> argparse.ArgumentParser:
    """A ``train`` parser with the common flags and ``task_flags`` (dest -> (config key, type, help))."""
    p = sub.add_parser(
        name,
        help=help,
        description=help + ". Precedence: defaults < --resume's config < --config < named flags < --set.",
    )
    add_config_flags(p)
    p.add_argument("--output", type=Path, help="run folder (new or empty)")
    p.add_argument("--resume", type=Path, metavar="DIR", help="continue the run in DIR from its last checkpoint")
    p.add_argument("--checkpoint", type=Path, metavar="PATH", help="start from these weights (run folder or file)")
    add_value_flags(p, {**task_flags, **COMMON_TRAIN_FLAGS})
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(_flag_keys={d: k for d, (k, _, _) in {**task_flags, **COMMON_TRAIN_FLAGS}.items()})
    return p


def add_set_flag(p: argparse.ArgumentParser, example: str = "train.weight_decay=0.05") -> None:
    """``--set KEY=VALUE`` (repeatable), collected in ``args.overrides``."""
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"any config value at any depth, read as YAML, e.g. --set {example} (repeatable)",
    )


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """``--config FILE`` and ``--set KEY=VALUE`` (repeatable)."""
    p.add_argument("--config", type=Path, help="YAML run config (configs/...)")
    add_set_flag(p)


def add_value_flags(p: argparse.ArgumentParser, flags: Dict[str, Tuple[str, type, str]]) -> None:
    """The named flags of ``flags`` (dest -> (config key, type, help)) and ``--no-progress``."""
    for dest, (_key, tp, text) in flags.items():
        p.add_argument(_flag(dest), dest=dest, type=tp, help=text)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (train.progress=false)")


def add_checkpoint_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint", type=Path, required=True, metavar="PATH", help="a run folder or a .safetensors weights file"
    )


def add_predict_flags(p: argparse.ArgumentParser, output_help: str) -> None:
    add_checkpoint_flag(p)
    p.add_argument("--images", nargs="+", required=True, help="image files and/or folders of images")
    p.add_argument("--output", type=Path, required=True, help=output_help)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def config_from_args(config_cls: type, args: argparse.Namespace):
    """The run config: defaults < resumed config.yaml < --config < flags < --set."""
    from lifevit.config import build_config, load_yaml

    base = None
    if args.resume is not None:
        saved = Path(args.resume) / "config.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"cannot resume: {saved} not found (is {args.resume} a lifevit run folder?)")
        base = load_yaml(saved)
    flags = {key: getattr(args, dest) for dest, key in args._flag_keys.items() if getattr(args, dest) is not None}
    if args.no_progress:
        flags["train.progress"] = False
    return build_config(config_cls, args.config, args.overrides, base=base, flags=flags)


def run_training(
    args: argparse.Namespace,
    config_cls: type,
    task_cls: Callable[[Any], Any],
    command: str,
    describe: Callable[[Dict[str, Any], Path], str],
    default_output: Optional[Callable[[Any], Path]] = None,
) -> int:
    """Build the config, train it with the engine, print the summary; the same for every task."""
    from lifevit.engine import NonFiniteLossError, TrainingInterrupted, fit
    from lifevit.engine.distributed import cleanup_distributed, is_main

    if args.resume is not None and args.output is not None and Path(args.output).resolve() != args.resume.resolve():
        raise ValueError(f"--resume {args.resume} continues in place; leave out --output {args.output}")
    cfg = config_from_args(config_cls, args)
    output = args.resume or args.output or (default_output(cfg) if default_output else None)
    if output is None:
        raise ValueError(f"lifevit {command} needs --output RUN_DIR (a new folder) or --resume RUN_DIR")
    try:
        summary = fit(task_cls(cfg), output, resume=args.resume is not None, init_checkpoint=args.checkpoint)
        main = is_main()
    except NonFiniteLossError as err:
        print(f"lifevit {command}: stopped: {err}", file=sys.stderr)
        return 1
    except TrainingInterrupted as err:
        if is_main():
            if err.resumable:
                print(
                    f"lifevit {command}: interrupted at epoch {err.epoch}; resume with: lifevit {command} "
                    f"--resume {output}",
                    file=sys.stderr,
                )
            else:
                print(
                    f"lifevit {command}: interrupted at epoch {err.epoch}, before the first checkpoint; run the "
                    "same command again to start over in the same folder",
                    file=sys.stderr,
                )
        return 130
    finally:
        cleanup_distributed()
    if not main:
        return 0
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(describe(summary, Path(output)))
    return 0
