"""Profiling: MAC counting, throughput, and the `lifevit profile` command."""

import json

import pytest
import timm
import torch
from torch import nn

from lifevit.cli import main
from lifevit.profile import count_macs, measure_throughput, profile_model


def test_macs_count_linear_depthwise_and_attention():
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    assert count_macs(conv, (8, 10, 10)) == 8 * 9 * 100  # depthwise: k*k per output element
    # a ViT block: attention QK^T and AV are counted whether fused (SDPA) or explicit
    model = timm.create_model("vit_lite_patch4_28", depth=1, num_classes=10)
    N, D = 50, 96
    expected = (
        49 * 96 * 16  # patch embedding (4x4 conv, 1 channel)
        + N * (D * 3 * D + D * D)  # qkv + proj
        + 2 * N * N * D  # QK^T and AV
        + N * (2 * D * 2 * D)  # MLP, ratio 2
        + D * 10  # head
    )
    model.blocks[0].attn.fused_attn = True
    assert count_macs(model, (1, 28, 28)) == expected
    model.blocks[0].attn.fused_attn = False
    assert count_macs(model, (1, 28, 28)) == expected


def test_measure_throughput_trains_and_restores_mode():
    model = timm.create_model("vit_lite_patch4_28", depth=1)
    model.eval()
    before = [p.detach().clone() for p in model.parameters()]
    ips, mem = measure_throughput(model, (1, 28, 28), batch_size=4, train=True, warmup=1, iters=2)
    assert ips > 0 and mem is not None and mem >= 0  # CPU: rise of resident memory during the steps
    assert not model.training
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # optimizer stepped


def test_profile_model_dict():
    cost = profile_model("vit_lite_patch4_28_life", throughput=False)
    d = cost.as_dict()
    assert d["model"] == "vit_lite_patch4_28_life" and d["img_size"] == (28, 28) and d["num_classes"] == 10
    assert d["params"] > 0 and d["macs"] > 0 and d["train_img_per_s"] is None
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        profile_model("nope")


def test_cli_profile_json_and_errors(capsys):
    assert main(["profile", "vit_lite_patch4_28_life", "--batch-size", "4", "--iters", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["train_img_per_s"] > 0 and out["infer_img_per_s"] > 0 and out["gmacs"] > 0
    assert main(["profile", "deit_tiny_patch16_224_life", "--num-classes", "100", "--no-throughput"]) == 0
    text = capsys.readouterr().out
    assert "5.62 M" in text and "1.269 G" in text
    from lifevit.layers.dwconv import native_status

    assert f"LIFE convs  {native_status()}" in text  # which depthwise kernel LIFE runs on this CPU
    assert main(["profile", "no_such_model", "--no-throughput"]) == 2
    assert "unknown model 'no_such_model'" in capsys.readouterr().err
