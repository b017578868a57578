"""LIFE's cost over the plain model: training-step and inference time, peak memory, next to the MAC ratio.

Two ways of timing, both reported (issue 15 asks for both):

* ``process``: each (model, mode) measurement runs in a fresh process, rounds alternating the models; the
  median over rounds is reported. Peak memory comes from here (it is that measurement's alone).
* ``resident``: one process builds both models and alternates them step by step (plain, LIFE, plain, ...),
  as a user would time them in a notebook; the median step of each is reported. Time only.

Each ratio comes with the quartiles of its per-round (process) or per-pair (resident: a LIFE step against the
plain step beside it) ratios, so that the machine's noise is visible next to the figure.

Both run under glibc's default allocator unless ``--allocator keep`` (``lifevit.runtime.keep_freed_memory``).

    python benchmarks/life_overhead.py --rounds 3           # every figure of docs/performance.md (~12 min, 2 cores)
    python benchmarks/life_overhead.py --rows deit_t_32 --ways resident --rounds 5
    python benchmarks/life_overhead.py --device cuda --rows deit_t_224 --batch-scale 16
    python benchmarks/life_overhead.py --rows deit_t_32 --compile    # torch.compile (inductor) both models too
    python benchmarks/life_overhead.py --rows deit_t_32 --breakdown  # where LIFE's extra time goes, per operator
    python benchmarks/life_overhead.py --rows deit_t_32 --compare-kernels --rounds 4  # native kernel vs PyTorch's
    python benchmarks/life_overhead.py --rows deit_t_32 --native-phases  # one LIFE layer's time, phase by phase

Memory: on CUDA ``torch.cuda.max_memory_allocated`` during the timed steps; on CPU the process's peak resident
set size from just before the first step (Linux ``VmHWM`` after a reset through ``/proc/self/clear_refs``, else
``ru_maxrss``) minus its resident size then (activations, gradients, optimizer state and allocator slack), and
the peak bytes of live tensors during one more step (the profiler's allocation events; no allocator slack).
MACs: ``lifevit.profile.count_macs`` of one image.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

RESULTS = Path(__file__).parent / "results"

# name: (plain model, LIFE model, image side, batch, timed steps)
ROWS = {
    "deit_t_32": ("deit_tiny_patch4_32", "deit_tiny_patch4_32_life", 32, 64, 8),
    "deit_t_224": ("deit_tiny_patch16_224", "deit_tiny_patch16_224_life", 224, 16, 5),
    "t2t_12_32": ("t2t_vit_12_32", "t2t_vit_12_32_life", 32, 32, 5),
    "swinv2_t_32": ("swinv2_tiny_patch1_window8_32", "swinv2_tiny_patch1_window8_32_life", 32, 8, 4),
}


def _build(name: str, img_size: int, num_classes: int):
    import timm

    import lifevit  # noqa: F401  (registers the models)

    return timm.create_model(name, img_size=img_size, num_classes=num_classes)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``) so that building the model does not count; False if we cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb(reset: bool) -> float:
    """Peak RSS since the reset (``VmHWM``), else since the start of the process (``ru_maxrss``)."""
    if reset:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _tensor_peak_mb(step) -> float:
    """Peak bytes of live tensors during one ``step`` above those alive when it starts (CPU), from the profiler's
    allocation events: deterministic, unlike the resident set, which glibc moves by 10-20 % at inference sizes."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    peak, stack = 0, list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == _EventType.Allocation:
            peak = max(peak, node.extra_fields.total_allocated)  # running total since the profiler started
    return peak / 2**20


def _setup(args):
    if args.allocator == "keep":
        from lifevit.runtime import keep_freed_memory

        keep_freed_memory()
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return torch


