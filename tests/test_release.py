"""Reading NeurAI-Lab/LIFE checkpoints: a state dict in the release's names and layout, checked against the
release's forward pass written out here (its MultiscaleQKV with and without class token, its DeiT block)."""

import math

import pytest
import timm
import torch
import torch.nn.functional as F

import lifevit  # noqa: F401
from lifevit.layers import life_layers
from lifevit.release import load_release_checkpoint, release_to_lifevit

DEPTH, DIM, HEADS, PATCH, IMG, CLASSES = 2, 48, 3, 4, 16, 7


def release_deit_state_dict(qkv_norm: bool = False, seed: int = 0) -> dict:
    """Random weights under the names and shapes of the release's ``deit_tiny_patch4_32_ms`` (shrunk)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.2  # noqa: E731
    c, n = DIM // 3, (IMG // PATCH) ** 2
    sd = {"cls_token": r(1, 1, DIM), "pos_embed": r(1, n + 1, DIM)}
    sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"] = r(DIM, 3, PATCH, PATCH), r(DIM)
    for i in range(DEPTH):
        b = f"blocks.{i}."
        for ln in ("norm1", "norm2"):
            sd[b + ln + ".weight"], sd[b + ln + ".bias"] = 1 + r(DIM), r(DIM)
        q = b + "attn.qkv."
        sd[q + "scale1.weight"], sd[q + "scale1.bias"] = r(3 * c, DIM), r(3 * c)
        sd[q + "scale2.depthwise.weight"], sd[q + "scale2.pointwise.weight"] = r(DIM, 1, 3, 3), r(3 * c, DIM, 1, 1)
        sd[q + "scale3.depthwise.weight"], sd[q + "scale3.pointwise.weight"] = r(3 * c, 1, 5, 5), r(3 * c, 3 * c, 1, 1)
        if qkv_norm:
            sd[q + "norm.weight"], sd[q + "norm.bias"] = 1 + r(DIM), r(DIM)
        sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"] = r(DIM, DIM), r(DIM)
        sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"] = r(4 * DIM, DIM), r(4 * DIM)
        sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"] = r(DIM, 4 * DIM), r(DIM)
    sd["norm.weight"], sd["norm.bias"] = 1 + r(DIM), r(DIM)
    sd["head.weight"], sd["head.bias"] = r(CLASSES, DIM), r(CLASSES)
    return sd


def release_ms_qkv(sd: dict, p: str, x: torch.Tensor, cls_token: bool) -> torch.Tensor:
    """The release's MultiscaleQKV.forward (NCHW convs, its class-token keys), returning cat(q, k, v)."""
    B, N, C = x.shape
    c = C // 3
    dw = lambda t, s: F.conv2d(t, sd[f"{p}.scale{s}.depthwise.weight"], padding=1 if s == 2 else 2, groups=C)  # noqa
    pw = lambda t, s: F.conv2d(t, sd[f"{p}.scale{s}.pointwise.weight"])  # noqa: E731
    y1 = F.linear(x, sd[f"{p}.scale1.weight"], sd[f"{p}.scale1.bias"])
    a = 1 if cls_token else 0
    side = int(math.sqrt(N - a))
    patches = y1[:, a:]
    s2 = pw(dw(patches.permute(0, 2, 1).reshape(B, C, side, side), 2), 2)
    s3 = pw(dw(s2, 3), 3)
    s2, s3 = s2.reshape(B, C, -1).permute(0, 2, 1), s3.reshape(B, C, -1).permute(0, 2, 1)
    part = lambda t, i: t[:, :, i * c : (i + 1) * c]  # noqa: E731
    q = torch.cat([part(patches, 0), part(s2, 0), part(s3, 0)], 2)
    k = torch.cat([part(patches, 1), part(s2, 1), part(s3, 1)], 2)
    v = torch.cat([part(patches, 2), part(s2, 2), part(s3, 2)], 2)
    if cls_token:
        t1 = y1[:, :1].reshape(B, C, 1, 1)
        t2 = pw(t1, 2)
        t3 = pw(t2, 3)
        t1, t2, t3 = (t.reshape(B, 1, C) for t in (t1, t2, t3))
        q = torch.cat([torch.cat([part(t1, 0), part(t2, 0), part(t3, 0)], 2), q], 1)
        k = torch.cat([torch.cat([part(t1, 1), part(t1, 1), part(t1, 1)], 2), k], 1)  # k1 copied into scales 2, 3
        v = torch.cat([torch.cat([part(t1, 2), part(t2, 2), part(t3, 2)], 2), v], 1)
    if f"{p}.norm.weight" in sd:
        q, k, v = (F.layer_norm(t, (C,), sd[f"{p}.norm.weight"], sd[f"{p}.norm.bias"]) for t in (q, k, v))
    return torch.cat([q, k, v], 2)


