"""The release's LIFE options reach every LIFE model family through ``timm.create_model(..., life_options=...)``."""

import pytest
import timm
import torch

import lifevit  # noqa: F401
from lifevit.layers import RELEASE_OPTIONS
from lifevit.layers.attention import life_layers


@pytest.mark.parametrize(
    "name,kwargs,size",
    [
        ("vit_lite_patch4_28_life", {"depth": 1}, (1, 28, 28)),
        ("t2t_vit_12_32_life", {"depth": 1}, (3, 32, 32)),
        ("swinv2_tiny_patch1_window8_32_life", {"depths": (1, 1, 1, 1)}, (3, 32, 32)),
    ],
)
def test_release_options_build_bias_free_pointwise_layers(name, kwargs, size):
    ours = timm.create_model(name, num_classes=3, **kwargs)
    release = timm.create_model(name, num_classes=3, life_options=dict(RELEASE_OPTIONS), **kwargs)
    biased = name != "t2t_vit_12_32_life"  # T2T-ViT has no qkv bias, so lifevit's pointwise layers have none either
    assert all((pw.bias is not None) == biased for layer in life_layers(ours) for pw in layer.pointwise)
    assert all(pw.bias is None for layer in life_layers(release) for pw in layer.pointwise)
    n_ours, n_release = (sum(p.numel() for p in m.parameters()) for m in (ours, release))
    assert n_release < n_ours if biased else n_release == n_ours
    assert release(torch.randn(2, *size)).shape == (2, 3)


def test_life_options_on_a_model_without_life_is_an_error():
    with pytest.raises(ValueError, match="has no LIFE layers"):
        timm.create_model("vit_lite_patch4_28", life_options={"pointwise_bias": False})
