"""LIFE's cost over the plain model: training-step and inference time, and peak memory.

Each measurement runs in a fresh process (so peak memory is that measurement's alone). Rounds alternate the
models and the median over rounds is reported, which keeps the ratios stable on a noisy shared machine.

    python benchmarks/life_overhead.py                       # DeiT-T at the CIFAR shape, CPU, 2 threads
    python benchmarks/life_overhead.py --device cuda --batch-size 256
    python benchmarks/life_overhead.py --pairs t2t_vit_12_32:t2t_vit_12_32_life --img-size 32

``naive`` as the LIFE side of a pair is a straightforward NCHW port of the released module (transposes to
NCHW, 1x1 ``Conv2d`` pointwise convs, a concatenation per scale and one for q, k, v), written here for the
comparison: it is what lifevit's channels-last LIFE is measured against.

Allocator: ``--allocator keep`` (the default, what the ``lifevit`` command does) calls
:func:`lifevit.runtime.keep_freed_memory` in each worker so glibc re-uses freed activations; ``--allocator
system`` leaves glibc's defaults, under which fresh pages fault on first touch in every layer and CPU timings
vary by 15% from run to run.

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` during the timed steps; on CPU, the process's peak
resident set size (``ru_maxrss``) minus its resident size before the first step, i.e. the activations,
gradients, optimizer state and allocator overhead of the steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

RESULTS = Path(__file__).parent / "results"


# --------------------------------------------------------------------------------------------------- naive port
def _naive_attention_class():
    import torch
    from torch import nn

    from lifevit.layers import LIFEAttention, split_widths

    class NaiveLIFE(nn.Module):
        """Same maths as LIFE, written the straightforward way (NCHW, 1x1 convs, concatenations)."""

        def __init__(self, dim: int, num_prefix_tokens: int = 1, kernel_sizes=(3, 5), qkv_bias: bool = True):
            super().__init__()
            c = split_widths(dim, len(kernel_sizes) + 1)
            self.num_prefix_tokens, self.grid_size = num_prefix_tokens, None
            self.linear = nn.Linear(dim, 3 * c[0], bias=qkv_bias)
            self.dw = nn.ModuleList(
                nn.Conv2d(3 * c[i], 3 * c[i], k, padding=k // 2, groups=3 * c[i], bias=False)
                for i, k in enumerate(kernel_sizes)
            )
            self.pw = nn.ModuleList(nn.Conv2d(3 * c[i], 3 * c[i + 1], 1, bias=qkv_bias) for i in range(len(c) - 1))

        def forward(self, x):
            B, N, C = x.shape
            P = self.num_prefix_tokens
            H = W = int((N - P) ** 0.5)
            y = self.linear(x)
            scales = [y]
            for dw, pw in zip(self.dw, self.pw):
                prefix = y[:, :P].transpose(1, 2).unsqueeze(-1)  # (B, C, P, 1)
                img = y[:, P:].transpose(1, 2).reshape(B, -1, H, W)  # (B, C, H, W), NCHW copy
                img = pw(dw(img)).flatten(2).transpose(1, 2)  # (B, H*W, C')
                prefix = pw(prefix).squeeze(-1).transpose(1, 2)  # (B, P, C')
                y = torch.cat([prefix, img], dim=1)
                scales.append(y)
            q, k, v = (torch.cat([s.chunk(3, dim=-1)[i] for s in scales], dim=-1) for i in range(3))
            return torch.cat([q, k, v], dim=-1)

    class NaiveLIFEAttention(LIFEAttention):
        def __init__(self, dim, num_heads=8, qkv_bias=False, **kwargs):
            super().__init__(dim, num_heads=num_heads, qkv_bias=qkv_bias, **kwargs)
            self.qkv = NaiveLIFE(dim, qkv_bias=qkv_bias)

    return NaiveLIFEAttention


def _build(name: str, plain: str, img_size: int, num_classes: int):
    import timm

    import lifevit  # noqa: F401

    kwargs = dict(num_classes=num_classes)
    if img_size:
        kwargs["img_size"] = img_size
    if name == "naive":
        from timm.models.vision_transformer import VisionTransformer

        base = timm.create_model(plain, **kwargs)
        cfg = dict(
            img_size=base.patch_embed.img_size, patch_size=base.patch_embed.patch_size, embed_dim=base.embed_dim,
            depth=len(base.blocks), num_heads=base.blocks[0].attn.num_heads, num_classes=num_classes,
            in_chans=base.patch_embed.proj.in_channels,
        )  # fmt: skip
        model = VisionTransformer(attn_layer=_naive_attention_class(), **cfg)
        model.pretrained_cfg = base.pretrained_cfg
        return model
    return timm.create_model(name, **kwargs)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(args: argparse.Namespace) -> None:
    if args.allocator == "keep":
        from lifevit.runtime import keep_freed_memory

        keep_freed_memory()
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = _build(args.model, args.plain, args.img_size, args.num_classes).to(device)
    C, H, W = model.pretrained_cfg["input_size"]
    H, W = (args.img_size, args.img_size) if args.img_size else (H, W)
    x = torch.randn(args.batch_size, C, H, W, device=device)
    y = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train(args.mode == "train")

    def step():
        if args.mode == "train":
            opt.zero_grad(set_to_none=True)
            out = model(x)
            out = out[0] if isinstance(out, tuple) else out
            torch.nn.functional.cross_entropy(out, y).backward()
            opt.step()
        else:
            with torch.inference_mode():
                model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    rss0 = _rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.iters):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0
    print(json.dumps({"step_s": statistics.median(times), "peak_mb": peak}))


def _measure(args, model: str, plain: str, mode: str) -> Dict[str, float]:
    cmd = [sys.executable, __file__, "--worker", "--model", model, "--plain", plain, "--mode", mode]
    for k in ("batch_size", "threads", "device", "iters", "warmup", "img_size", "num_classes", "allocator"):
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--pairs",
        nargs="+",
        default=["deit_tiny_patch4_32:deit_tiny_patch4_32_life", "deit_tiny_patch4_32:naive"],
        help="PLAIN:LIFE model pairs",
    )
    p.add_argument("--modes", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--iters", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    p.add_argument("--img-size", type=int, default=0, help="input side (0: the model's default)")
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--allocator", default="keep", choices=["keep", "system"], help="glibc settings (see above)")
    p.add_argument("--output", type=Path, default=None, help="JSON results (default benchmarks/results/...)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--plain", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    import torch

    rows: List[Dict] = []
    for pair in args.pairs:
        plain, life = pair.split(":")
        for mode in args.modes:
            samples: Dict[str, List[Dict[str, float]]] = {plain: [], life: []}
            for _ in range(args.rounds):
                for name in (plain, life):
                    samples[name].append(_measure(args, name, plain, mode))
            med = {
                n: {k: statistics.median(s[k] for s in v) for k in ("step_s", "peak_mb")} for n, v in samples.items()
            }
            row = dict(
                plain=plain, life=life, mode=mode,
                plain_ms=1e3 * med[plain]["step_s"], life_ms=1e3 * med[life]["step_s"],
                time_ratio=med[life]["step_s"] / med[plain]["step_s"],
                plain_peak_mb=med[plain]["peak_mb"], life_peak_mb=med[life]["peak_mb"],
                mem_ratio=med[life]["peak_mb"] / max(med[plain]["peak_mb"], 1e-9),
            )  # fmt: skip
            rows.append(row)
            print(
                f"{plain:>28} vs {life:<28} {mode:5}  {row['plain_ms']:8.1f} ms -> {row['life_ms']:8.1f} ms "
                f"(x{row['time_ratio']:.3f})   peak {row['plain_peak_mb']:7.1f} -> {row['life_peak_mb']:7.1f} MiB "
                f"(x{row['mem_ratio']:.3f})",
                flush=True,
            )
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    meta = dict(
        device=args.device, device_name=device_name, threads=args.threads, batch_size=args.batch_size,
        iters=args.iters, rounds=args.rounds, allocator=args.allocator, torch=torch.__version__,
        date=time.strftime("%Y-%m-%d"),
        cpu_count=os.cpu_count(),
    )  # fmt: skip
    out = args.output or RESULTS / f"life_overhead_{args.device.split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
