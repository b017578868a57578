"""Segmentation benchmark: the same recipe with and without LIFE, and the cost of the paper's Cityscapes models.

Two parts, each written as JSON and printed as Markdown tables (copied into ``docs/segmentation.md``):

1. ``cost``: parameters and GMACs (``lifevit.profile.count_macs``: every conv incl. depthwise, every linear and
   the attention matmuls; one image) of DeiT-T / DeiT-T-LIFE segmenters with both decoders, at 512 x 512 (the
   resolution the paper's numbers imply, see the docs) and 768 x 768, next to the paper's 10.13 M / 10.50 and
   10.21 M / 10.58.
2. ``canvas``: trains the canvas config (``configs/segmentation/canvas_vit_lite_life.yaml``) and the same config
   with the plain backbone (``vit_lite_patch4_28``) on the Fashion-MNIST canvas set, one after the other, each as
   ``lifevit segment train`` under ``torchrun`` (``--nproc`` processes of ``--threads`` threads, as the config
   is made for), and records mIoU (and its curve), per-class IoU, params, GMACs at 96 x 96 (the model's input
   size; one forward pass, not counting the test-time augmentation), wall time, CPU time
   of the process tree and peak memory (resident set of the largest process). The canvas set is generated first
   when ``--data`` has none.

Usage::

    python benchmarks/segmentation.py --data data/canvas --output runs/bench_segmentation [--nproc 2 --threads 1]
    python benchmarks/segmentation.py --only cost
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import yaml

from lifevit.profile import count_macs, count_params
from lifevit.runtime import keep_freed_memory
from lifevit.tasks.segmentation import ModelConfig, build_segmenter, config_from_dict

ROOT = Path(__file__).resolve().parents[1]
CANVAS_CONFIG = ROOT / "configs" / "segmentation" / "canvas_vit_lite_life.yaml"
PAPER = {"deit_tiny_patch16_224": (10.13, 10.50), "deit_tiny_patch16_224_life": (10.21, 10.58)}

logger = logging.getLogger("benchmarks.segmentation")


def cost_table(sizes=(512, 768)) -> List[Dict[str, Any]]:
    rows = []
    for backbone, (paper_params, paper_gmacs) in PAPER.items():
        for decoder in ("linear", "mask_transformer"):
            for size in sizes:
                model = build_segmenter(ModelConfig(backbone=backbone, decoder=decoder, num_classes=19, img_size=size))
                rows.append(
                    dict(
                        backbone=backbone,
                        decoder=decoder,
                        input=f"{size}x{size}",
                        params_m=round(count_params(model) / 1e6, 3),
                        gmacs=round(count_macs(model, (3, size, size)) / 1e9, 3),
                        paper_params_m=paper_params,
                        paper_gmacs=paper_gmacs,
                    )
                )
                logger.info("%s", rows[-1])
    return rows


_MEASURE = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.run(sys.argv[1:]).returncode
u = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps(dict(rc=rc, wall_s=time.perf_counter() - t, cpu_s=u.ru_utime + u.ru_stime, max_rss_kb=u.ru_maxrss)))
"""


