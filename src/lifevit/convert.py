"""``lifeify``: give an existing timm ViT / DeiT / SwinV2 model LIFE qkv projections, keeping its other weights.

This is how a model starts from ImageNet weights and is fine-tuned with LIFE (the paper's "ImageNet-1k
initialization" rows)::

    model = timm.create_model("deit_small_patch16_224", pretrained=True, num_classes=100)
    lifevit.lifeify(model)  # in place; returns the model

Every qkv projection (``block.attn.qkv`` of a ViT, ``qkv`` + ``q_bias``/``v_bias`` of a SwinV2 window
attention) is replaced by a :class:`~lifevit.layers.LIFE`; every other parameter and buffer is left as it is
(same tensors, bit-identical values).

Initialisation of the LIFE from the pretrained projection ``W`` (rows ``[q | k | v]``) and bias ``b``:

* ``init="slice"`` (default): scale 1 takes the rows of ``W`` and ``b`` for the first ``c_1`` channels of each
  of q, k and v, so it reproduces that slice of the original q/k/v exactly (with widths split evenly, the first
  third of every head's channels for 3 heads, the first heads for more heads: with 6 heads of 64 channels and
  c_1 = 128, heads 0-1 of q, k and v are exactly the pretrained ones). The depthwise convs keep PyTorch's default
  initialisation and the pointwise layers the LIFE layer's ``pointwise_init`` (by default PyTorch's kaiming-uniform,
  as in the release): scales 2 and 3 start from scratch and are learned during fine-tuning.
* ``init="preserve"``: the converted model computes the same function as the pretrained one. Scale 1 as above;
  the depthwise kernels start as identities (centre tap 1), and each pointwise layer ``P_s`` is the
  least-squares solution of ``P_s A_{s-1} = W_s`` (``A_{s-1}``: effective weight of the previous scale, ``W_s``:
  the pretrained rows of scale s) with the bias that makes the scale's bias the pretrained one. Exact when
  ``3 * c_{s-1} >= dim`` (widths 192, 384, 768 split in 3; not 256) and ``A_{s-1}`` has full rank. Caveat,
  measured: the cascade multiplies by ``A_{s-1}^-1``, so the pointwise weights grow with the condition number of
  the weight slices (entries of ~5e3 for a freshly initialised DeiT-T block, condition number ~760) and float32
  round-off is amplified by roughly the product of the condition numbers (about 7 % relative output error for
  that block in float32, 1e-12 in float64). Useful to check a conversion in float64; for fine-tuning prefer
  ``"slice"``, whose weights are of ordinary size. Its pointwise layers have biases (where the qkv has one), so
  its state dict loads into the registered ``*_life`` model built with ``life_options={"pointwise_bias": True}``;
  ``"slice"`` gives LIFE's default layout (no pointwise bias), which loads into the registered model as it is.

The model is then made to track its token grid: a ViT's class is switched to the matching
:class:`~lifevit.layers.TokenGridMixin` subclass (``VisionTransformer`` -> ``LIFEVisionTransformer``,
``VisionTransformerDistilled`` -> ``LIFEVisionTransformerDistilled``, T2T-ViT -> ``LIFET2TVisionTransformer``),
and a SwinV2 window attention becomes a :class:`~lifevit.models.swinv2.LIFEWindowAttention` (grid = window).
"""

from __future__ import annotations

import logging
import math
from typing import Optional, Sequence

import torch
from timm.layers import Attention
from timm.models.deit import VisionTransformerDistilled
from timm.models.swin_transformer_v2 import SwinTransformerV2, WindowAttention
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .layers import LIFE, TokenGridMixin, set_token_layout, split_widths
from .models.swinv2 import LIFEWindowAttention
from .models.t2t_vit import LIFET2TVisionTransformer, T2TVisionTransformer
from .models.vit import LIFEVisionTransformer, LIFEVisionTransformerDistilled

__all__ = ["lifeify", "init_life_from_linear", "INIT_MODES"]

_logger = logging.getLogger(__name__)

INIT_MODES = ("slice", "preserve")

# plain class -> its LIFE class (exact classes only: a subclass may change the forward pass in ways lifeify
# cannot know about)
_VIT_CLASSES = {
    VisionTransformer: LIFEVisionTransformer,
    VisionTransformerDistilled: LIFEVisionTransformerDistilled,
    T2TVisionTransformer: LIFET2TVisionTransformer,
}


