"""Layers: the LIFE projection and the attention that uses it."""

from .attention import LIFEAttention, TokenGridMixin, life_layers, set_token_layout
from .life import (
    LIFE,
    LIFE_OPTIONS,
    LIFEVIT_0_1_OPTIONS,
    POINTWISE_INITS,
    RELEASE_OPTIONS,
    Pointwise,
    life_options_of_state_dict,
    split_widths,
)

__all__ = [
    "LIFE",
    "LIFE_OPTIONS",
    "POINTWISE_INITS",
    "RELEASE_OPTIONS",
    "LIFEVIT_0_1_OPTIONS",
    "life_options_of_state_dict",
    "LIFEAttention",
    "Pointwise",
    "TokenGridMixin",
    "life_layers",
    "set_token_layout",
    "split_widths",
]
