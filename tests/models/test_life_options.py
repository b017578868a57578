"""LIFE options reach every LIFE model family through ``timm.create_model(..., life_options=...)``."""

import pytest
import timm
import torch

import lifevit  # noqa: F401
from lifevit.layers import LIFEVIT_0_1_OPTIONS, RELEASE_OPTIONS
from lifevit.layers.attention import life_layers


@pytest.mark.parametrize(
    "name,kwargs,size",
    [
        ("vit_lite_patch4_28_life", {"depth": 1}, (1, 28, 28)),
        ("t2t_vit_12_32_life", {"depth": 1}, (3, 32, 32)),
        ("swinv2_tiny_patch1_window8_32_life", {"depths": (1, 1, 1, 1)}, (3, 32, 32)),
    ],
)
def test_life_options_reach_every_family_and_the_default_is_the_release(name, kwargs, size):
    default = timm.create_model(name, num_classes=3, **kwargs)
    release = timm.create_model(name, num_classes=3, life_options=dict(RELEASE_OPTIONS), **kwargs)
    old = timm.create_model(name, num_classes=3, life_options=dict(LIFEVIT_0_1_OPTIONS), **kwargs)
    for model in (default, release):  # bias-free pointwise layers with PyTorch's init (the small-data grid's choice)
        assert all(pw.bias is None for layer in life_layers(model) for pw in layer.pointwise)
        assert all(layer.pointwise_init == "kaiming_uniform" for layer in life_layers(model))
    biased = name != "t2t_vit_12_32_life"  # 0.1's pointwise bias followed the qkv bias, which T2T-ViT has not
    assert all((pw.bias is not None) == biased for layer in life_layers(old) for pw in layer.pointwise)
    assert all(layer.pointwise_init == "trunc_normal" for layer in life_layers(old))
    n_default, n_release, n_old = (sum(p.numel() for p in m.parameters()) for m in (default, release, old))
    assert n_default == n_release and (n_release < n_old if biased else n_release == n_old)
    assert release(torch.randn(2, *size)).shape == old(torch.randn(2, *size)).shape == (2, 3)


def test_life_options_on_a_model_without_life_is_an_error():
    with pytest.raises(ValueError, match="has no LIFE layers"):
        timm.create_model("vit_lite_patch4_28", life_options={"pointwise_bias": False})