def _stepper(torch, model, mode: str, batch: int, img: int, num_classes: int, device, compile_: bool):
    """A function that runs one training step or one inference pass of ``model``."""
    model = model.to(device).train(mode == "train")
    if compile_:
        model = torch.compile(model)
    x = torch.randn(batch, 3, img, img, device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        if mode == "train":
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

    return step


def worker(args) -> None:
    """One (model, mode) measurement in this fresh process: median step time and peak memory (JSON on stdout)."""
    torch = _setup(args)
    device = torch.device(args.device)
    plain, life, img, batch, iters = ROWS[args.row]
    batch = batch * args.batch_scale
    step = _stepper(torch, _build(args.model, img, args.num_classes), args.mode, batch, img, args.num_classes,
                    device, args.compile)  # fmt: skip
    reset = _reset_peak_rss()
    rss0 = _rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = _peak_rss_mb(reset) - rss0
    res = {"step_s": statistics.median(times), "peak_mb": peak}
    if device.type == "cpu":
        res["tensor_peak_mb"] = _tensor_peak_mb(step)  # one more step, after the timed ones and the RSS peak
    print(json.dumps(res))


def _fresh_pair(args, row: str, mode: str) -> Dict[str, float]:
    cmd = [sys.executable, __file__, "--worker", "--row", row, "--mode", mode]
    for k in ("batch_scale", "threads", "device", "warmup", "num_classes", "allocator"):
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    cmd += ["--compile"] if args.compile else []
    res = {}
    for name in ROWS[row][:2]:
        out = subprocess.run(cmd + ["--model", name], check=True, capture_output=True, text=True).stdout
        res[name] = json.loads(out.strip().splitlines()[-1])
    return res


def measure_process(args, row: str, mode: str) -> Dict[str, float]:
    """Fresh process per measurement, ``rounds`` alternating rounds, medians."""
    plain, life = ROWS[row][:2]
    samples: Dict[str, List[Dict[str, float]]] = {plain: [], life: []}
    for _ in range(args.rounds):
        for name, r in _fresh_pair(args, row, mode).items():
            samples[name].append(r)
    keys = [k for k in ("step_s", "peak_mb", "tensor_peak_mb") if k in samples[plain][0]]
    med = {n: {k: statistics.median(s[k] for s in v) for k in keys} for n, v in samples.items()}
    tensors = {}
    if "tensor_peak_mb" in keys:
        p_mb, l_mb = med[plain]["tensor_peak_mb"], med[life]["tensor_peak_mb"]
        tensors = dict(plain_tensor_peak_mb=p_mb, life_tensor_peak_mb=l_mb, tensor_mem_ratio=l_mb / max(p_mb, 1e-9))
    return dict(**tensors,
        plain_ms=1e3 * med[plain]["step_s"], life_ms=1e3 * med[life]["step_s"],
        time_ratio=med[life]["step_s"] / med[plain]["step_s"],
        **_spread([a["step_s"] / b["step_s"] for a, b in zip(samples[life], samples[plain])]),
        plain_peak_mb=med[plain]["peak_mb"], life_peak_mb=med[life]["peak_mb"],
        mem_ratio=med[life]["peak_mb"] / max(med[plain]["peak_mb"], 1e-9),
    )  # fmt: skip


def _resident(args, row: str, mode: str):
    """Both models of ``row`` built in this process: ({name: step}, plain name, LIFE name, steps per round)."""
    torch = _setup(args)
    device = torch.device(args.device)
    plain, life, img, batch, iters = ROWS[row]
    batch = batch * args.batch_scale
    steps = {n: _stepper(torch, _build(n, img, args.num_classes), mode, batch, img, args.num_classes, device,
                         args.compile) for n in (plain, life)}  # fmt: skip
    return steps, plain, life, iters


def _interleaved(args, variants: Dict[str, Callable[[], None]], iters: int) -> Dict[str, List[float]]:
    """Step times of every variant, one step each per round, the order reversed every other round (warm-up not kept)."""
    times: Dict[str, List[float]] = {k: [] for k in variants}
    for i in range(args.warmup + iters * args.rounds):
        for name in list(variants) if i % 2 == 0 else list(variants)[::-1]:
            t = time.perf_counter()
            variants[name]()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t)
    return times


def measure_resident(args, row: str, mode: str) -> Dict[str, float]:
    """Both models in this process, steps alternating plain / LIFE; medians (time only)."""
    steps, plain, life, iters = _resident(args, row, mode)
    times = _interleaved(args, steps, iters)
    med = {n: statistics.median(v) for n, v in times.items()}
    pairs = [a / b for a, b in zip(times[life], times[plain])]  # each LIFE step against the plain step beside it
    return dict(plain_ms=1e3 * med[plain], life_ms=1e3 * med[life], time_ratio=med[life] / med[plain], **_spread(pairs))


