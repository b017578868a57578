"""Model cost: parameters, MACs and train / inference throughput.

MACs are counted with PyTorch's ``FlopCounterMode`` (one multiply-add = 2 FLOPs = 1 MAC) over one forward
pass of a single image. It counts every convolution with its real weight shape, so depthwise convs are
included, every matmul and linear layer, and scaled-dot-product attention (PyTorch has no formula for the
CPU flash kernel, so lifevit adds one: QK^T and AV, the same count as the explicit matmuls). Element-wise
ops (softmax, norms, activations) are not counted, as in the paper's and most papers' tables.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

__all__ = [
    "ModelCost",
    "count_params",
    "count_macs",
    "measure_throughput",
    "profile_model",
    "PAPER_COST_TABLE",
    "paper_cost_table",
]


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_CUSTOM_FLOPS = {}
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    _CUSTOM_FLOPS[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flops


@dataclass
class ModelCost:
    """What :func:`profile_model` measures. Throughput fields are ``None`` when not measured."""

    model: str
    img_size: Tuple[int, int]
    in_chans: int
    num_classes: int
    params: int
    macs: int
    device: str
    batch_size: int
    train_img_per_s: Optional[float] = None
    infer_img_per_s: Optional[float] = None
    train_peak_mem_mb: Optional[float] = None
    infer_peak_mem_mb: Optional[float] = None

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    def as_dict(self) -> Dict[str, Any]:
        return dict(asdict(self), params_m=round(self.params_m, 4), gmacs=round(self.gmacs, 4))


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_macs(model: nn.Module, input_size: Tuple[int, int, int]) -> int:
    """Multiply-accumulates of one forward pass on one image of ``input_size`` = (C, H, W)."""
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    x = torch.zeros(1, *input_size, device=param.device, dtype=param.dtype)
    counter = FlopCounterMode(display=False, custom_mapping=_CUSTOM_FLOPS)
    with counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2


def _rss_mb() -> Optional[float]:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):  # not Linux
        return None


class _PeakRSS:
    """Samples the process's resident memory every ``interval`` s; ``peak_mb`` is the highest value seen."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval, self.peak_mb = interval, None
        self._stop = threading.Event()

    def _run(self, start: float) -> None:
        peak = start
        while not self._stop.is_set():
            peak = max(peak, _rss_mb() or peak)
            time.sleep(self.interval)
        self.peak_mb = max(peak, _rss_mb() or peak)

    def __enter__(self) -> _PeakRSS:
        start = _rss_mb()
        if start is not None:
            self._thread = threading.Thread(target=self._run, args=(start,), daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if getattr(self, "_thread", None) is not None:
            self._thread.join()


def measure_throughput(
    model: nn.Module,
    input_size: Tuple[int, int, int],
    batch_size: int = 64,
    train: bool = False,
    warmup: int = 3,
    iters: int = 10,
    num_classes: Optional[int] = None,
) -> Tuple[float, Optional[float]]:
    """Images per second of inference (``train=False``) or of a full training step (forward, cross-entropy
    backward, AdamW step), and the peak memory those steps take.

    Returns ``(img_per_s, peak_memory_mb)``: the median step time over ``iters`` timed steps, and on CUDA
    ``torch.cuda.max_memory_allocated`` over the steps; on CPU the peak resident memory of the whole
    process during the steps, sampled every 2 ms (``None`` where ``/proc`` is unavailable). Freed memory
    is not always returned to the OS, so on CPU measure inference before training (as
    :func:`profile_model` does) or use a fresh process per measurement (``benchmarks/life_overhead.py``).
    """
    param = next(model.parameters())
    device = param.device
    x = torch.randn(batch_size, *input_size, device=device)
    num_classes = num_classes or getattr(model, "num_classes", 1000)
    target = torch.randint(0, max(num_classes, 1), (batch_size,), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if train else None
    was_training = model.training
    model.train(train)

    def step() -> None:
        if train:
            optimizer.zero_grad(set_to_none=True)
            out = model(x)
            out = out[0] if isinstance(out, (tuple, list)) else out
            nn.functional.cross_entropy(out, target).backward()
            optimizer.step()
        else:
            with torch.inference_mode():
                model(x)

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    with _PeakRSS() as rss:
        for _ in range(warmup):
            step()
        for _ in range(iters):
            start = time.perf_counter()
            step()
            if cuda:
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    model.train(was_training)
    times.sort()
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else rss.peak_mb
    return batch_size / times[len(times) // 2], peak


def profile_model(
    name: str,
    img_size: Optional[int] = None,
    num_classes: Optional[int] = None,
    in_chans: Optional[int] = None,
    batch_size: int = 64,
    device: str = "cpu",
    throughput: bool = True,
    iters: int = 10,
    **model_kwargs: Any,
) -> ModelCost:
    """Build ``name`` from timm's registry (lifevit models included) and measure its cost.

    Args:
        name: Registered model name.
        img_size: Input side in pixels (default: the model's own).
        num_classes: Classifier outputs (default: the model's own).
        in_chans: Input channels (default: the model's own).
        batch_size: Batch for the throughput measurement.
        device: ``cpu`` or ``cuda``.
        throughput: Also measure train and inference throughput.
        iters: Timed steps per throughput measurement.
    """
    import timm

    import lifevit.models  # noqa: F401  (registers the models)

    if name not in timm.list_models():
        raise ValueError(f"unknown model {name!r}; lifevit models: {', '.join(lifevit.models.list_lifevit_models())}")
    kwargs = dict(model_kwargs)
    if img_size is not None:
        kwargs["img_size"] = img_size
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    model = timm.create_model(name, **kwargs).to(device)
    cfg = model.pretrained_cfg
    c = in_chans or cfg["input_size"][0]
    hw = (img_size, img_size) if img_size else tuple(cfg["input_size"][1:])
    cost = ModelCost(
        model=name,
        img_size=hw,
        in_chans=c,
        num_classes=model.num_classes,
        params=count_params(model),
        macs=count_macs(model, (c, *hw)),
        device=str(torch.device(device)),
        batch_size=batch_size,
    )
    if throughput:  # inference first: on CPU, memory freed after training is not always given back
        cost.infer_img_per_s, cost.infer_peak_mem_mb = measure_throughput(
            model, (c, *hw), batch_size, train=False, iters=iters
        )
        cost.train_img_per_s, cost.train_peak_mem_mb = measure_throughput(
            model, (c, *hw), batch_size, train=True, iters=iters
        )
    return cost


# ------------------------------------------------------------------------------------------ the paper's cost table
@dataclass(frozen=True)
class PaperCostRow:
    """One row of the paper's cost table and the model / input it was inferred to be (see docs/backbones.md)."""

    label: str
    model: str  # registered model name
    img_size: int
    paper_params_m: Optional[float]
    paper_gmacs: Optional[float]
    note: str = ""


# Akkaya et al. 2024, cost table (100 classes). Resolutions inferred: the DeiT and T2T rows match at 224 px, SwinV2-T
# at 256 px (window 8, timm's swinv2_tiny_window8_256), the ResNets at 256 px with the ImageNet stem (at 224 px
# ResNet-18 has 1.81 GMACs; with a CIFAR stem at 64 px 2.22 GMACs and 11.22 M params).
PAPER_COST_TABLE: Tuple[PaperCostRow, ...] = (
    PaperCostRow("DeiT-T", "deit_tiny_patch16_224", 224, 5.54, 1.26),
    PaperCostRow("DeiT-T-LIFE", "deit_tiny_patch16_224_life", 224, 5.62, 1.27),
    PaperCostRow("T2T-ViT-12", "t2t_vit_12", 224, 6.66, 1.74),
    PaperCostRow("T2T-ViT-12-LIFE", "t2t_vit_12_life", 224, 6.59, 1.71, "paper's LIFE row is below the plain one"),
    PaperCostRow("DeiT-S", "deit_small_patch16_224", 224, 21.70, 4.61),
    PaperCostRow("DeiT-S-LIFE", "deit_small_patch16_224_life", 224, 21.85, 4.64),
    PaperCostRow("SwinV2-T", "swinv2_tiny_window8_256", 256, 27.72, 5.95),
    PaperCostRow("SwinV2-T-LIFE", "swinv2_tiny_window8_256_life", 256, 27.88, 6.01),
    PaperCostRow("ResNet-18", "resnet18", 256, 11.23, 2.37, "ImageNet stem"),
    PaperCostRow("ResNet-50", "resnet50", 256, 23.71, 5.35, "ImageNet stem"),
)


def paper_cost_table(num_classes: int = 100, rows: Tuple[PaperCostRow, ...] = PAPER_COST_TABLE) -> list:
    """Parameters (trainable, in M) and GMACs of each row's model next to the paper's numbers.

    Returns:
        One dict per row: ``label``, ``model``, ``img_size``, ``params_m``, ``gmacs``, ``paper_params_m``,
        ``paper_gmacs``, ``note``.
    """
    import timm

    import lifevit.models  # noqa: F401  (registers the models)

    out = []
    for row in rows:
        model = timm.create_model(row.model, num_classes=num_classes)
        in_chans = model.pretrained_cfg["input_size"][0]
        out.append(
            dict(
                label=row.label,
                model=row.model,
                img_size=row.img_size,
                params_m=count_params(model, trainable_only=True) / 1e6,
                gmacs=count_macs(model, (in_chans, row.img_size, row.img_size)) / 1e9,
                paper_params_m=row.paper_params_m,
                paper_gmacs=row.paper_gmacs,
                note=row.note,
            )
        )
    return out
