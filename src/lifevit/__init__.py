"""lifevit: Vision Transformers for small data sets, with LIFE (Local InFormation Enhancer).

``import lifevit`` registers the lifevit models in timm's registry, so ``timm.create_model`` builds them.
"""

from .convert import lifeify
from .layers import LIFE, LIFEAttention
from .models import list_lifevit_models

__version__ = "0.1.0"

__all__ = ["LIFE", "LIFEAttention", "lifeify", "list_lifevit_models", "__version__"]
