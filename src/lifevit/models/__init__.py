"""Models: importing this registers every lifevit model in timm's registry."""

from . import vit  # noqa: F401  (registers the ViT / DeiT models)
from ._registry import list_lifevit_models
from .vit import LIFEVisionTransformer, LIFEVisionTransformerDistilled

__all__ = ["LIFEVisionTransformer", "LIFEVisionTransformerDistilled", "list_lifevit_models"]
