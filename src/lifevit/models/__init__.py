"""Models: importing this registers every lifevit model in timm's registry."""

# importing the modules registers their models: ViT / DeiT, T2T-ViT-12, SwinV2, CIFAR-stem ResNets
from . import resnet, swinv2, t2t_vit, vit  # noqa: F401
from ._registry import list_lifevit_models
from .vit import LIFEVisionTransformer, LIFEVisionTransformerDistilled

__all__ = ["LIFEVisionTransformer", "LIFEVisionTransformerDistilled", "list_lifevit_models"]
