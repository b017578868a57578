"""Detection benchmark on the Fashion-MNIST canvas set: backbone x head -> mAP@0.5, COCO mAP, F1, params, GMACs.

Every row trains the base config (``configs/detection/canvas_vitlite_life_encdec_life.yaml`` unless ``--config``)
with the row's backbone and head, evaluates on the canvas ``val`` split through the real VOC loader, and counts
parameters and multiply-accumulates of one 96x96 forward pass (``lifevit.profile.count_macs``). Results go to
``OUT/results.json`` and a Markdown table ``OUT/table.md``; ``--docs docs/detection.md`` also replaces the text
between ``<!-- detection-benchmark:start -->`` and ``<!-- detection-benchmark:end -->`` there.

Example (make the data first with ``lifevit data canvas --output data/canvas``)::

    python benchmarks/detection.py --data data/canvas --out runs/bench_det --epochs 10 --docs docs/detection.md
    python benchmarks/detection.py --data data/canvas --out runs/bench_cost --cost-only   # params / GMACs only
    # paper-size models at 512 px (params / GMACs only):
    python benchmarks/detection.py --config configs/detection/voc_deit_t_encdec_random.yaml --data data/voc \
        --out runs/bench_voc_cost --cost-only --backbones deit_tiny_patch16_224 deit_tiny_patch16_224_life \
        swinv2_tiny_window8_256 swinv2_tiny_window8_256_life

Timing note: ``train_cpu_seconds`` is the process CPU time over all threads; on an otherwise idle machine the
wall time of a run with T threads is about ``train_cpu_seconds / T``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any, Dict, List

import torch
import yaml

from lifevit.engine import fit
from lifevit.profile import count_macs, count_params
from lifevit.tasks.detection.config import class_names, config_from_dict
from lifevit.tasks.detection.model import build_detector
from lifevit.tasks.detection.task import DetectionTask

ROOT = Path(__file__).resolve().parents[1]
BACKBONES = {
    "DeiT-T-style (vit_lite d4)": "vit_lite_patch4_28",
    "DeiT-T-LIFE-style (vit_lite_life d4)": "vit_lite_patch4_28_life",
}
HEADS = {"EncDec": "encdec", "EncDec-Linear": "encdec_linear", "EncDec-LIFE": "encdec_life"}
START, END = "<!-- detection-benchmark:start -->", "<!-- detection-benchmark:end -->"


def table(rows: List[Dict[str, Any]]) -> str:
    lines = [
        "| backbone | head | VOC mAP@0.5 | COCO mAP | F1 (IoU 0.5, score >= 0.3) | params (M) | GMACs | epochs "
        "| CPU min |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for r in rows:
        cpu = r.get("train_cpu_seconds")
        lines.append(
            f"| {r['backbone_label']} | {r['head_label']} | {fmt(r.get('map_50'))} | {fmt(r.get('map'))} | "
            f"{fmt(r.get('f1'))} | {r['params'] / 1e6:.3f} | {r['gmacs']:.4f} | {r.get('epochs', '-')} | "
            f"{'-' if cpu is None else f'{cpu / 60:.1f}'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs/detection/canvas_vitlite_life_encdec_life.yaml"))
    p.add_argument("--data", required=True, help="canvas root (holding VOCdevkit)")
    p.add_argument("--out", required=True, help="folder for the runs and results")
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    p.add_argument("--eval-every", type=int, default=5, help="evaluate every N epochs (and after the last)")
    p.add_argument("--backbones", nargs="*", default=list(BACKBONES.values()))
    p.add_argument("--heads", nargs="*", default=list(HEADS.values()))
    p.add_argument("--cost-only", action="store_true", help="only parameters and GMACs, no training")
    p.add_argument("--docs", help="Markdown file whose benchmark section is replaced by the table")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    base = yaml.safe_load(Path(args.config).read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    rows: List[Dict[str, Any]] = json.loads(results_path.read_text()) if results_path.is_file() else []
    done = {(r["backbone"], r["head"]) for r in rows if r.get("map_50") is not None or args.cost_only}
    for bb in args.backbones:
        for head in args.heads:
            if (bb, head) in done:
                continue
            values = json.loads(json.dumps(base))
            values.pop("name", None)
            values["data"]["root"] = args.data
            values["model"].update(backbone=bb, head=head)
            values["train"]["threads"] = args.threads
            values["train"]["max_minutes"] = 0
            values["train"]["eval_interval"] = args.eval_every
            values["train"]["progress"] = sys.stderr.isatty()
            if args.epochs:
                values["train"]["epochs"] = args.epochs
            cfg = config_from_dict(values)
            torch.set_num_threads(args.threads)
            model = build_detector(cfg.model, len(class_names(cfg.data.classes)), img_size=cfg.data.img_size)
            row: Dict[str, Any] = {
                "backbone": bb,
                "head": head,
                "backbone_label": next((k for k, v in BACKBONES.items() if v == bb), bb),
                "head_label": next((k for k, v in HEADS.items() if v == head), head),
                "params": count_params(model),
                "gmacs": count_macs(model, (3, cfg.data.img_size, cfg.data.img_size)) / 1e9,
                "img_size": cfg.data.img_size,
            }
            if not args.cost_only:
                summary = fit(DetectionTask(cfg), out / f"{bb}+{head}")
                row.update({k: summary.get(k) for k in ("map_50", "map", "f1", "precision", "recall")})
                row.update(
                    epochs=summary["epochs"],
                    train_cpu_seconds=summary["train_cpu_seconds"],
                    train_seconds=summary["train_seconds"],
                )
            rows = [r for r in rows if (r["backbone"], r["head"]) != (bb, head)] + [row]
            results_path.write_text(json.dumps(rows, indent=2))
            print(table(rows), flush=True)
    md = table(rows)
    (out / "table.md").write_text(md)
    if args.docs:
        doc = Path(args.docs)
        text = doc.read_text()
        if START not in text or END not in text:
            raise SystemExit(f"{doc} has no {START} ... {END} section to replace")
        doc.write_text(re.sub(f"{re.escape(START)}.*?{re.escape(END)}", f"{START}\n{md}{END}", text, flags=re.S))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
