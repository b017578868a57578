"""Registered ViT / DeiT models: every one builds, runs forward and backward; costs match the paper."""

import pytest
import timm
import torch

import lifevit  # noqa: F401  (registers the models)
from lifevit import LIFE
from lifevit.models import list_lifevit_models
from lifevit.profile import count_macs, count_params

VIT_MODELS = [n for n in list_lifevit_models() if n.startswith(("deit_", "vit_"))]


def _small_kwargs(name: str) -> dict:
    # ImageNet-size variants run at 64 px (a 4x4 grid) to keep the test fast
    return {"img_size": 64} if "patch16_224" in name else {}


@pytest.mark.parametrize("name", VIT_MODELS)
def test_forward_backward_every_parameter_gets_grad(name):
    model = timm.create_model(name, num_classes=7, **_small_kwargs(name))
    c, h, w = model.pretrained_cfg["input_size"]
    h = w = _small_kwargs(name).get("img_size", h)
    x = torch.randn(2, c, h, w)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    if name.endswith("_life"):
        layers = [m for m in model.modules() if isinstance(m, LIFE)]
        assert len(layers) == len(model.blocks)
        assert all(layer.num_prefix_tokens == model.num_prefix_tokens for layer in layers)


def test_expected_names_registered_without_collisions():
    expected = {
        "deit_tiny_patch16_224_life", "deit_small_patch16_224_life", "deit_base_patch16_224_life",
        "deit_tiny_distilled_patch16_224_life", "deit_small_distilled_patch16_224_life",
        "deit_tiny_patch4_32", "deit_tiny_patch4_32_life", "deit_small_patch4_32", "deit_small_patch4_32_life",
        "deit_tiny_patch4_64", "deit_tiny_patch4_64_life", "deit_small_patch4_64", "deit_small_patch4_64_life",
        "vit_lite_patch4_28", "vit_lite_patch4_28_life",
    }  # fmt: skip
    assert expected <= set(list_lifevit_models())
    assert expected <= set(timm.list_models())
    for name in expected:  # each name points to lifevit's entry point, not timm's
        assert timm.models.get_pretrained_cfg(name) is not None
        assert timm.models.model_entrypoint(name).__module__.startswith("lifevit.")


def test_distilled_life_model_uses_two_prefix_tokens():
    model = timm.create_model("deit_tiny_distilled_patch16_224_life", img_size=64, num_classes=5)
    assert model.num_prefix_tokens == 2
    assert all(m.num_prefix_tokens == 2 for m in model.modules() if isinstance(m, LIFE))
    model.set_distilled_training(True)
    model.train()
    out, out_dist = model(torch.randn(2, 3, 64, 64))
    assert out.shape == out_dist.shape == (2, 5)
    model.eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_dynamic_img_size_non_square_grid_follows_input():
    model = timm.create_model("deit_tiny_patch4_32_life", dynamic_img_size=True, num_classes=3, depth=2)
    out = model(torch.randn(2, 3, 32, 48))
    assert out.shape == (2, 3)
    assert model.blocks[0].attn.qkv.grid_size == (8, 12)
    model(torch.randn(1, 3, 20, 16))
    assert model.blocks[1].attn.qkv.grid_size == (5, 4)


def test_model_options_in_chans_global_pool_and_intermediates():
    model = timm.create_model("deit_tiny_patch4_32_life", in_chans=1, global_pool="avg", num_classes=4, depth=3)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 4)
    final, inter = model.forward_intermediates(torch.randn(1, 1, 32, 32), indices=2)
    assert len(inter) == 2 and inter[0].shape == (1, 192, 8, 8)


def test_registers_tokens_are_prefix_tokens_for_life():
    model = timm.create_model("vit_lite_patch4_28_life", reg_tokens=4, num_classes=10)
    assert model.num_prefix_tokens == 5
    assert all(m.num_prefix_tokens == 5 for m in model.modules() if isinstance(m, LIFE))
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_other_kernel_sizes():
    model = timm.create_model("vit_lite_patch4_28_life", life_kernel_sizes=(3, 3, 3), depth=1)
    assert model.blocks[0].attn.qkv.kernel_sizes == (3, 3, 3)
    assert model(torch.randn(1, 1, 28, 28)).shape == (1, 10)
    with pytest.raises(ValueError, match="has no LIFE layers"):
        timm.create_model("vit_lite_patch4_28", life_kernel_sizes=(3,))


def test_pretrained_request_explains_how_to_get_weights():
    with pytest.raises(ValueError, match="lifeify"):
        timm.create_model("deit_tiny_patch16_224_life", pretrained=True)


def test_deterministic_on_cpu_with_seed():
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = timm.create_model("vit_lite_patch4_28_life", depth=2)
        outs.append(model(torch.ones(1, 1, 28, 28)))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


# The paper's cost table (100 classes, 224 px): params within 0.5 %, MACs within 2 %
PAPER = {
    "deit_tiny_patch16_224": (5.54, 1.26),
    "deit_tiny_patch16_224_life": (5.62, 1.27),
    "deit_small_patch16_224": (21.70, 4.61),
    "deit_small_patch16_224_life": (21.85, 4.64),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_params_and_macs_match_paper(name):
    params_m, gmacs = PAPER[name]
    model = timm.create_model(name, num_classes=100)
    assert count_params(model) / 1e6 == pytest.approx(params_m, rel=0.005)
    assert count_macs(model, (3, 224, 224)) / 1e9 == pytest.approx(gmacs, rel=0.02)


def test_life_overhead_is_small_and_exactly_the_depthwise_convs():
    plain = timm.create_model("deit_tiny_patch16_224", num_classes=100)
    life = timm.create_model("deit_tiny_patch16_224_life", num_classes=100)
    # LIFE's three 192->192 projections have as many weights as the 192->576 qkv; the extra are the dw kernels,
    # less the biases: scale 1 has 192 where the plain qkv has 576, and the pointwise layers none (as in the release)
    dw_params = 12 * 192 * (3 * 3 + 5 * 5)
    assert count_params(life) - count_params(plain) == dw_params - 12 * (576 - 192)
    dw_macs = 12 * 196 * 192 * (3 * 3 + 5 * 5)
    assert count_macs(life, (3, 224, 224)) - count_macs(plain, (3, 224, 224)) == dw_macs
