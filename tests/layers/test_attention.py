"""LIFEAttention: timm's attention with a LIFE qkv, fused and explicit paths agree."""

import torch
from timm.layers import Attention
from timm.models.vision_transformer import Block

from lifevit import LIFE, LIFEAttention
from lifevit.layers import set_token_layout


def test_fused_and_explicit_attention_agree():
    attn = LIFEAttention(48, num_heads=4, num_prefix_tokens=1, qkv_bias=True).eval()
    set_token_layout(attn, grid_size=(3, 5))
    x = torch.randn(2, 1 + 15, 48)
    attn.fused_attn = True
    fused = attn(x)
    attn.fused_attn = False
    explicit = attn(x)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)


def test_is_a_drop_in_attention_layer_for_timm_blocks():
    block = Block(48, num_heads=4, qkv_bias=True, attn_layer=LIFEAttention)
    assert isinstance(block.attn, Attention) and isinstance(block.attn.qkv, LIFE)
    assert block.attn.qkv.linear.bias is not None
    set_token_layout(block, grid_size=(4, 4), num_prefix_tokens=1)
    out = block(torch.randn(2, 17, 48))
    assert out.shape == (2, 17, 48)


def test_bind_changes_kernels_and_norm():
    cls = LIFEAttention.bind(kernel_sizes=(3, 3, 3), qkv_norm=True)
    attn = cls(60, num_heads=3)
    assert attn.qkv.kernel_sizes == (3, 3, 3) and attn.qkv.widths == (15, 15, 15, 15)
    assert attn.qkv.qkv_norm is not None  # one norm for q, k and v by default, as in the release
    assert LIFEAttention(60, num_heads=3).qkv.kernel_sizes == (3, 5)  # the base class is unchanged


def test_attention_head_dim_other_than_dim():
    attn = LIFEAttention(48, num_heads=4, attn_head_dim=8, num_prefix_tokens=0)
    assert attn.qkv.out_dim == 32
    assert attn(torch.randn(1, 9, 48)).shape == (1, 9, 48)