def release_deit_forward(sd: dict, img: torch.Tensor) -> torch.Tensor:
    """The release's VisionTransformer.forward for a ``*_ms`` DeiT (eval mode)."""
    ln = lambda t, n: F.layer_norm(t, (DIM,), sd[n + ".weight"], sd[n + ".bias"], eps=1e-6)  # noqa: E731
    x = F.conv2d(img, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), x], 1) + sd["pos_embed"]
    B, N, C = x.shape
    for i in range(DEPTH):
        b = f"blocks.{i}."
        qkv = release_ms_qkv(sd, b + "attn.qkv", ln(x, b + "norm1"), cls_token=True)
        q, k, v = qkv.reshape(B, N, 3, HEADS, C // HEADS).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (C // HEADS) ** -0.5).softmax(-1)
        a = F.linear((attn @ v).transpose(1, 2).reshape(B, N, C), sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
        x = x + a
        h = F.gelu(F.linear(ln(x, b + "norm2"), sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"]))
        x = x + F.linear(h, sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
    return F.linear(ln(x, "norm")[:, 0], sd["head.weight"], sd["head.bias"])


def _load(sd, **kw):
    return load_release_checkpoint(
        {"model": sd}, "deit_tiny_patch4_32_ms", img_size=IMG, embed_dim=DIM, depth=DEPTH, num_heads=HEADS, **kw
    )


@pytest.mark.parametrize("qkv_norm", [False, True])
def test_release_deit_checkpoint_gives_the_release_outputs(qkv_norm):
    sd = release_deit_state_dict(qkv_norm)
    model = _load(sd)
    img = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        expected = release_deit_forward(sd, img)
        torch.testing.assert_close(model(img), expected, rtol=1e-4, atol=1e-4)
    assert model.num_classes == CLASSES
    layer = next(life_layers(model))
    assert all(pw.bias is None for pw in layer.pointwise) and layer.prefix_keys_from_scale1
    assert (layer.qkv_norm is not None) == qkv_norm


def test_lifevit_class_token_keys_change_only_the_class_token_keys():
    sd = release_deit_state_dict()
    release, ours = _load(sd), _load(sd, release_class_token_keys=False)
    x = torch.randn(2, 1 + (IMG // PATCH) ** 2, DIM)
    with torch.no_grad():
        a = release.blocks[0].attn.qkv(x).view(2, -1, 3, DIM)
        b = ours.blocks[0].attn.qkv(x).view(2, -1, 3, DIM)
    c = DIM // 3
    torch.testing.assert_close(a[:, 1:], b[:, 1:])  # patch tokens: identical
    torch.testing.assert_close(a[:, :1, (0, 2)], b[:, :1, (0, 2)])  # class token q and v: identical
    torch.testing.assert_close(a[:, 0, 1, :c], b[:, 0, 1, :c])  # its scale-1 key: identical
    torch.testing.assert_close(a[:, 0, 1, c:], a[:, 0, 1, :c].repeat(1, 2))  # release: k1 copied
    assert not torch.allclose(a[:, 0, 1, c:], b[:, 0, 1, c:])  # lifevit: k2, k3 of its own


def _release_qkv_name(k: str, v: torch.Tensor):
    """A lifevit LIFE key and tensor under the release's name and layout (its pointwise layers are 1x1 convs)."""
    k = k.replace("qkv.linear.", "qkv.scale1.")
    for s in (0, 1):
        k = k.replace(f"qkv.depthwise.{s}.", f"qkv.scale{s + 2}.depthwise.")
        if f"qkv.pointwise.{s}." in k:
            k, v = k.replace(f"qkv.pointwise.{s}.", f"qkv.scale{s + 2}.pointwise."), v[:, :, None, None]
    return k, v


def _to_release_swin(sd: dict) -> dict:
    """lifevit SwinV2-LIFE (release options) names -> the release's swin_mfm names (written independently)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("layers.") and ".downsample." in k:
            i = int(k.split(".")[1])
            k = k.replace(f"layers.{i}.downsample.", f"layers.{i - 1}.downsample.")
        k = k.replace("head.fc.", "head.")
        k, v = _release_qkv_name(k, v)
        out[k] = v
        if k.endswith("attn.logit_scale"):  # the release keeps q_bias / v_bias (unused by its LIFE path)
            out[k.replace("logit_scale", "q_bias")] = torch.zeros(v.shape[0] * 48)
            out[k.replace("logit_scale", "v_bias")] = torch.zeros(v.shape[0] * 48)
    return out


def test_release_swinv2_checkpoint_maps_every_weight_and_matches_its_window_qkv():
    from lifevit.release import use_release_options

    kw = dict(num_classes=5, depths=(1, 1, 1, 1), embed_dim=48, num_heads=(1, 2, 4, 8))
    source = use_release_options(timm.create_model("swinv2_tiny_patch1_window8_32_life", **kw))
    for p in source.parameters():
        torch.nn.init.normal_(p, std=0.05)
    release_sd = _to_release_swin(source.state_dict())
    assert "layers.0.downsample.reduction.weight" in release_sd and "head.weight" in release_sd
    model = load_release_checkpoint(release_sd, "swinv2_tiny_window8_32_patch1_ms", **kw)
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(img), source.eval()(img))
        attn = model.layers[0].blocks[0].attn
        x = torch.randn(3, 64, 48)  # three 8 x 8 windows
        torch.testing.assert_close(
            attn.qkv(x),
            release_ms_qkv(release_sd, "layers.0.blocks.0.attn.qkv", x, cls_token=False),
            rtol=1e-5,
            atol=1e-5,
        )


def test_not_a_release_state_dict_is_refused():
    with pytest.raises(ValueError, match=r"NeurAI-Lab/LIFE state dict with '\*\.attn\.qkv\.scale1\.weight' keys"):
        release_to_lifevit({"blocks.0.attn.qkv.weight": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="names no model"):
        load_release_checkpoint({"model": release_deit_state_dict()})
    with pytest.raises(FileNotFoundError, match="no release checkpoint at"):
        load_release_checkpoint("/nonexistent/release.pth", "deit_tiny_patch4_32_ms")


def test_cli_writes_a_lifevit_checkpoint(tmp_path, capsys):
    from lifevit.cli import main

    src = tmp_path / "checkpoint.pth"
    model = timm.create_model("deit_tiny_patch4_32_life", num_classes=CLASSES)
    # full-size weights in the release layout, taken from a lifevit model built with the release's options
    from lifevit.release import use_release_options

    use_release_options(model)
    sd = {}
    for k, v in model.state_dict().items():
        k, v = _release_qkv_name(k, v)
        sd[k] = v
    torch.save({"model": sd, "epoch": 3}, src)
    assert main(["release", str(src), "--model", "deit_tiny_patch4_32_ms", "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "deit_tiny_patch4_32_life" in out and (tmp_path / "out" / "last.safetensors").is_file()
