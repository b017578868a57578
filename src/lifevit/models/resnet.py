"""ResNet-18 / ResNet-50 baselines with a CIFAR stem, on timm's ``ResNet``.

The ImageNet stem (7x7 stride-2 conv + 3x3 stride-2 max-pool) shrinks a 32 px image to 8x8 before the first
stage; small-image papers replace it with a single 3x3 stride-1 conv and no pooling, so the four stages see
32/16/8/4 px (CIFAR) or 64/32/16/8 px (Tiny-ImageNet). :class:`CifarResNet` is timm's ``ResNet`` with that stem;
every block, the head and the weight initialisation are timm's. The ImageNet-size baselines are timm's own
``resnet18`` / ``resnet50``.

Registered names:

==================  ===========  ===========================
name                blocks       default input / classes
==================  ===========  ===========================
resnet18_cifar_32   2-2-2-2      3x32x32 / 100 (CIFAR)
resnet18_cifar_64   2-2-2-2      3x64x64 / 200 (Tiny-ImageNet)
resnet50_cifar_32   3-4-6-3 (b)  3x32x32 / 100 (CIFAR)
resnet50_cifar_64   3-4-6-3 (b)  3x64x64 / 200 (Tiny-ImageNet)
resnet18_lite_28    2-2-2-2 (q)  1x28x28 / 10 (Fashion-MNIST)
==================  ===========  ===========================

(b): bottleneck blocks. (q): quarter width, stages of 16-32-64-128 channels after timm's 64-channel stem
conv; the CNN baseline of the CPU-scale ``vit_lite_patch4_28`` pair (0.71 M parameters, about the same
training step time on a CPU). The model takes any input size; the name only sets the default config.
"""

from __future__ import annotations

from typing import Any, Dict

from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

from ..data.fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from ._registry import cfg, check_pretrained, register, small_image_cfg

__all__ = ["CifarResNet"]


class CifarResNet(ResNet):
    """timm ``ResNet`` with a CIFAR stem: one 3x3 stride-1 conv (``conv1``), BN, ReLU and no max-pool.

    Args:
        **kwargs: Passed to timm's ``ResNet`` (``block``, ``layers``, ``in_chans``, ``num_classes``, ...).
            ``stem_type`` must stay ``''``: the deep stems are ImageNet stems.
    """

    def __init__(self, *args, **kwargs) -> None:
        if kwargs.get("stem_type", ""):
            raise ValueError(f"CifarResNet has its own stem; stem_type must be '', got {kwargs['stem_type']!r}")
        super().__init__(*args, **kwargs)
        in_chans = self.conv1.in_channels
        planes = self.conv1.out_channels
        weight = self.conv1.weight
        self.conv1 = nn.Conv2d(
            in_chans, planes, kernel_size=3, stride=1, padding=1, bias=False, device=weight.device, dtype=weight.dtype
        )
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")  # as timm inits convs
        self.maxpool = nn.Identity()
        # the stem no longer downsamples: every feature map is 4x larger than with the ImageNet stem
        for info in self.feature_info:
            info["reduction"] = max(1, info["reduction"] // 4)


def _cifar_cfg(res: int) -> Dict[str, Any]:
    return small_image_cfg(
        res,
        first_conv="conv1",
        classifier="fc",
        pool_size=(res // 8, res // 8),
    )


default_cfgs = generate_default_cfgs(
    {
        **{f"resnet{depth}_cifar_{res}": _cifar_cfg(res) for depth in (18, 50) for res in (32, 64)},
        "resnet18_lite_28": cfg(
            input_size=(1, 28, 28),
            num_classes=10,
            mean=FASHION_MNIST_MEAN,
            std=FASHION_MNIST_STD,
            first_conv="conv1",
            classifier="fc",
            pool_size=(4, 4),
        ),
    }
)

_R18: Dict[str, Any] = dict(block=BasicBlock, layers=(2, 2, 2, 2))
_R50: Dict[str, Any] = dict(block=Bottleneck, layers=(3, 4, 6, 3))
_R18_LITE: Dict[str, Any] = dict(_R18, channels=(16, 32, 64, 128), in_chans=1)


def _resnet(variant: str, pretrained: bool, arch: Dict[str, Any], kwargs: Dict[str, Any]) -> ResNet:
    check_pretrained(variant, pretrained, kwargs)
    kwargs.pop("img_size", None)  # a ResNet takes any size; accepted so every lifevit model takes img_size
    return build_model_with_cfg(CifarResNet, variant, pretrained=pretrained, **dict(arch, **kwargs))


@register
def resnet18_cifar_32(pretrained: bool = False, **kwargs) -> ResNet:
    return _resnet("resnet18_cifar_32", pretrained, _R18, kwargs)


@register
def resnet18_cifar_64(pretrained: bool = False, **kwargs) -> ResNet:
    return _resnet("resnet18_cifar_64", pretrained, _R18, kwargs)


@register
def resnet50_cifar_32(pretrained: bool = False, **kwargs) -> ResNet:
    return _resnet("resnet50_cifar_32", pretrained, _R50, kwargs)


@register
def resnet50_cifar_64(pretrained: bool = False, **kwargs) -> ResNet:
    return _resnet("resnet50_cifar_64", pretrained, _R50, kwargs)


@register
def resnet18_lite_28(pretrained: bool = False, **kwargs) -> ResNet:
    return _resnet("resnet18_lite_28", pretrained, _R18_LITE, kwargs)
