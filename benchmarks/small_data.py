"""The small-data regime on Fashion-MNIST: plain ViT vs ViT-LIFE vs a small ResNet at 1k / 5k / 10k / 60k
training images, several seeds; writes a markdown report and a plot.

    .venv/bin/python benchmarks/small_data.py                       # everything (many CPU hours; use a GPU)
    .venv/bin/python benchmarks/small_data.py --sizes 1000 5000 --seeds 0   # a subset
    .venv/bin/python benchmarks/small_data.py --report-only         # tabulate the runs already in --runs-dir

Every run uses the main job's recipe (``configs/fashion_mnist/vit_lite_life.yaml``) with the model, training-set
size and seed replaced, and the same budget of training samples seen (``--budget``, default 100,000: about 780
optimizer steps at batch 128) for every size: 100 epochs on 1k images, 20 on 5k (exactly the main job), 10 on
10k, 2 on 60k. Warm-up is a tenth of the epochs; the model and its EMA are evaluated once, at the end. A fixed
step budget keeps every run equally cheap and compares the models at equal compute; it does not show where the
60k runs would end with a longer schedule. Finished runs are read back, so the script can be stopped and
restarted. The test set is always the full 10,000 images. Reported: mean and sample standard deviation of top-1
over seeds. Runs are ordered seed by seed, so a stopped grid still has whole seeds.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["vit_lite_patch4_28", "vit_lite_patch4_28_life", "resnet18_lite_28"]
FULL = 60000  # Fashion-MNIST's training set


def schedule(size: int, budget: int) -> Dict[str, float]:
    """Epochs (at least 2), warm-up epochs (a tenth) and evaluation interval (the end) for ``budget`` samples."""
    epochs = max(2, round(budget / size))
    return {"train.epochs": epochs, "train.warmup_epochs": epochs / 10, "train.eval_interval": epochs}


def configs(config: Path, models, sizes, seeds, budget: int, extra):
    from lifevit.config import build_config
    from lifevit.tasks.classification import ClassificationConfig

    out = []
    for seed in seeds:
        for size in sizes:
            sched = [f"{k}={v}" for k, v in schedule(size, budget).items()]
            n = f"data.train_samples={size}" if size < FULL else "data.train_samples=null"
            for model in models:
                overrides = [f"model.name={model}", n, f"train.seed={seed}", *sched, *extra]
                out.append(build_config(ClassificationConfig, config, overrides))
    return out


def collect(runs_dir: Path) -> Dict[Tuple[str, int], List[float]]:
    from lifevit.engine.rundir import find_runs, load_json

    acc: Dict[Tuple[str, int], List[float]] = defaultdict(list)
    for run in find_runs(runs_dir):
        s = load_json(run / "summary.json")
        if s.get("dataset") == "fashion_mnist":
            acc[(s["model"], int(s["train_samples"]))].append(float(s["top1"]))  # the full set: 60000
    return acc


def report(acc, out_md: Path, out_png: Path) -> str:
    sizes = sorted({n for _, n in acc})
    models = [m for m in MODELS if any(k[0] == m for k in acc)] + sorted({m for m, _ in acc} - set(MODELS))

    def fmt(v):
        return (
            (
                f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f} (n={len(v)})"
                if len(v) > 1
                else f"{v[0]:.2f} (n=1)"
            )
            if v
            else "-"
        )

    lines = ["| model | " + " | ".join(f"{n:,} images" for n in sizes) + " |", "|---|" + "---:|" * len(sizes)]
    for m in models:
        lines.append(f"| {m} | " + " | ".join(fmt(acc.get((m, n), [])) for n in sizes) + " |")
    table = "\n".join(lines)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in models:
        pts = [(n, acc[(m, n)]) for n in sizes if acc.get((m, n))]
        if pts:
            xs = [n for n, _ in pts]
            means = [statistics.mean(v) for _, v in pts]
            errs = [statistics.stdev(v) if len(v) > 1 else 0.0 for _, v in pts]
            ax.errorbar(xs, means, yerr=errs, marker="o", capsize=3, label=m)
    ax.set_xscale("log")
    ax.set_xlabel("training images (class-balanced)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Fashion-MNIST, equal budget of 100k samples seen")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(table + "\n")
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--sizes", nargs="+", type=int, default=[1000, 5000, 10000, 60000])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "fashion_mnist" / "vit_lite_life.yaml")
    p.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "small_data")
    p.add_argument("--budget", type=int, default=100_000, help="training samples seen per run (sets the epochs)")
    p.add_argument("--jobs", type=int, default=2, help="runs at the same time (one process each)")
    p.add_argument("--set", dest="extra", action="append", default=[], help="config override, e.g. train.device=cuda")
    p.add_argument(
        "--life-options",
        choices=["default", "release", "lifevit-0.1"],
        default="default",
        help="LIFE's pointwise bias / init / norm sharing: LIFE's defaults (since 2026-12-02 the release's), the "
        "release's (RELEASE_OPTIONS, the same) or lifevit 0.1's (LIFEVIT_0_1_OPTIONS: pointwise bias, truncated "
        "normal init); other than the default, runs train in this process (--jobs 1) so the choice reaches every model",
    )
    p.add_argument("--report-only", action="store_true", help="only tabulate finished runs")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "small_data_table.md")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "small_data.png")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.life_options != "default" and not args.report_only:
        if args.jobs != 1:
            raise SystemExit(f"--life-options {args.life_options} trains in this process: pass --jobs 1")
        from lifevit.layers import LIFEVIT_0_1_OPTIONS, RELEASE_OPTIONS, LIFEAttention

        # the class default of every LIFEAttention built in this process (this benchmark's runs only)
        options = RELEASE_OPTIONS if args.life_options == "release" else LIFEVIT_0_1_OPTIONS
        LIFEAttention.default_life_options = dict(options)
    if not args.report_only:
        from lifevit.tasks.classification.compare import train_or_read

        train_or_read(
            configs(args.config, args.models, args.sizes, args.seeds, args.budget, args.extra),
            args.runs_dir,
            jobs=args.jobs,
        )
    acc = collect(args.runs_dir)
    if not acc:
        print(f"no finished Fashion-MNIST runs under {args.runs_dir}", file=sys.stderr)
        return 1
    print(report(acc, args.out, args.plot))
    print(f"wrote {args.out} and {args.plot}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError, RuntimeError) as err:  # a bad --set, missing data, a failed run
        sys.exit(f"small_data.py: {err}")