def compare_kernels(args, row: str, mode: str) -> Dict[str, float]:
    """Plain, LIFE with the native depthwise kernel and LIFE with PyTorch's, in one process, steps interleaved (the
    order reversed every other round); per-step ratios against the plain step of the same round."""
    from lifevit.layers import dwconv

    steps, plain, life, iters = _resident(args, row, mode)
    if not dwconv.native_status().startswith("native"):
        raise SystemExit(f"--compare-kernels needs the native kernel: {dwconv.native_status()}")
    variants = {"plain": steps[plain], **_kernel_variants(dwconv, lambda i: steps[life]())}
    times = _interleaved(args, variants, iters)
    res: Dict[str, float] = {"plain_ms": 1e3 * statistics.median(times["plain"])}
    for k in ("native", "pytorch"):
        sp = _spread([a / b for a, b in zip(times[k], times["plain"])])
        res.update({f"{k}_ms": 1e3 * statistics.median(times[k]), **{f"{k}_{n}": v for n, v in sp.items()}})
    print(f"{row:12} {mode:5} plain {res['plain_ms']:.0f} ms; LIFE native {res['native_ms']:.0f} ms, "
          f"x{res['native_ratio_median']:.3f} ({res['native_ratio_q1']:.3f}-{res['native_ratio_q3']:.3f}); LIFE with "
          f"PyTorch's kernels {res['pytorch_ms']:.0f} ms, x{res['pytorch_ratio_median']:.3f} "
          f"({res['pytorch_ratio_q1']:.3f}-{res['pytorch_ratio_q3']:.3f}) (medians of {res['native_ratio_n']} per-step "
          "ratios, quartiles)", flush=True)  # fmt: skip
    return res


def _kernel_variants(dwconv, op: Callable[[int], None]) -> Dict[str, Callable[[], None]]:
    """``op`` on the next of its inputs (a call counter), with LIFE's native depthwise kernel and with PyTorch's."""
    native = dwconv._lib

    def with_kernel(lib):
        calls = itertools.count()

        def run():
            dwconv._lib = lib
            try:
                op(next(calls))
            finally:
                dwconv._lib = native

        return run

    return {"native": with_kernel(native), "pytorch": with_kernel(None)}


def compare_kernel_ops(args, row: str) -> Dict[str, float]:
    """The depthwise operations alone at the row's LIFE shapes, native kernel against PyTorch's (oneDNN), calls
    interleaved: forward convolution and weight gradient for every kernel size, reading the patch tokens in place from
    (B, N, 3, D) buffers as LIFE does. Twelve buffers in turn keep the inputs out of cache, as in a model."""
    from lifevit.layers import dwconv, life_layers

    torch = _setup(args)
    if not dwconv.native_status().startswith("native"):
        raise SystemExit(f"--compare-kernels needs the native kernel: {dwconv.native_status()}")
    img, batch = ROWS[row][2], ROWS[row][3] * args.batch_scale
    layer = next(life_layers(_build(ROWS[row][1], img, args.num_classes)))
    (H, W), P, widths = layer.grid_size, layer.num_prefix_tokens, layer.widths
    bufs = [torch.randn(batch, P + H * W, 3, sum(widths)) for _ in range(12)]
    grads = [torch.randn(batch, H * W, 3, max(widths)) for _ in range(12)]
    res: Dict[str, float] = {}
    for _ in range(2):  # the first pass is not kept: a fresh process runs these ops up to 2x slower at first
        for s, k in enumerate(layer.kernel_sizes):
            w, lo, c = torch.randn(3 * widths[s], 1, k, k), sum(widths[:s]), widths[s]

            def x_map(i, lo=lo, c=c):  # scale s's patch tokens in buffer i: (B, H*W, 3, c_s), in place
                return bufs[i % 12][:, P:, :, lo : lo + c]

            def g_map(i, c):  # an output gradient (B, H*W, 3, c_s)
                return grads[i % 12][..., :c]

            ops = {
                f"conv{k}": lambda i, w=w: dwconv.depthwise_conv(x_map(i), w, H, W),
                f"wgrad{k}": lambda i, w=w, c=c: dwconv.depthwise_weight_grad(x_map(i), g_map(i, c), w, H, W),
            }
            for name, op in ops.items():
                # a first round over the 12 buffers not kept, then 40 calls of each, interleaved
                times = _interleaved(argparse.Namespace(warmup=12, rounds=1), _kernel_variants(dwconv, op), 40)
                res.update({f"{name}_{kern}_ms": 1e3 * statistics.median(v) for kern, v in times.items()})
    print(f"{row:12} depthwise ops alone (batch {batch}, {H}x{W} maps, medians of 40 interleaved calls), native / "
          "PyTorch's: " + ", ".join(f"{n} {res[f'{n}_native_ms']:.2f} / {res[f'{n}_pytorch_ms']:.2f} ms"
                                    for n in sorted({k.rsplit('_', 2)[0] for k in res})), flush=True)  # fmt: skip
    return res


