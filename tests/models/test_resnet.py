"""CIFAR-stem ResNet baselines built on timm's ResNet."""

import pytest
import timm
import torch
from torch import nn

import lifevit  # noqa: F401  (registers the models)
from lifevit.models.resnet import CifarResNet
from lifevit.profile import count_params

NAMES = ["resnet18_cifar_32", "resnet18_cifar_64", "resnet50_cifar_32", "resnet50_cifar_64", "resnet18_lite_28"]


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_and_stem(name):
    model = timm.create_model(name)
    assert isinstance(model, CifarResNet)
    assert model.num_classes == {"_32": 100, "_64": 200, "_28": 10}[name[-3:]]
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    in_chans = model.conv1.in_channels  # 1 for the Fashion-MNIST-size model
    out = model(torch.randn(2, in_chans, 16, 16))  # small input: any size works
    assert out.shape == (2, model.num_classes) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_feature_maps_keep_cifar_resolution():
    model = timm.create_model("resnet18_cifar_32", features_only=True)
    feats = model(torch.randn(1, 3, 32, 32))
    assert [f.shape[-1] for f in feats] == [32, 32, 16, 8, 4]
    assert model.feature_info.reduction() == [1, 1, 2, 4, 8]


def test_param_count_is_timm_resnet_with_a_3x3_stem():
    for depth in (18, 50):
        ours = count_params(timm.create_model(f"resnet{depth}_cifar_32", num_classes=100))
        theirs = count_params(timm.create_model(f"resnet{depth}", num_classes=100))
        assert theirs - ours == 64 * 3 * (7 * 7 - 3 * 3)


def test_deep_stem_is_refused():
    with pytest.raises(ValueError, match="stem_type must be ''"):
        timm.create_model("resnet18_cifar_32", stem_type="deep")


def test_lite_resnet_is_quarter_width_resnet18():
    model = timm.create_model("resnet18_lite_28")
    assert [stage[-1].conv2.out_channels for stage in (model.layer1, model.layer2, model.layer3, model.layer4)] == [
        16,
        32,
        64,
        128,
    ]
    assert model.conv1.in_channels == 1 and model.fc.in_features == 128
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
