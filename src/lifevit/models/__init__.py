"""Models: importing this registers every lifevit model in timm's registry."""

from timm.layers import register_notrace_module

from ..layers import LIFE

# importing the modules registers their models: ViT / DeiT, T2T-ViT-12, SwinV2, CIFAR-stem ResNets
from . import resnet, swinv2, t2t_vit, vit  # noqa: F401
from ._registry import TORCHSCRIPT_EXCLUDE_FILTERS, list_lifevit_models
from .vit import LIFEVisionTransformer, LIFEVisionTransformerDistilled

# FX: LIFE checks its input and infers its grid in Python, so symbolic tracing keeps it as one leaf module (as
# timm does for its own such layers); its grid is the one the model set while tracing. timm's FX feature
# extraction (features_only=True, feature_cls="fx"; timm.models.create_feature_extractor) uses this registry.
register_notrace_module(LIFE)

__all__ = [
    "LIFEVisionTransformer",
    "LIFEVisionTransformerDistilled",
    "TORCHSCRIPT_EXCLUDE_FILTERS",
    "list_lifevit_models",
]
