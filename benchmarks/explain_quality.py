"""Explanation quality the way the field measures it: Dense Attention Roll-Out against the best baselines.

Methods (``lifevit.explain.explain(model, images, method=...)``, definitions in ``docs/explain.md``):
``rollout`` (class-token roll-out; the patch-row mean for models without a class token), ``dense-rollout``
(dense tasks only), ``chefer`` (gradient-weighted attention relevance, Chefer et al. 2021), ``gradcam`` (Grad-CAM on
the last block's tokens) and ``random``.

Tasks:

(a) Fashion-MNIST classifiers (``vit_lite_patch4_28`` and ``vit_lite_patch4_28_life``, 7 x 7 token grid):
    positive / negative perturbation AUC (remove the most / least relevant tokens first, 0-90 % in 10 % steps,
    accuracy in %, trapezoid rule) and deletion / insertion AUC (probability of the predicted class), all on the map
    of the predicted class.
(b) Canvas segmentation (ViT-lite + linear decoder) and detection (ViT-lite + encoder-decoder head) models: for
    every (image, class present in the ground truth) pair, the class map's pixel AP and IoU against the class mask
    (map thresholded at its mean) and the pointing game (peak pixel on the class).

Each task trains a plain and a LIFE model through the ``lifevit`` command line and keeps a snapshot of the weights
after every epoch; the two are compared *at matched accuracy*: the plain model's last epoch against the LIFE epoch
whose validation score (on the images explained here) is closest to it.

    python benchmarks/explain_quality.py                          # train everything, evaluate, write the report
    python benchmarks/explain_quality.py --stage train            # only train (snapshots in --work-dir)
    python benchmarks/explain_quality.py --tasks classification --plain RUN_OR_CKPT --life RUN_OR_CKPT

``--plain`` / ``--life`` give existing checkpoints (a ``.safetensors`` file or a run folder) for one task instead of
training. Results: ``--output/results.{json,md}`` and one figure per task (``--output/figure_<task>.png``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "explain_quality"
WORK = ROOT / "runs" / "explain_quality"  # data, training runs and snapshots (git-ignored)
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
TASKS = ("classification", "segmentation", "detection")
BACKBONES = {"plain": "vit_lite_patch4_28", "life": "vit_lite_patch4_28_life"}

_logger = logging.getLogger("explain_quality")


# ------------------------------------------------------------------------------------------------- training
def _lifevit() -> List[str]:
    return [sys.executable, "-m", "lifevit"]


def _train_command(task: str, variant: str, run: Path, args: argparse.Namespace) -> List[str]:
    backbone = BACKBONES[variant]
    configs = Path(args.lifevit_src).parent / "configs" if args.lifevit_src else ROOT / "configs"
    if task == "classification":
        return _lifevit() + [
            "train", "--model", backbone, "--dataset", "fashion_mnist", "--data-root", str(args.fashion_mnist),
            "--train-samples", str(args.cls_train_samples), "--epochs", str(args.cls_epochs),
            "--threads", str(args.threads), "--device", "cpu", "--seed", str(args.seed), "--no-progress",
            "--set", f"train.eval_interval={args.cls_epochs}", "--output", str(run),
        ]  # fmt: skip
    data = canvas_root(args)
    if task == "segmentation":
        return _lifevit() + [
            "segment", "train", "--config", str(configs / "segmentation/canvas_vit_lite_life.yaml"),
            "--data-root", str(data / "cityscapes"), "--label-table", str(data / "cityscapes/canvas_classes.json"),
            "--backbone", backbone, "--epochs", str(args.seg_epochs), "--batch-size", "8",
            "--threads", str(args.threads), "--device", "cpu", "--output", str(run),
            "--no-progress", "--set", f"train.eval_interval={args.seg_epochs}", "--set", "inference.flip=false",
            "--set", "inference.scales=[1.0]", "--set", "train.warmup_epochs=0.2",
        ]  # fmt: skip
    head = "encdec_life" if variant == "life" else "encdec"
    return _lifevit() + [
        "detect", "train", "--config", str(configs / "detection/canvas_vitlite_life_encdec_life.yaml"),
        "--data-root", str(data), "--epochs", str(args.det_epochs), "--device", "cpu", "--no-progress",
        "--output", str(run), "--set", f"model.backbone={backbone}", "--set", f"model.head={head}",
        "--set", f"train.threads={args.threads}", "--set", f"train.eval_interval={args.det_epochs}",
    ]  # fmt: skip


def _stable(path: Path, wait: float = 1.0) -> bool:
    """True when ``path`` exists and its size and mtime did not change for ``wait`` seconds."""
    try:
        before = path.stat()
        time.sleep(wait)
        after = path.stat()
    except FileNotFoundError:
        return False
    return (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns)


def train_with_snapshots(task: str, variant: str, args: argparse.Namespace) -> Path:
    """Run the training command of (task, variant) and copy its ``last`` checkpoint after every epoch.

    Returns the snapshot folder ``<work-dir>/<task>/<variant>/snapshots`` (``epoch_XXX.safetensors``, in order).
    A finished run (``done`` marker) is reused.
    """
    base = args.work_dir / task / variant
    snaps = base / "snapshots"
    run = base / "run"
    cmd = _train_command(task, variant, run, args)
    done = base / "done.json"
    if done.is_file() and json.loads(done.read_text()).get("command") == cmd:
        _logger.info("reusing %s", base)
        return snaps
    if base.exists():  # unfinished, or made by another command (other epochs, data, package)
        shutil.rmtree(base)
    snaps.mkdir(parents=True)
    _logger.info("%s %s: %s", task, variant, " ".join(cmd))
    log = open(base / "train.log", "w")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    if args.lifevit_src:  # train with another copy of the package (e.g. a release while the tree is being edited)
        env["PYTHONPATH"] = os.pathsep.join([str(args.lifevit_src), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.Popen(["nice", "-n", "10", *cmd], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    seen, count = None, 0

    def poll() -> None:
        nonlocal seen, count
        found = sorted(run.rglob("last.safetensors")) if run.exists() else []
        if not found:
            return
        ckpt = found[0]
        stamp = ckpt.stat().st_mtime_ns
        if stamp != seen and _stable(ckpt):
            seen, count = ckpt.stat().st_mtime_ns, count + 1
            shutil.copy2(ckpt, snaps / f"epoch_{count:03d}.safetensors")

    while proc.poll() is None:
        poll()
        time.sleep(2.0)
    poll()
    log.close()
    if proc.returncode != 0:
        raise RuntimeError(f"training {task}/{variant} failed (exit {proc.returncode}); see {base / 'train.log'}")
    done.write_text(json.dumps({"command": cmd, "snapshots": count}) + "\n")
    return snaps


def canvas_root(args: argparse.Namespace) -> Path:
    """The canvas set of these counts and seed (a folder per setting, so a changed default never reuses another)."""
    return args.work_dir / f"canvas_{args.canvas_train}_{args.canvas_val}_s{args.seed}"


def make_canvas(args: argparse.Namespace) -> Path:
    root = canvas_root(args)
    if not (root / "cityscapes" / "canvas_classes.json").is_file():
        subprocess.run(
            _lifevit() + ["data", "canvas", "--output", str(root), "--num-train", str(args.canvas_train),
                          "--num-val", str(args.canvas_val), "--seed", str(args.seed),
                          "--fashion-mnist-root", str(args.fashion_mnist)],
            check=True,
        )  # fmt: skip
    return root


# ------------------------------------------------------------------------------------------------- data
def fashion_mnist_pngs(args: argparse.Namespace) -> Path:
    """The first ``--cls-eval`` Fashion-MNIST test images as PNG files (read back by the checkpoint's preprocessing)."""
    import gzip

    import numpy as np
    from PIL import Image

    out = args.work_dir / f"fashion_mnist_test_{args.cls_eval}"
    labels_file = out / "labels.json"
    if labels_file.is_file():
        return out
    with gzip.open(args.fashion_mnist / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(args.fashion_mnist / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(args.cls_eval):
        Image.fromarray(images[i]).save(out / f"{i:05d}.png")
    labels_file.write_text(json.dumps([int(v) for v in labels[: args.cls_eval]]))
    return out


def load_canvas_val(root: Path) -> List[Dict[str, object]]:
    """Validation canvases: image path, label map (0 = background, c + 1 = class c) and the VOC boxes."""
    import xml.etree.ElementTree as ET

    import numpy as np
    from PIL import Image

    names = json.loads((root / "canvas.json").read_text())["classes"] if (root / "canvas.json").is_file() else None
    images = sorted((root / "cityscapes" / "leftImg8bit" / "val" / "canvas").glob("*_leftImg8bit.png"))
    if not images:
        raise FileNotFoundError(f"no validation canvases under {root}/cityscapes/leftImg8bit/val/canvas")
    out = []
    for path in images:
        label_path = Path(str(path).replace("leftImg8bit", "gtFine").replace("gtFine.png", "gtFine_labelIds.png"))
        image_id = path.name.split("_")[2]
        boxes, labels = [], []
        xml = root / "VOCdevkit" / "VOC2007" / "Annotations" / f"{image_id}.xml"
        if xml.is_file() and names:
            for obj in ET.parse(xml).getroot().iter("object"):
                bb = obj.find("bndbox")
                boxes.append([float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")])
                labels.append(names.index(obj.find("name").text))
        out.append({"path": path, "labels": np.asarray(Image.open(label_path)), "boxes": boxes, "box_labels": labels})
    return out


# ------------------------------------------------------------------------------------------------- scoring
def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def model_score(task: str, loaded, batch: Dict[str, object]) -> float:
    """Validation score of a model: accuracy (classification), mIoU (segmentation), mAP@0.5 (detection)."""
    import numpy as np
    import torch

    x = batch["x"]
    with torch.no_grad():
        if task == "classification":
            pred = torch.cat([loaded.model(x[s]).argmax(-1) for s in _batches(len(x), 100)])
            return float((pred == batch["y"]).float().mean())
        if task == "segmentation":
            pred = torch.cat([loaded.model(x[s])["logits"].argmax(1) for s in _batches(len(x), 50)]).numpy()
            gt = np.stack([v["labels"] for v in batch["val"]])
            K = len(loaded.class_names)
            conf = np.bincount(gt.reshape(-1) * K + pred.reshape(-1), minlength=K * K).reshape(K, K)
            inter, union = np.diag(conf), conf.sum(0) + conf.sum(1) - np.diag(conf)
            return float(np.mean(inter[union > 0] / union[union > 0]))
        from lifevit.tasks.detection import PostProcess
        from lifevit.tasks.detection.metrics import DetectionEvaluator

        evaluator = DetectionEvaluator()
        for s in _batches(len(x), 50):
            out = loaded.model(x[s])
            sizes = torch.tensor([x.shape[-2:]] * (s.stop - s.start))
            preds = PostProcess(num_select=100)(out, sizes)
            targets = [
                {"boxes": torch.tensor(v["boxes"]).reshape(-1, 4), "labels": torch.tensor(v["box_labels"]).long()}
                for v in batch["val"][s]
            ]
            evaluator.update(preds, targets)
        return float(evaluator.compute()["map_50"])


def methods_for(task: str) -> List[str]:
    base = ["rollout", "chefer", "gradcam", "random"]
    return base if task == "classification" else ["rollout", "dense-rollout"] + base[1:]


def method_maps(task: str, loaded, batch, method: str, head_fusion: str) -> Dict[str, object]:
    """Maps of one method for the whole batch (token maps and image-size maps, numpy)."""
    import numpy as np

    from lifevit.explain import explain

    x = batch["x"]
    tok, img, classes = [], [], None
    options = {}
    size = 50
    if task != "classification":  # only the classes of the ground truth are scored: one batch, those classes
        offset = 0 if task == "segmentation" else 1
        present = sorted({int(c) - offset for v in batch["val"] for c in np.unique(v["labels"]) if c != 0})
        options["classes"], size = present, len(x)
    for s in _batches(len(x), size):
        res = explain(loaded.model, x[s], method, head_fusion=head_fusion, seed=s.start, **options)
        tok.append(res.token_maps)
        img.append(res.maps)
        classes = res.classes
    return {"token_maps": np.concatenate(tok), "maps": np.concatenate(img), "classes": classes}


def classification_metrics(loaded, batch, maps: Dict[str, object]) -> Dict[str, float]:
    import torch

    from lifevit.explain.metrics import deletion_insertion, perturbation_test

    x, y = batch["x"], batch["y"]
    tm = torch.from_numpy(maps["token_maps"][:, 0]).float()

    @torch.no_grad()
    def logits(im):
        return torch.cat([loaded.model(im[s]) for s in _batches(len(im), 250)])

    with torch.no_grad():
        explained = logits(x).argmax(-1)
    pert = perturbation_test(logits, x, y, tm)

    @torch.no_grad()
    def prob(im):
        return logits(im).softmax(-1).gather(1, explained[:, None])[:, 0]

    di = deletion_insertion(prob, x, tm)
    return {
        "positive_auc": pert["positive_auc"],
        "negative_auc": pert["negative_auc"],
        "deletion_auc": di["deletion_auc"],
        "insertion_auc": di["insertion_auc"],
        "clean_accuracy": pert["positive"][0],
    }


def dense_metrics(task: str, batch, maps: Dict[str, object]) -> Dict[str, float]:
    """Mean pixel AP, IoU and pointing-game hit rate over the (image, class in the ground truth) pairs."""
    import numpy as np

    from lifevit.explain.metrics import mask_ap, mask_iou, pointing_game

    offset = 0 if task == "segmentation" else 1  # detection class c is label id c + 1
    ap, iou, hits = [], [], []
    for b, item in enumerate(batch["val"]):
        labels = item["labels"]
        for c in np.unique(labels):
            if c == 0:
                continue
            k = 0 if maps["classes"] == [-1] else maps["classes"].index(int(c) - offset)
            m = maps["maps"][b, k][: labels.shape[0], : labels.shape[1]]
            mask = labels == c
            ap.append(mask_ap(m, mask))
            iou.append(mask_iou(m, mask))
            hits.append(pointing_game(m, mask))
    return {"mask_ap": float(np.mean(ap)), "mask_iou": float(np.mean(iou)), "pointing": float(np.mean(hits)),
            "pairs": len(ap)}  # fmt: skip


# ------------------------------------------------------------------------------------------------- figures
def save_figure(task: str, batch, rows: Dict[str, Dict[str, object]], out: Path, n_images: int) -> Path:
    """One figure: for each variant and image a row, the input then every method's map of the same class."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from lifevit.explain.overlay import normalize_map

    variants = list(rows)
    methods = list(next(iter(rows.values()))["maps"])
    n = min(n_images, len(batch["pixels"]))
    fig = Figure(figsize=(1.9 * (len(methods) + 1), 1.9 * n * len(variants) + 0.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(n * len(variants), len(methods) + 1, squeeze=False)
    offset = 0 if task == "segmentation" else 1
    names = batch["class_names"]
    for v, variant in enumerate(variants):
        for i in range(n):
            r = v * n + i
            px = batch["pixels"][i].astype(np.float32) / 255.0
            grey = dict(cmap="gray", vmin=0, vmax=1) if px.ndim == 2 else {}
            if task == "classification":
                label, title = None, f"{variant}\n{names[int(batch['y'][i])]}"
            else:
                labels = batch["val"][i]["labels"]
                present = [int(c) for c in np.unique(labels) if c != 0]
                label = max(present, key=lambda c: (labels == c).sum())  # the largest item
                title = f"{variant}\n{names[label]}"
            axes[r, 0].imshow(px, **grey)
            axes[r, 0].set_title(title, fontsize=7)
            for j, method in enumerate(methods):
                mp = rows[variant]["maps"][method]
                k = 0 if mp["classes"] == [-1] or label is None else mp["classes"].index(label - offset)
                m = mp["maps"][i, k][: px.shape[0], : px.shape[1]]
                axes[r, j + 1].imshow(px, **grey)
                axes[r, j + 1].imshow(normalize_map(m), cmap="jet", alpha=0.5, vmin=0, vmax=1)
                if r == 0:
                    axes[r, j + 1].set_title(method, fontsize=8)
    for ax in axes.reshape(-1):
        ax.set_axis_off()
    what = "predicted class" if task == "classification" else "class of the largest item"
    fig.suptitle(f"{task}: the same images under every method (map of the {what})", fontsize=8)
    fig.tight_layout()
    path = out / f"figure_{task}.png"
    fig.savefig(path, dpi=110)
    return path


# ------------------------------------------------------------------------------------------------- evaluation
def _snapshots(source: Path) -> List[Path]:
    source = Path(source)
    if source.is_file():
        return [source]
    snaps = sorted((source / "snapshots").glob("epoch_*.safetensors")) if (source / "snapshots").is_dir() else []
    return snaps or [source]  # a run folder: its checkpoint


def task_batch(task: str, args: argparse.Namespace, loaded) -> Dict[str, object]:
    import numpy as np
    import torch

    if task == "classification":
        folder = fashion_mnist_pngs(args)
        files = sorted(folder.glob("*.png"))
        xs, pixels = zip(*(loaded.preprocess(f) for f in files))
        y = torch.tensor(json.loads((folder / "labels.json").read_text()))
        names = loaded.class_names or [str(i) for i in range(10)]
        return {"x": torch.stack(xs), "y": y, "pixels": list(pixels), "class_names": names}
    val = load_canvas_val(canvas_root(args))[: args.canvas_eval]
    xs, pixels = zip(*(loaded.preprocess(v["path"]) for v in val))
    names = list(loaded.class_names)
    if task == "detection":
        names = ["background"] + names  # figure titles index label ids
    return {"x": torch.stack(xs), "val": val, "pixels": [np.asarray(p) for p in pixels], "class_names": names}


def evaluate_task(task: str, args: argparse.Namespace) -> Dict[str, object]:
    from lifevit.explain.loading import load_explainable

    start = time.perf_counter()
    sources = {v: getattr(args, v) or (args.work_dir / task / v) for v in ("plain", "life")}
    batch, scored = None, {}
    for variant, source in sources.items():
        snaps = _snapshots(Path(source))
        if variant == "plain":
            snaps = snaps[-1:]  # the plain model's final weights set the accuracy to match
        scores = []
        for snap in snaps:
            loaded = load_explainable(snap)
            if batch is None:
                batch = task_batch(task, args, loaded)
            scores.append(model_score(task, loaded, batch))
        scored[variant] = (snaps, scores)
    target = scored["plain"][1][-1]
    life_snaps, life_scores = scored["life"]
    best = min(range(len(life_snaps)), key=lambda i: (abs(life_scores[i] - target), -i))
    chosen = {"plain": (scored["plain"][0][-1], target), "life": (life_snaps[best], life_scores[best])}
    _logger.info("%s: plain %.4f; LIFE snapshots %s -> %s", task, target, [round(s, 4) for s in life_scores],
                 chosen["life"][0].name)  # fmt: skip
    rows: Dict[str, Dict[str, object]] = {}
    for variant, (ckpt, score) in chosen.items():
        loaded = load_explainable(ckpt)
        row: Dict[str, object] = {"checkpoint": str(ckpt), "model": loaded.name, "score": score, "maps": {},
                                  "metrics": {}}  # fmt: skip
        for method in methods_for(task):
            t0 = time.perf_counter()
            maps = method_maps(task, loaded, batch, method, args.head_fusion)
            if task == "classification":
                metrics = classification_metrics(loaded, batch, maps)
            else:
                metrics = dense_metrics(task, batch, maps)
            metrics["seconds"] = time.perf_counter() - t0
            row["metrics"][method] = metrics
            row["maps"][method] = {k: (v[: args.figure_images] if k != "classes" else v) for k, v in maps.items()}
            _logger.info("%s %s %s: %s", task, variant, method, {k: round(v, 4) for k, v in metrics.items()})
        rows[variant] = row
    figure = save_figure(task, batch, rows, args.output, args.figure_images)
    for row in rows.values():
        row.pop("maps")
    return {
        "task": task,
        "score_name": {"classification": "accuracy", "segmentation": "mIoU", "detection": "mAP@0.5"}[task],
        "life_snapshot_scores": {p.name: s for p, s in zip(life_snaps, life_scores)},
        "rows": rows,
        "figure": str(figure),
        "images": len(batch["x"]),
        "eval_seconds": time.perf_counter() - start,
    }


def markdown(results: Dict[str, Dict[str, object]]) -> str:
    lines = []
    for task, res in results.items():
        rows = res["rows"]
        if task == "classification":
            cols = [("pos. AUC ↓", "positive_auc", 2), ("neg. AUC ↑", "negative_auc", 2),
                    ("deletion ↓", "deletion_auc", 3), ("insertion ↑", "insertion_auc", 3)]  # fmt: skip
        else:
            cols = [("mask AP ↑", "mask_ap", 3), ("mask IoU ↑", "mask_iou", 3), ("pointing ↑", "pointing", 3)]
        plain, life = rows["plain"], rows["life"]
        lines.append(
            f"**{task}** ({res['score_name']}: plain {plain['score']:.3f} at {Path(plain['checkpoint']).name}, "
            f"LIFE {life['score']:.3f} at {Path(life['checkpoint']).name})\n"
        )
        header = ["method"] + [f"{c} {v}" for c, _, _ in cols for v in ("plain", "LIFE")]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method in plain["metrics"]:
            cells = [method]
            for _, key, digits in cols:
                cells += [f"{rows[v]['metrics'][method][key]:.{digits}f}" for v in ("plain", "life")]
            lines.append("| " + " | ".join(cells) + " |")
        if task != "classification":
            lines.append(f"\n{plain['metrics']['rollout']['pairs']} (image, class) pairs.")
        lines.append("")
    return "\n".join(lines)


def cpu_minutes() -> Dict[str, float]:
    """CPU time so far (user + system): this process (the evaluation) and its finished children (the trainings)."""
    import resource

    used = {k: resource.getrusage(w) for k, w in (("eval", resource.RUSAGE_SELF), ("train", resource.RUSAGE_CHILDREN))}
    out = {k: round((r.ru_utime + r.ru_stime) / 60, 2) for k, r in used.items()}
    out["total"] = round(out["eval"] + out["train"], 2)
    return out


def evaluate_all(args: argparse.Namespace, train_seconds: float) -> Dict[str, object]:
    import torch

    torch.set_num_threads(max(1, args.eval_threads))
    args.output.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = {task: evaluate_task(task, args) for task in args.tasks}
    previous = args.output / "results.json"
    if previous.is_file():  # keep the other tasks' results of an earlier run (tasks can be run one at a time)
        old = json.loads(previous.read_text()).get("results", {})
        results = {**{k: v for k, v in old.items() if k not in results}, **results}
        results = {k: results[k] for k in TASKS if k in results}
    report = {
        "benchmark": "explain_quality",
        "command": " ".join(sys.argv),
        "head_fusion": args.head_fusion,
        "host": platform.node(),
        "torch": torch.__version__,
        "train_seconds": train_seconds,
        "eval_seconds": time.perf_counter() - t0,
        "cpu_minutes": cpu_minutes(),
        "results": results,
    }
    (args.output / "results.json").write_text(json.dumps(report, indent=2))
    md = markdown(results)
    (args.output / "results.md").write_text(md)
    print(md)
    print(f"CPU minutes: {report['cpu_minutes']}")
    return report


# ------------------------------------------------------------------------------------------------- main
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="tasks to run")
    p.add_argument("--stage", choices=("all", "train", "eval"), default="all", help="train, evaluate or both")
    p.add_argument("--plain", help="existing plain checkpoint / run folder (one task only)")
    p.add_argument("--life", help="existing LIFE checkpoint / run folder (one task only)")
    p.add_argument("--output", type=Path, default=RESULTS, help="folder for results.{json,md} and the figures")
    p.add_argument("--work-dir", type=Path, default=WORK, help="folder for data, training runs and snapshots")
    p.add_argument("--fashion-mnist", type=Path, default=FASHION_MNIST, help="Fashion-MNIST IDX folder")
    p.add_argument("--seed", type=int, default=0, help="data and training seed")
    p.add_argument("--threads", type=int, default=1, help="torch threads per training process")
    p.add_argument(
        "--lifevit-src", type=Path, help="train with the lifevit package (and configs) of this src/ folder's parent"
    )
    p.add_argument(
        "--parallel", type=int, default=os.cpu_count() or 1, help="trainings run at the same time (default: CPUs)"
    )
    p.add_argument("--cls-train-samples", type=int, default=3000, help="Fashion-MNIST training images")
    p.add_argument("--cls-epochs", type=int, default=6, help="classifier epochs")
    p.add_argument("--cls-eval", type=int, default=100, help="Fashion-MNIST test images explained")
    p.add_argument("--canvas-train", type=int, default=1000, help="training canvases")
    p.add_argument("--canvas-val", type=int, default=60, help="validation canvases (all explained)")
    p.add_argument("--canvas-eval", type=int, default=None, help="validation canvases explained (default: all)")
    p.add_argument("--seg-epochs", type=int, default=10, help="segmentation epochs")
    p.add_argument("--det-epochs", type=int, default=10, help="detection epochs")
    p.add_argument("--head-fusion", default="mean", help="roll-out head fusion (mean, max, min)")
    p.add_argument("--figure-images", type=int, default=3, help="images per variant in each figure")
    p.add_argument("--eval-threads", type=int, default=2, help="torch threads for the evaluation")
    args = p.parse_args(argv)
    if (args.plain or args.life) and len(args.tasks) != 1:
        raise ValueError(f"--plain / --life give the checkpoints of one task; got --tasks {args.tasks}")
    return args


def train_all(args: argparse.Namespace) -> None:
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(t, v) for t in args.tasks for v in ("plain", "life") if not getattr(args, v)]
    if any(t != "classification" for t, _ in jobs):
        make_canvas(args)
    failed = []
    with ThreadPoolExecutor(max(1, args.parallel)) as pool:
        futures = {(t, v): pool.submit(train_with_snapshots, t, v, args) for t, v in jobs}
        for key, fut in futures.items():
            try:
                fut.result()
            except RuntimeError as err:  # keep training the other tasks; report at the end
                _logger.error("%s", err)
                failed.append(key)
    if failed:
        raise RuntimeError(f"trainings failed: {failed}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    if args.stage in ("all", "train"):
        train_all(args)
        _logger.info("training done in %.0f s", time.perf_counter() - t0)
    if args.stage in ("all", "eval"):
        evaluate_all(args, train_seconds=time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError, RuntimeError) as err:  # bad arguments, missing data, a failed training
        sys.exit(f"explain_quality.py: {err}")