def native_phases(args, row: str, calls: int = 60) -> Dict[str, float]:
    """One LIFE layer of the row's LIFE model at its shapes against ``nn.Linear(dim, 3 D)`` (the plain model's qkv),
    calls interleaved (12 inputs in turn, out of cache), inference and training (forward + backward), and where the
    native cascade's first thread spends its time, phase by phase (a kernel built with ``LIFEVIT_NATIVE_PHASES=1``,
    which ``main`` sets). Per call: medians of the whole calls, means of the phases (one thread's share of the batch);
    "rest" is the LIFE call's mean minus the phases: thread start and join, the threads' weight-gradient sums,
    autograd and Python (and the second thread's lag, if any)."""
    from lifevit.layers import dwconv, life_layers

    torch = _setup(args)
    if dwconv.native_phases() is None:
        raise SystemExit(f"--native-phases needs the native kernel built with phases: {dwconv.native_status()}")
    img, batch = ROWS[row][2], ROWS[row][3] * args.batch_scale
    layer = next(life_layers(_build(ROWS[row][1], img, args.num_classes)))
    (H, W), P, D = layer.grid_size, layer.num_prefix_tokens, layer.out_dim
    linear = torch.nn.Linear(layer.dim, 3 * D)
    xs = [torch.randn(batch, P + H * W, layer.dim, requires_grad=True) for _ in range(12)]
    gs = [torch.randn(batch, P + H * W, 3 * D) for _ in range(12)]

    def call(m, i):  # input i of the 12 through the LIFE layer (on its grid) or the linear
        return m(xs[i % 12], grid_size=(H, W)) if m is layer else m(xs[i % 12])

    def infer(m):
        def run(i):
            with torch.no_grad():
                call(m, i)

        return run

    def train(m):
        def run(i):
            call(m, i).backward(gs[i % 12])

        return run

    res: Dict[str, float] = {}
    print(f"{row}: one LIFE layer, ({batch}, {P + H * W}, {layer.dim}) tokens, widths {layer.widths}, "
          f"{args.threads} threads; per call, ms (medians of {calls} interleaved calls; phases and rest: the "
          "cascade's first thread, means)")  # fmt: skip
    for mode, make in (("inference", infer), ("training", train)):
        variants = {}
        for name, m in (("linear", linear), ("life", layer)):
            op, calls_of = make(m), itertools.count()
            variants[name] = lambda op=op, c=calls_of: op(next(c))
        _interleaved(argparse.Namespace(warmup=0, rounds=1), variants, 12)  # first touches, not kept
        dwconv.native_phases()  # reset the sums
        times = _interleaved(argparse.Namespace(warmup=0, rounds=1), variants, calls)
        phases = dwconv.native_phases()
        med = {n: 1e3 * statistics.median(v) for n, v in times.items()}
        passes = ("forward",) if mode == "inference" else ("forward", "backward")
        parts = {f"{ps}_{ph}": 1e3 * t / calls for ps in passes for ph, t in phases[ps].items() if t > 0}
        rest = 1e3 * statistics.mean(times["life"]) - sum(parts.values())  # means, as the phases
        res.update({f"{mode}_linear_ms": med["linear"], f"{mode}_life_ms": med["life"], f"{mode}_rest_ms": rest,
                    **{f"{mode}_{k}_ms": v for k, v in parts.items()}})  # fmt: skip
        print(f"  {mode}: nn.Linear {med['linear']:.2f}, LIFE {med['life']:.2f} (x{med['life'] / med['linear']:.3f}); "
              + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()) + f"; rest {rest:.2f}", flush=True)  # fmt: skip
    return res


