"""lifevit models behave like timm's own: FX tracing, registry metadata, set_input_size, data config, scripting."""

import pytest
import timm
import torch
from timm.data import create_transform, resolve_data_config
from timm.models import GraphExtractNet, get_graph_node_names
from torchvision.transforms import CenterCrop, Normalize, Resize

import lifevit  # noqa: F401  (registers the models)
from lifevit.models import TORCHSCRIPT_EXCLUDE_FILTERS, list_lifevit_models

ALL = list_lifevit_models()
# the CPU-scale LIFE model of each family runs by default, every LIFE model under -m slow
SMALL_LIFE = ["vit_lite_patch4_28_life", "t2t_vit_12_32_life", "swinv2_tiny_patch1_window8_32_life"]
LIFE_MODELS = [pytest.param(n, marks=() if n in SMALL_LIFE else pytest.mark.slow) for n in ALL if n.endswith("_life")]


def _shallow(name: str) -> dict:
    """Kwargs for a fast version of ``name`` that keeps its stem, grid and prefix tokens (fewer blocks)."""
    if name.startswith("swinv2"):
        return dict(depths=(1, 1, 1, 1))
    if name.startswith(("deit", "vit", "t2t")):
        return dict(depth=2)
    return {}


def _input(model: torch.nn.Module, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, *model.pretrained_cfg["input_size"])