def _run_measured(cmd: List[str], env: Dict[str, str]) -> Dict[str, Any]:
    """Run ``cmd`` in a fresh child that reports the wall time, the CPU time of the whole process tree and the
    peak resident memory of its largest process (``ru_maxrss`` of the child's children)."""
    proc = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], env=env, stdout=subprocess.PIPE, text=True)
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    if stats["rc"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {stats['rc']}")
    return stats


def canvas_runs(
    data: Path,
    output: Path,
    nproc: int,
    threads: int,
    epochs: int | None,
    backbones: List[str],
    overrides: List[str],
) -> List[Dict[str, Any]]:
    cs = data / "cityscapes"
    if not (cs / "canvas_classes.json").is_file():
        from lifevit.data.canvas import make_canvas_dataset

        logger.info("generating the canvas set in %s", data)
        make_canvas_dataset(data, num_train=2000, num_val=500, seed=0)
    rows = []
    for backbone in backbones:
        run_dir = output / backbone
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
        cmd += ["-m", "lifevit", "segment", "train", "--config", str(CANVAS_CONFIG), "--output", str(run_dir)]
        cmd += ["--backbone", backbone, "--data-root", str(cs), "--label-table", str(cs / "canvas_classes.json")]
        cmd += ["--threads", str(threads)]
        if epochs:
            cmd += ["--epochs", str(epochs)]
        for item in overrides:
            cmd += ["--set", item]
        logger.info("%s", " ".join(cmd))
        measured = _run_measured(cmd, dict(os.environ, OMP_NUM_THREADS=str(threads)))
        summary = json.loads((run_dir / "summary.json").read_text())
        used = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))  # with the --set overrides
        model = build_segmenter(used.model)
        params, gmacs = count_params(model), count_macs(model, (3, *used.model.img_size)) / 1e9
        del model
        history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        rows.append(
            dict(
                backbone=backbone,
                decoder=summary["decoder"],
                epochs=summary["epochs"],
                processes=nproc,
                threads=threads,
                train_crop=list(used.data.crop_size),
                test_scales=list(used.inference.scales),
                test_flip=used.inference.flip,
                mIoU=round(summary["mIoU"], 4),
                best_mIoU=round(summary["best_score"], 4),  # summary["score_key"] is mIoU
                pixel_acc=round(summary["pixel_acc"], 4),
                params_m=round(params / 1e6, 3),
                gmacs=round(gmacs, 4),
                wall_s=round(measured["wall_s"], 1),
                cpu_s=round(measured["cpu_s"], 1),
                peak_rss_mb=round(measured["max_rss_kb"] / 1024, 1),
                curve=[(r["epoch"], round(r["eval_mIoU"], 4)) for r in history if "eval_mIoU" in r],
                per_class_iou={k: round(v, 4) for k, v in summary["per_class_iou"].items()},
            )
        )
        logger.info("%s", rows[-1])
    return rows


def _markdown(rows: List[Dict[str, Any]], keys: List[str]) -> str:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/canvas", help="canvas set folder (generated when missing)")
    p.add_argument("--output", default="runs/bench_segmentation", help="folder for the runs and results.json")
    p.add_argument("--only", choices=("cost", "canvas"), help="run one part only")
    p.add_argument("--nproc", type=int, default=2, help="training processes (torchrun, gloo on CPU); the config's: 2")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per process (the config's: 1)")
    p.add_argument(
        "--backbone",
        action="append",
        choices=("vit_lite_patch4_28_life", "vit_lite_patch4_28"),
        help="train only this backbone (repeatable; default both, one after the other)",
    )
    p.add_argument("--epochs", type=int, default=None, help="override the canvas config's epochs")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="any other override")
    args = p.parse_args()
    keep_freed_memory()  # as the lifevit command does, so times match `lifevit segment train`
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    results: Dict[str, Any] = {}
    if args.only in (None, "cost"):
        results["cost"] = cost_table()
        print(
            _markdown(
                results["cost"], ["backbone", "decoder", "input", "params_m", "gmacs", "paper_params_m", "paper_gmacs"]
            )
        )
    if args.only in (None, "canvas"):
        results["canvas"] = canvas_runs(
            Path(args.data),
            output,
            args.nproc,
            args.threads,
            args.epochs,
            args.backbone or ["vit_lite_patch4_28_life", "vit_lite_patch4_28"],
            args.set,
        )
        print(
            _markdown(
                results["canvas"],
                [
                    "backbone",
                    "decoder",
                    "epochs",
                    "processes",
                    "threads",
                    "mIoU",
                    "best_mIoU",
                    "pixel_acc",
                    "params_m",
                    "gmacs",
                    "wall_s",
                    "cpu_s",
                    "peak_rss_mb",
                ],
            )
        )
    name = "results.json" if not args.backbone else f"results_{'_'.join(args.backbone)}.json"
    (output / name).write_text(json.dumps(results, indent=2))
    print(f"results: {output / name}")


if __name__ == "__main__":
    main()
