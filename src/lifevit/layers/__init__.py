"""Layers: the LIFE projection and the attention that uses it."""

from .attention import LIFEAttention, TokenGridMixin, life_layers, set_token_layout
from .life import LIFE, split_widths

__all__ = ["LIFE", "LIFEAttention", "TokenGridMixin", "life_layers", "set_token_layout", "split_widths"]
