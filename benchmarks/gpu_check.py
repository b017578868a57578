"""LIFE against the plain model on one GPU: throughput and peak memory, eager and compiled, plus one bf16 CLI run.

    python benchmarks/gpu_check.py                          # one CUDA GPU, at most ~6 minutes (see --budget-s)
    python benchmarks/gpu_check.py --device cpu --quick     # the same code on tiny shapes (the test suite runs it)

Rows: DeiT-T and DeiT-S, at 224 px / patch 16 (batch 256) and at 32 px / patch 4 (batch 512), bf16 autocast on
CUDA; training step (forward, cross-entropy backward, AdamW) and inference, eager, and the training step under
``torch.compile`` (``--compile-infer`` compiles inference too). Each model is built alone (the previous one
freed), so its peak memory (``torch.cuda.max_memory_allocated``) is its own: weights, gradients, optimizer state
and activations. Then ``lifevit train`` runs one epoch of Fashion-MNIST (60k images) on the GPU, so the AMP path
of the real command runs once; without the data set that row says so and is skipped. Rows that would start after
``--budget-s`` are reported as skipped, so the script ends in time. Last, one LIFE layer against ``nn.Linear(dim,
3 dim)`` at DeiT-T / DeiT-S block shapes: wall time a call (eager, the host's work included) and GPU time alone (the
call replayed as a CUDA graph), which tells a host-bound layer from a GPU-bound one. The tables are printed and
written as markdown (``--output``) for ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Dict, List, Optional

PAIRS = [("deit_tiny_patch16_224", 224, 256), ("deit_small_patch16_224", 224, 256),
         ("deit_tiny_patch4_32", 32, 512), ("deit_small_patch4_32", 32, 512)]  # fmt: skip
QUICK_PAIRS = [("deit_tiny_patch4_32", 32, 4)]


def measure(name: str, img: int, batch: int, mode: str, compiled: bool, device, steps: int, warmup: int) -> Dict:
    """Images per second and peak memory (MiB; None on CPU) of one model, built alone."""
    import timm
    import torch

    import lifevit  # noqa: F401

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    model = timm.create_model(name, img_size=img, num_classes=100).to(device).train(mode == "train")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    fn = torch.compile(model) if compiled else model
    x = torch.randn(batch, 3, img, img, device=device)
    y = torch.randint(0, 100, (batch,), device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    def step():
        if mode == "train":
            opt.zero_grad(set_to_none=True)
            with amp:
                loss = torch.nn.functional.cross_entropy(fn(x), y)
            loss.backward()
            opt.step()
        else:
            with torch.inference_mode(), amp:
                fn(x)

    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    first_s = time.perf_counter() - t0  # includes compilation
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return {"img_s": batch / statistics.median(times), "peak_mb": peak, "warmup_s": first_s}


LAYER_SHAPES = [(512, 65, 192), (256, 197, 192), (512, 65, 384)]  # (B, N, dim): DeiT-T / DeiT-S blocks
QUICK_LAYER_SHAPES = [(2, 17, 24)]


def layer_times(B: int, N: int, dim: int, device, calls: int) -> Dict:
    """One LIFE layer against the plain ``nn.Linear(dim, 3 dim)``, bf16 autocast on CUDA, training (forward and
    backward) and inference: microseconds a call of wall time (what eager mode costs, the host's work included) and,
    on CUDA, of GPU time alone (the same call replayed as a CUDA graph: no host work)."""
    import torch

    from lifevit.layers import LIFE

    side = int((N - 1) ** 0.5)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    layers = {"plain": torch.nn.Linear(dim, 3 * dim).to(device), "life": LIFE(dim, grid_size=(side, side)).to(device)}
    x = torch.randn(B, N, dim, device=device, requires_grad=True)
    g = torch.randn(B, N, 3 * dim, device=device, dtype=torch.bfloat16 if cuda else torch.float32)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    def call(layer, mode):
        def run():
            if mode == "train":
                with amp:
                    y = layer(x)
                y.backward(g)
            else:
                with torch.no_grad(), amp:
                    layer(x)

        return run

    def wall_us(fn):
        for _ in range(3):
            fn()
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - t) / calls * 1e6

    def gpu_us(fn):
        if not cuda:
            return None
        side_stream = torch.cuda.Stream()
        side_stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side_stream):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side_stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(calls):
            graph.replay()
        torch.cuda.synchronize()
        return (time.perf_counter() - t) / calls * 1e6

    out = {}
    for mode in ("train", "infer"):
        for key, layer in layers.items():
            fn = call(layer, mode)
            out[(mode, key)] = {"wall_us": wall_us(fn), "gpu_us": gpu_us(fn)}
            x.grad = None
    return out


def _cells(p: Dict, q: Dict, key: str, digits: int) -> str:
    """The cells 'plain | LIFE | LIFE / plain' of one measure; n/a where it was not measured (on CPU)."""
    if not p[key]:
        return "n/a | n/a | n/a"
    return f"{p[key]:.0f} | {q[key]:.0f} | {q[key] / p[key]:.{digits}f}"


def _markdown(header: List[str], keys: List[str], rows: List[Dict], cells) -> List[str]:
    """A markdown table: the columns ``keys`` of each row, then ``cells(plain, life)``; a skipped row says why."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(keys) + "---:|" * (len(header) - len(keys))]
    for r in rows:
        lead = " | ".join(str(r[k]) for k in keys)
        if "skipped" in r:
            lines.append(f"| {lead} | {r['skipped']} " + "|" * (len(header) - len(keys)))
        else:
            lines.append(f"| {lead} | {cells(r['plain'], r['life'])} |")
    return lines


def layer_table(rows: List[Dict]) -> str:
    header = ["layer (B, N, dim)", "mode", "plain wall us", "LIFE wall us", "wall ratio", "plain GPU us", "LIFE GPU us",
              "GPU ratio"]  # fmt: skip
    return "\n".join(
        _markdown(
            header, ["shape", "mode"], rows, lambda p, q: f"{_cells(p, q, 'wall_us', 2)} | {_cells(p, q, 'gpu_us', 2)}"
        )
    )


def cli_run(device: str, data_root: Optional[str], quick: bool) -> Dict:
    """One epoch of ``lifevit train`` (bf16 autocast on CUDA) on Fashion-MNIST; skipped without the data set."""
    from lifevit.data.fashion_mnist import find_fashion_mnist

    try:
        root = find_fashion_mnist(data_root)
    except (FileNotFoundError, ValueError) as err:
        return {"status": f"skipped: Fashion-MNIST not found ({err})"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "lifevit", "train", "--model", "vit_lite_patch4_28_life",
               "--dataset", "fashion_mnist", "--data-root", str(root), "--epochs", "1", "--device", device,
               "--output", str(out), "--no-progress", "--json"]  # fmt: skip
        if quick:
            cmd += ["--train-samples", "20", "--batch-size", "10", "--threads", "1"]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t
        if proc.returncode != 0:
            return {"status": f"failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}"}
        summary = out / "summary.json"
        result = json.loads(summary.read_text()) if summary.is_file() else {}
        return {"status": "ok", "seconds": round(seconds, 1), "top1": result.get("top1")}


def table(rows: List[Dict], cli: Dict, meta: Dict) -> str:
    header = ["model", "px / patch", "batch", "mode", "way", "plain img/s", "LIFE img/s", "time ratio", "plain MiB",
              "LIFE MiB", "mem ratio"]  # fmt: skip

    def cells(p, q):  # time ratio: plain throughput / LIFE throughput
        return f"{p['img_s']:.0f} | {q['img_s']:.0f} | {p['img_s'] / q['img_s']:.3f} | {_cells(p, q, 'peak_mb', 3)}"

    lines = [f"GPU check: {meta['device_name']}, torch {meta['torch']}, {meta['date']}, {meta['seconds']} s", ""]
    lines += _markdown(header, ["model", "px", "batch", "mode", "way"], rows, cells)
    lines += ["", f"`lifevit train` (vit_lite_patch4_28_life, Fashion-MNIST, 1 epoch, bf16 autocast): {cli}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny shapes, few steps, a 20-image CLI run (any device)")
    p.add_argument("--no-compile", action="store_true", help="eager rows only")
    p.add_argument("--compile-infer", action="store_true", help="also compile inference (more compile time)")
    p.add_argument("--no-cli", action="store_true", help="skip the lifevit train run")
    p.add_argument("--data-root", default=None, help="Fashion-MNIST folder (default: lifevit's usual search)")
    p.add_argument("--budget-s", type=float, default=280.0, help="start no new row after this many seconds")
    p.add_argument("--output", type=Path, default=None, help="markdown table (default: only printed)")
    args = p.parse_args(argv)

    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: run with --device cpu --quick to check the script", file=sys.stderr)
        return 2
    steps, warmup = (2, 1) if args.quick else (15, 5)
    ways = ["eager"] + ([] if args.no_compile or args.quick else ["compiled"])
    start = time.time()
    rows: List[Dict] = []
    for base, img, batch in QUICK_PAIRS if args.quick else PAIRS:
        for way in ways:
            for mode in ("train", "infer"):
                compiled = way == "compiled" and (mode == "train" or args.compile_infer)
                if way == "compiled" and not compiled:
                    continue
                row = {"model": base.split("_patch")[0], "px": f"{img} / {16 if img == 224 else 4}", "batch": batch,
                       "mode": mode, "way": way}  # fmt: skip
                if time.time() - start > args.budget_s:
                    rows.append({**row, "skipped": "skipped (time budget)"})
                    continue
                try:
                    for name, key in ((base, "plain"), (base + "_life", "life")):
                        row[key] = measure(name, img, batch, mode, compiled, device, steps, warmup)
                except Exception as err:  # one row that breaks (out of memory, a compiler error) keeps the others
                    traceback.print_exc()
                    first_line = (str(err).splitlines() or [""])[0]
                    row = {**row, "skipped": f"failed: {type(err).__name__}: {first_line}"}
                    row.pop("plain", None)
                rows.append(row)
                print(json.dumps(row), flush=True)
    layers: List[Dict] = []
    for B, N, dim in QUICK_LAYER_SHAPES if args.quick else LAYER_SHAPES:
        base = {"shape": f"({B}, {N}, {dim})"}
        try:
            times = layer_times(B, N, dim, device, calls=3 if args.quick else 30)
            layers += [{**base, "mode": m, "plain": times[(m, "plain")], "life": times[(m, "life")]}
                       for m in ("train", "infer")]  # fmt: skip
        except Exception as err:
            traceback.print_exc()
            layers.append({**base, "mode": "both", "skipped": f"failed: {type(err).__name__}"})
    cli = {"status": "skipped (--no-cli)"} if args.no_cli else cli_run(args.device, args.data_root, args.quick)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    meta = {"device_name": name, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
            "seconds": round(time.time() - start)}  # fmt: skip
    text = (
        table(rows, cli, meta) + "\n\nOne layer against `nn.Linear(dim, 3 dim)` (wall: eager, the host's work "
        "included; GPU: the same call replayed as a CUDA graph):\n\n" + layer_table(layers)
    )
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