def _spread(ratios: List[float]) -> Dict[str, float]:
    """Quartiles of per-round (process) or per-pair (resident) ratios: how far the machine's noise moves a ratio."""
    if len(ratios) < 2:
        return {}
    q1, q2, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return dict(ratio_q1=q1, ratio_median=q2, ratio_q3=q3, ratio_n=len(ratios))


def mac_ratio(row: str, num_classes: int) -> Dict[str, float]:
    from lifevit.profile import count_macs

    plain, life, img = ROWS[row][:3]
    macs = {n: count_macs(_build(n, img, num_classes), (3, img, img)) for n in (plain, life)}
    return dict(plain_gmacs=macs[plain] / 1e9, life_gmacs=macs[life] / 1e9, mac_ratio=macs[life] / macs[plain])


# operator families of the breakdown (self CPU time of the profiler's operators, summed per family)
FAMILIES = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
    "depthwise convs": (  # PyTorch's (oneDNN) and lifevit's native kernels
        "aten::mkldnn_convolution", "aten::convolution_backward", "lifevit::depthwise_conv",
        "lifevit::depthwise_weight_grad", "lifevit::depthwise_backward",
    ),
    "copies": ("aten::copy_", "aten::cat", "aten::clone", "aten::contiguous"),
    "attention": (
        "aten::_scaled_dot_product_flash_attention_for_cpu",
        "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
    ),
}  # fmt: skip


def breakdown(args, row: str, mode: str, steps: int = 3) -> List[Dict[str, float]]:
    """Self CPU time per step by operator family (torch.profiler), plain and LIFE, and the difference.

    The families cover the operators whose time LIFE changes: its three projections replace the one qkv matmul
    (the same MACs), its depthwise convs (forward, and backward with the recomputation), the copies into its output
    buffer; "other" is everything else (norms, GELU, the optimizer, ...). Profiling adds its own overhead, so the
    totals run above the plain timings.
    """
    from torch.profiler import ProfilerActivity, profile

    torch = _setup(args)
    device = torch.device(args.device)
    plain, life, img, batch, _ = ROWS[row]
    family_of = {op: fam for fam, ops in FAMILIES.items() for op in ops}
    per_family: Dict[str, Dict[str, float]] = {}
    for name in (plain, life):
        step = _stepper(torch, _build(name, img, args.num_classes), mode, batch * args.batch_scale, img,
                        args.num_classes, device, False)  # fmt: skip
        for _ in range(args.warmup):
            step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
        fams: Dict[str, float] = {f: 0.0 for f in (*FAMILIES, "other")}
        for e in prof.key_averages():
            if e.key.startswith(("aten::", "lifevit::", "Optimizer", "_Scales")):
                fams[family_of.get(e.key, "other")] += e.self_cpu_time_total / 1e3 / steps
        per_family[name] = fams
    total = {n: sum(v.values()) for n, v in per_family.items()}
    print(f"{row} {mode}: self CPU per step {total[plain]:.1f} -> {total[life]:.1f} ms "
          f"(x{total[life] / total[plain]:.3f}), by operator family:")  # fmt: skip
    out = []
    for fam in (*FAMILIES, "other"):
        a, b = per_family[plain][fam], per_family[life][fam]
        out.append(dict(row=row, mode=mode, family=fam, plain_ms=a, life_ms=b))
        print(
            f"  {fam:24} {a:8.1f} -> {b:8.1f} ms  ({b - a:+7.1f} ms, {100 * (b - a) / total[plain]:+5.1f} % of plain)"
        )
    return out


def _cpu_name() -> str:
    """The CPU's model name, with its family / model numbers and L2 size where Linux gives them: two VMs that both
    say "Intel(R) Xeon(R) Processor" can be different generations with different caches (and ratios)."""
    try:
        with open("/proc/cpuinfo") as f:
            info = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        name = info.get("model name") or platform.processor() or "cpu"
        extra = []
        if "cpu family" in info and "model" in info:
            extra.append(f"family {info['cpu family']} model {info['model']}")
        l2 = Path("/sys/devices/system/cpu/cpu0/cache/index2/size")
        if l2.is_file():
            extra.append(f"L2 {l2.read_text().strip()} per core")
        return f"{name} ({', '.join(extra)})" if extra else name
    except OSError:
        return platform.processor() or "cpu"