@pytest.mark.parametrize("name", LIFE_MODELS)
def test_fx_trace_matches_eager_for_every_life_model(name):
    model = timm.create_model(name, num_classes=5, **_shallow(name)).eval()
    x = _input(model)
    nodes = get_graph_node_names(model)[1]  # eval-mode graph: LIFE is one leaf module in it
    assert any(n.endswith("attn.qkv") for n in nodes), "LIFE should be a single (leaf) node"
    traced = GraphExtractNet(model, [nodes[-1]])
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", SMALL_LIFE)
def test_features_only_fx_matches_getter_on_the_last_feature(name):
    kw = dict(features_only=True, **_shallow(name))
    if "depth" in kw:
        kw["depth"] = 3  # ViTs return their last 3 blocks
    torch.manual_seed(0)
    fx = timm.create_model(name, feature_cls="fx", **kw).eval()
    torch.manual_seed(0)
    getter = timm.create_model(name, feature_cls="getter", **kw).eval()  # the same weights
    x = _input(fx)
    with torch.no_grad():
        out_fx, out_getter = fx(x), getter(x)
    assert len(out_fx) == len(fx.feature_info) and len(out_fx) >= 1
    assert fx.feature_info.channels() == [o.shape[-1] for o in out_fx]  # token (NLC) or NHWC maps
    last_fx, last_getter = out_fx[-1], out_getter[-1]
    if last_fx.ndim == 3:  # ViT: (B, prefix + H*W, C) tokens vs (B, C, H, W) map of the patch tokens
        B, C, H, W = last_getter.shape
        last_fx = last_fx[:, -H * W :].transpose(1, 2).reshape(B, C, H, W)
    elif last_fx.shape != last_getter.shape:  # Swin: NHWC
        last_fx = last_fx.permute(0, 3, 1, 2)
    torch.testing.assert_close(last_fx, last_getter, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_registry_metadata_matches_the_model(name):
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    model = timm.create_model(name, device="meta")
    state = model.state_dict()
    c, h, w = cfg["input_size"]
    assert model.in_chans == c and cfg["num_classes"] == model.num_classes
    assert cfg["first_conv"] + ".weight" in state
    classifiers = cfg["classifier"] if isinstance(cfg["classifier"], tuple) else (cfg["classifier"],)
    assert all(k + ".weight" in state for k in classifiers)
    assert len(cfg["mean"]) == len(cfg["std"]) == c
    assert cfg["license"] == "mit"
    is_resnet = name.startswith("resnet")
    assert cfg["fixed_input_size"] is (not is_resnet)  # ViT / T2T / Swin take their native size only
    with torch.device("meta"):
        feats = model.forward_features(torch.empty(1, c, h, w, device="meta"))
    if name.startswith(("swinv2", "resnet")):  # spatial features: pool_size is their unpooled size
        spatial = feats.shape[1:3] if name.startswith("swinv2") else feats.shape[2:]
        assert tuple(spatial) == tuple(cfg["pool_size"])
    else:
        assert cfg["pool_size"] is None  # token features, as in timm's ViT configs
    scriptable = not any(__import__("fnmatch").fnmatch(name, f) for f in TORCHSCRIPT_EXCLUDE_FILTERS)
    assert scriptable == (not any("TorchScript" in n for n in cfg.get("notes") or ()))


@pytest.mark.parametrize("name", ALL)
def test_resolve_data_config_and_create_transform_give_the_native_input(name):
    model = timm.create_model(name, device="meta")
    cfg = model.pretrained_cfg
    data_cfg = resolve_data_config(model=model)
    assert data_cfg["input_size"] == cfg["input_size"]
    assert data_cfg["mean"] == tuple(cfg["mean"]) and data_cfg["std"] == tuple(cfg["std"])
    transform = create_transform(**data_cfg)
    steps = {type(t): t for t in transform.transforms}
    size = cfg["input_size"][-1]
    assert steps[CenterCrop].size == (size, size)
    assert tuple(steps[Normalize].mean.tolist()) == pytest.approx(cfg["mean"])
    resize = steps[Resize].size
    expected = int(size / cfg["crop_pct"]) if cfg["crop_pct"] < 1 else size
    assert (resize if isinstance(resize, int) else resize[0]) == expected
    c = cfg["input_size"][0]
    from PIL import Image

    image = Image.new("L" if c == 1 else "RGB", (size + 13, size + 29))
    assert tuple(transform(image).shape) == tuple(cfg["input_size"])


@pytest.mark.parametrize("name", ["t2t_vit_12_32_life", "t2t_vit_12_32", "deit_tiny_patch4_32_life"])
def test_set_input_size_changes_the_grid(name):
    model = timm.create_model(name, num_classes=3, **_shallow(name)).eval()
    model.set_input_size(img_size=(48, 64))
    assert model(torch.randn(1, 3, 48, 64)).shape == (1, 3)
    grid = tuple(model.patch_embed.grid_size)
    assert grid == (12, 16)
    if name.endswith("_life"):
        assert all(m.attn.qkv.grid_size == grid for m in model.blocks)
    with pytest.raises((ValueError, AssertionError)):
        model(torch.randn(1, 3, 32, 32))  # the old size is refused now


def test_t2t_set_input_size_refuses_a_patch_size():
    model = timm.create_model("t2t_vit_12_32", depth=1)
    with pytest.raises(ValueError, match="fixed by its strides"):
        model.set_input_size(patch_size=8)


def test_t2t_refuses_another_size_with_a_clear_error():
    model = timm.create_model("t2t_vit_12_32", depth=1)
    with pytest.raises(ValueError, match="expects 32x32 images, got 40x32"):
        model(torch.randn(1, 3, 40, 32))


@pytest.mark.parametrize("name", ["vit_lite_patch4_28_life", "swinv2_tiny_patch1_window8_32_life", "t2t_vit_12_32"])
def test_torchscript_is_refused_with_a_pointer_to_export(name):
    model = timm.create_model(name, **_shallow(name))
    with pytest.raises(RuntimeError, match="does not support TorchScript.*torch.export"):
        torch.jit.script(model)


def test_plain_models_still_script():
    model = timm.create_model("vit_lite_patch4_28", depth=1).eval()
    x = torch.randn(1, 1, 28, 28)
    torch.testing.assert_close(torch.jit.script(model)(x), model(x))


@pytest.mark.parametrize(
    "name",
    [
        "vit_lite_patch4_28_life",
        pytest.param("t2t_vit_12_32_life", marks=pytest.mark.slow),
        pytest.param("swinv2_tiny_patch1_window8_32_life", marks=pytest.mark.slow),
        pytest.param("resnet18_lite_28", marks=pytest.mark.slow),
    ],
)
def test_torch_export_with_a_dynamic_batch_matches_eager(name):
    model = timm.create_model(name, num_classes=5, **_shallow(name)).eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(model, (_input(model, 2),), dynamic_shapes={"x": {0: batch}})
    x = _input(model, 3)  # another batch size than the traced one
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", [*SMALL_LIFE, "resnet18_lite_28"])
def test_torch_compile_matches_eager_forward_and_backward(name):
    model = timm.create_model(name, num_classes=5, **_shallow(name))
    compiled = torch.compile(model)
    x = _input(model)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
    compiled(x).square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