def _scale_rows(t: torch.Tensor, widths: Sequence[int], scale: int) -> torch.Tensor:
    """Rows of a ``[q | k | v]`` weight (3 * D, ...) or bias (3 * D,) that belong to ``scale``, as [q_s|k_s|v_s]."""
    start = sum(widths[:scale])
    qkv = t.reshape(3, sum(widths), *t.shape[1:])  # (3, D, ...)
    return qkv[:, start : start + widths[scale]].reshape(3 * widths[scale], *t.shape[1:])


@torch.no_grad()
def init_life_from_linear(
    life: LIFE, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, init: str = "slice"
) -> float:
    """Initialise ``life`` from a qkv linear projection (``weight``: (3 * out_dim, dim), rows ``[q | k | v]``).

    Args:
        life: The LIFE layer to initialise (its ``out_dim`` and ``dim`` must match ``weight``).
        weight: Pretrained qkv weight.
        bias: Pretrained qkv bias (3 * out_dim,), or ``None`` for zero.
        init: ``"preserve"`` or ``"slice"`` (see the module docstring).

    Returns:
        The relative error ``|A - W| / |W|`` of the effective (identity-kernel) projection of the LIFE against
        ``weight`` over all scales; 0 up to round-off for an exact ``"preserve"`` conversion, NaN for ``"slice"``
        (whose scales 2 and 3 do not try to reproduce ``weight``).
    """
    if init not in INIT_MODES:
        raise ValueError(f"init must be one of {INIT_MODES}, got {init!r}")
    expected = (3 * life.out_dim, life.dim)
    if tuple(weight.shape) != expected:
        raise ValueError(f"qkv weight of shape {expected} expected for {life!r}, got {tuple(weight.shape)}")
    widths = life.widths
    W = weight.detach().double()
    b = torch.zeros(W.shape[0], dtype=torch.float64, device=W.device) if bias is None else bias.detach().double()

    life.linear.weight.copy_(_scale_rows(W, widths, 0))
    if life.linear.bias is not None:
        life.linear.bias.copy_(_scale_rows(b, widths, 0))
    if init == "slice":
        life.init_weights()  # the pointwise layers' own init (``pointwise_init``)
        return float("nan")

    A = _scale_rows(W, widths, 0)  # effective weight of the current scale, (3 * c_s, dim)
    a = _scale_rows(b, widths, 0) if life.linear.bias is not None else torch.zeros_like(A[:, 0])
    errors = [torch.zeros(())]
    for s, (dw, pw) in enumerate(zip(life.depthwise, life.pointwise), start=1):
        nn.init.zeros_(dw.weight)
        k = dw.kernel_size[0]
        dw.weight[:, 0, k // 2, k // 2] = 1.0  # identity kernel
        target_w, target_b = _scale_rows(W, widths, s), _scale_rows(b, widths, s)
        P = target_w @ torch.linalg.pinv(A, rtol=1e-6)  # (3 * c_s, 3 * c_{s-1}), least squares P A = W_s
        pw.weight.copy_(P)
        A = P @ A
        if pw.bias is not None:
            pw.bias.copy_(target_b - P @ a)
            a = target_b
        else:
            a = P @ a
        errors.append(((A - target_w).norm() ** 2).cpu())
    return float(torch.stack(errors).sum().sqrt() / W.norm().cpu())


def _pointwise_bias(init: str) -> Optional[bool]:
    """``slice``: LIFE's default (no pointwise bias), so the result loads into the registered ``*_life`` model;
    ``preserve``: a pointwise bias wherever the qkv has one (``None``), which reproducing the qkv bias needs."""
    return None if init == "preserve" else False


def _lifeify_vit(model: VisionTransformer, kernel_sizes: Sequence[int], init: str) -> float:
    for i, block in enumerate(model.blocks):  # check every block before changing any
        attn = getattr(block, "attn", None)
        if not isinstance(attn, Attention) or not isinstance(getattr(attn, "qkv", None), nn.Linear):
            raise ValueError(
                f"lifeify expects block {i} of {type(model).__name__} to have a timm Attention with a Linear qkv, "
                f"got {type(attn).__name__} with qkv {type(getattr(attn, 'qkv', None)).__name__}"
            )
    worst = 0.0
    for block in model.blocks:
        attn = block.attn
        qkv = attn.qkv
        life = LIFE(
            qkv.in_features,
            num_prefix_tokens=model.num_prefix_tokens,
            kernel_sizes=kernel_sizes,
            qkv_bias=qkv.bias is not None,
            pointwise_bias=_pointwise_bias(init),
            out_dim=qkv.out_features // 3,
            device=qkv.weight.device,
            dtype=qkv.weight.dtype,
        )
        err = init_life_from_linear(life, qkv.weight, qkv.bias, init)
        worst = worst if math.isnan(err) else max(worst, err)  # nan for "slice"
        attn.qkv = life
    model.__class__ = _VIT_CLASSES[type(model)]
    set_token_layout(model, model.token_grid(model.patch_embed.img_size), model.num_prefix_tokens)
    return worst


def _lifeify_swinv2(model: SwinTransformerV2, kernel_sizes: Sequence[int], init: str) -> float:
    worst = 0.0
    for module in [m for m in model.modules() if isinstance(m, WindowAttention)]:
        weight = module.qkv.weight
        if module.q_bias is None:
            bias = None
        else:
            bias = torch.cat((module.q_bias, torch.zeros_like(module.q_bias), module.v_bias))
        attn = LIFEWindowAttention.from_window_attention(
            module, kernel_sizes, {"pointwise_bias": _pointwise_bias(init)}
        )
        err = init_life_from_linear(attn.qkv, weight, bias, init)
        worst = worst if math.isnan(err) else max(worst, err)
    return worst


def _qkv_dims(model: nn.Module):
    """(input dim, q/k/v width) of every qkv projection lifeify would convert."""
    if type(model) is SwinTransformerV2:
        return [(m.dim, m.dim) for m in model.modules() if isinstance(m, WindowAttention)]
    blocks = getattr(model, "blocks", [])
    return [(b.attn.qkv.in_features, b.attn.qkv.out_features // 3) for b in blocks if hasattr(b, "attn")]


def _check_exact(model: nn.Module, kernel_sizes: Sequence[int]) -> None:
    for dim, out_dim in _qkv_dims(model):
        widths = split_widths(out_dim, len(kernel_sizes) + 1)
        if any(3 * c < dim for c in widths[:-1]):
            raise ValueError(
                f"init='preserve' cannot reproduce a qkv projection of width {out_dim} from {dim} channels exactly: "
                f"the scale widths {widths} need 3 * c >= {dim} for every scale but the last; "
                "pass strict=False to accept the least-squares approximation, or init='slice'"
            )


def lifeify(
    model: nn.Module, kernel_sizes: Sequence[int] = (3, 5), init: str = "slice", strict: bool = True
) -> nn.Module:
    """Replace the qkv projections of a timm ViT / DeiT (distilled too), T2T-ViT or SwinV2 model by LIFE, in place.

    Args:
        model: A ``VisionTransformer``, ``VisionTransformerDistilled``, lifevit ``T2TVisionTransformer`` or
            ``SwinTransformerV2`` instance (exact classes) without LIFE.
        kernel_sizes: LIFE depthwise kernels after scale 1.
        init: ``"slice"`` (scale 1 from the original weights, the other scales fresh) or ``"preserve"`` (the
            converted model computes the original function, see the caveat in the module docstring).
        strict: With ``init="preserve"``, refuse (before changing anything) a model whose qkv width cannot be
            reproduced exactly: every scale but the last needs ``3 * c_s >= dim`` (e.g. width 256 splits into
            (86, 85, 85) and scale 3 cannot be exact). With ``strict=False`` the least-squares approximation is used
            and its error logged.

    Returns:
        ``model`` itself, converted.
    """
    if init not in INIT_MODES:
        raise ValueError(f"init must be one of {INIT_MODES}, got {init!r}")
    if isinstance(model, TokenGridMixin) or any(isinstance(m, LIFE) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} already has LIFE layers")
    if type(model) not in _VIT_CLASSES and type(model) is not SwinTransformerV2:
        known = ", ".join(sorted(c.__name__ for c in (*_VIT_CLASSES, SwinTransformerV2)))
        raise ValueError(f"lifeify does not know the architecture {type(model).__name__}; it converts: {known}")
    if init == "preserve" and strict:
        _check_exact(model, kernel_sizes)
    if type(model) is SwinTransformerV2:
        err = _lifeify_swinv2(model, kernel_sizes, init)
    else:
        err = _lifeify_vit(model, kernel_sizes, init)
    if init == "preserve":
        level = logging.WARNING if err > 1e-4 else logging.INFO
        _logger.log(level, "lifeify: converted %s, relative qkv weight error %.1e", type(model).__name__, err)
    return model