def _line(r: Dict) -> str:
    mem = ""
    if "mem_ratio" in r:
        mem = f"   peak x{r['mem_ratio']:.3f} ({r['plain_peak_mb']:.0f} -> {r['life_peak_mb']:.0f} MiB)"
    if "tensor_mem_ratio" in r:
        tensors = f"({r['plain_tensor_peak_mb']:.1f} -> {r['life_tensor_peak_mb']:.1f} MiB)"
        mem += f"   tensors x{r['tensor_mem_ratio']:.3f} {tensors}"
    times = f"{r['plain_ms']:8.1f} -> {r['life_ms']:8.1f} ms  time x{r['time_ratio']:.3f}"
    if "ratio_q1" in r:
        times += f" (quartiles {r['ratio_q1']:.3f}-{r['ratio_q3']:.3f} of {r['ratio_n']})"
    return f"{r['row']:12} {r['way']:8} {r['mode']:5} {times}  MACs x{r['mac_ratio']:.3f}{mem}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--modes", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    p.add_argument("--ways", nargs="+", default=["process", "resident"], choices=["process", "resident"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-scale", type=int, default=1, help="multiply every row's batch (e.g. 16 on a GPU)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (process) / step blocks (resident)")
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--allocator", default="system", choices=["system", "keep"], help="glibc defaults or keep")
    p.add_argument("--compile", action="store_true", help="torch.compile both models (minutes of compilation)")
    p.add_argument("--breakdown", action="store_true", help="per-operator self CPU time, LIFE minus plain (profiler)")
    p.add_argument(
        "--compare-kernels",
        action="store_true",
        help="plain vs LIFE with the native depthwise kernel vs with PyTorch's, interleaved in one process",
    )
    p.add_argument(
        "--native-phases", action="store_true", help="one LIFE layer vs nn.Linear, the native cascade phase by phase"
    )
    p.add_argument("--update", action="store_true", help="replace only the measured rows in an existing --output")
    p.add_argument("--output", type=Path, default=None, help="JSON (default benchmarks/results/life_overhead.json)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--row", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    if args.native_phases:
        os.environ["LIFEVIT_NATIVE_PHASES"] = "1"  # before the kernel is first built: its instrumented build
        for row in args.rows:
            native_phases(args, row)
        return None

    if args.breakdown or args.compare_kernels:
        for row in args.rows:
            if args.compare_kernels:
                compare_kernel_ops(args, row)
            for mode in args.modes:
                (breakdown if args.breakdown else compare_kernels)(args, row, mode)
        return None

    import torch

    start = time.time()
    rows = []
    for row in args.rows:
        macs = mac_ratio(row, args.num_classes)
        plain, life, img, batch = ROWS[row][:4]
        for way in args.ways:
            for mode in args.modes:
                r = (measure_process if way == "process" else measure_resident)(args, row, mode)
                r = dict(row=row, plain=plain, life=life, img_size=img, batch=batch * args.batch_scale, way=way,
                         mode=mode, **r, **macs)  # fmt: skip
                rows.append(r)
                print(_line(r), flush=True)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else _cpu_name()
    meta = dict(
        device=args.device, device_name=device_name, threads=args.threads, rounds=args.rounds,
        allocator=args.allocator, compile=args.compile, torch=torch.__version__, cpu_count=os.cpu_count(),
        date=time.strftime("%Y-%m-%d %H:%M"), seconds=round(time.time() - start),
        command=" ".join(sys.argv[1:]),
    )  # fmt: skip
    out = args.output or RESULTS / "life_overhead.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.update and out.is_file():  # keep the other rows (and the meta of the run that measured them)
        old = json.loads(out.read_text())
        key = lambda r: (r["row"], r["way"], r["mode"])  # noqa: E731
        new = {key(r) for r in rows}
        kept = [r for r in old["rows"] if key(r) not in new]
        if kept:  # this run's meta beside the one of the run that measured the rows kept
            meta = dict(old["meta"], updates=[*old["meta"].get("updates", []), meta])
        rows = kept + rows
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out} in {round(time.time() - start)} s")


if __name__ == "__main__":
    main()
