"""lifevit: Vision Transformers for small data sets, with LIFE (Local InFormation Enhancer).

``import lifevit`` registers the lifevit models in timm's registry, so ``timm.create_model`` builds them.
"""

import importlib
import sys

__version__ = "0.2.0"

__all__ = ["LIFE", "LIFEAttention", "lifeify", "list_lifevit_models", "__version__"]

_ATTRIBUTES = {"LIFE": ".layers", "LIFEAttention": ".layers", "lifeify": ".convert", "list_lifevit_models": ".models"}


def __getattr__(name):
    if name in _ATTRIBUTES:
        return getattr(importlib.import_module(_ATTRIBUTES[name], __name__), name)
    raise AttributeError(f"module 'lifevit' has no attribute {name!r}")


if "lifevit_cli" not in sys.modules:  # the console script imports torch only for the command it runs
    from .convert import lifeify
    from .layers import LIFE, LIFEAttention
    from .models import list_lifevit_models
