"""Attention capture: equals an explicit computation, works with fused SDPA, leaves the model as it was."""

import pytest
import timm
import torch
from torch import nn

import lifevit  # noqa: F401  (registers the models)
from lifevit.explain import AttentionRecorder, attention_modules, capture_attention, rollout_records, windows_to_global
from lifevit.explain.capture import window_token_index


def _explicit_attention(attn_module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Softmax(q k^T * scale) from the module's own qkv projection (a LIFE layer for *_life models)."""
    B, N, _ = x.shape
    qkv = attn_module.qkv(x).reshape(B, N, 3, attn_module.num_heads, attn_module.head_dim).permute(2, 0, 3, 1, 4)
    q, k, _ = qkv.unbind(0)  # each (B, heads, N, head_dim)
    q, k = attn_module.q_norm(q), attn_module.k_norm(k)
    return ((q * attn_module.scale) @ k.transpose(-2, -1)).softmax(-1)  # (B, heads, N, N)


def _block_inputs(model: nn.Module, images: torch.Tensor):
    inputs = []
    handles = [blk.attn.register_forward_pre_hook(lambda m, a: inputs.append(a[0])) for blk in model.blocks]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for h in handles:
            h.remove()
    return inputs


def _model_state(model: nn.Module):
    return (
        {n: m.fused_attn for n, m in model.named_modules() if hasattr(m, "fused_attn")},
        sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
        {k: v.clone() for k, v in model.state_dict().items()},
        model.training,
    )


@pytest.mark.parametrize(
    "name, kwargs, img_size, prefix, grid",
    [
        ("vit_lite_patch4_28_life", {}, (28, 28), 1, (7, 7)),
        ("vit_lite_patch4_28", {}, (28, 28), 1, (7, 7)),
        ("deit_tiny_distilled_patch16_224_life", dict(img_size=32, patch_size=8, depth=2), (32, 32), 2, (4, 4)),
        ("vit_lite_patch4_28_life", dict(dynamic_img_size=True), (28, 20), 1, (7, 5)),  # non-square input
    ],
)
def test_capture_equals_explicit_attention_with_fused_sdpa(name, kwargs, img_size, prefix, grid):
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    assert all(m.fused_attn for _, m in attention_modules(model)), "test needs the fused SDPA path"
    images = torch.randn(2, model.patch_embed.proj.in_channels, *img_size)
    _, records = capture_attention(model, images)
    assert len(records) == len(model.blocks)
    inputs = _block_inputs(model, images)
    for rec, blk, x in zip(records, model.blocks, inputs):
        N = prefix + grid[0] * grid[1]
        assert rec.attn.shape == (2, blk.attn.num_heads, N, N)
        assert rec.num_prefix_tokens == prefix and rec.grid_size == grid
        torch.testing.assert_close(rec.attn, _explicit_attention(blk.attn, x), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(rec.attn.sum(-1), torch.ones(rec.attn.shape[:-1]))


def test_a_plain_dropout_hook_sees_nothing_under_sdpa_but_capture_does():
    model = timm.create_model("vit_lite_patch4_28_life").eval()
    seen = []
    handle = model.blocks[0].attn.attn_drop.register_forward_hook(lambda m, a, o: seen.append(o))
    try:
        model(torch.randn(1, 1, 28, 28))
        assert seen == []  # the fused path never calls attn_drop
        _, records = capture_attention(model, torch.randn(1, 1, 28, 28))
        assert len(seen) == 1 and len(records) == 6
    finally:
        handle.remove()


@pytest.mark.parametrize("train_mode", [False, True])
def test_model_is_unchanged_after_capture(train_mode):
    torch.manual_seed(0)
    model = timm.create_model("vit_lite_patch4_28_life", drop_rate=0.0).train(train_mode)
    images = torch.randn(3, 1, 28, 28)
    before_state = _model_state(model)
    with torch.no_grad():
        before = model(images)
    out, records = capture_attention(model, images)
    with torch.no_grad():
        after = model(images)
    assert torch.equal(before, after)  # same (fused) path afterwards: bit-identical
    torch.testing.assert_close(out, before, atol=1e-5, rtol=1e-5)  # the explicit path during capture
    after_state = _model_state(model)
    assert after_state[0] == before_state[0] and all(after_state[0].values())
    assert after_state[1] == before_state[1] == 0
    assert after_state[2].keys() == before_state[2].keys()
    assert all(torch.equal(after_state[2][k], v) for k, v in before_state[2].items())
    assert after_state[3] == train_mode


class _SilentAttention(nn.Module):
    """Looks like an attention module but never routes probabilities through attn_drop."""

    def __init__(self, dim):
        super().__init__()
        self.num_heads = 1
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, **kwargs):
        return self.proj(x)


def test_capture_fails_loudly_and_still_restores_the_model():
    model = timm.create_model("vit_lite_patch4_28_life").eval()
    model.blocks[2].attn = _SilentAttention(model.embed_dim)
    with pytest.raises(RuntimeError, match=r"attention capture failed for 'blocks.2.attn'"):
        capture_attention(model, torch.randn(1, 1, 28, 28))
    flags, hooks, _, _ = _model_state(model)
    assert hooks == 0 and all(flags.values())
    with pytest.raises(ValueError, match="has no attention module"):
        AttentionRecorder(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        capture_attention(model, torch.randn(1, 28, 28))


def test_window_index_on_a_hand_made_shifted_grid():
    # 4x4 grid, 2x2 windows, shift 1: window 0 holds shifted (0..1, 0..1) = original (1..2, 1..2) -> 5, 6, 9, 10;
    # window 3 holds shifted (2..3, 2..3) = original rows (3, 0) x cols (3, 0) -> 15, 12, 3, 0.
    index = window_token_index((4, 4), (2, 2), (1, 1))
    assert index.tolist() == [[5, 6, 9, 10], [7, 4, 11, 8], [13, 14, 1, 2], [15, 12, 3, 0]]
    assert window_token_index((4, 4), (2, 2), (0, 0)).tolist() == [
        [0, 1, 4, 5],
        [2, 3, 6, 7],
        [8, 9, 12, 13],
        [10, 11, 14, 15],
    ]
    # a 3x3 grid padded to 4x4: padding positions are -1
    assert window_token_index((3, 3), (2, 2), (0, 0)).tolist() == [
        [0, 1, 3, 4],
        [2, -1, 5, -1],
        [6, 7, -1, -1],
        [8, -1, -1, -1],
    ]


def test_windows_to_global_on_a_hand_made_case():
    # B=1, 1 head, 4x4 grid, 2x2 windows, shift 1: window w, query i, key j holds 100*w + 10*i + j
    w, i, j = torch.meshgrid(torch.arange(4), torch.arange(4), torch.arange(4), indexing="ij")
    attn = (100 * w + 10 * i + j).float()[:, None]  # (nW*B, heads, n, n)
    G = windows_to_global(attn, (4, 4), (2, 2), (1, 1))
    assert G.shape == (1, 1, 16, 16)
    assert G[0, 0, 5, 10].item() == 3  # window 0: token 5 is query 0, token 10 is key 3
    assert G[0, 0, 0, 15].item() == 330  # window 3: token 0 is query 3, token 15 is key 0
    assert G[0, 0, 12, 3].item() == 312
    assert G[0, 0, 5, 0].item() == 0  # different windows
    assert (G[0, 0] != 0).sum().item() == 4 * 16 - 1  # 4 windows x 16 pairs, one of them holds the value 0


def test_swinv2_capture_maps_windows_back_to_the_global_grid():
    torch.manual_seed(0)
    model = timm.create_model(
        "swinv2_tiny_window8_256",
        img_size=64,
        window_size=4,
        embed_dim=16,
        depths=(2, 2),
        num_heads=(1, 2),
        num_classes=3,
    ).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(images)
    out, records = capture_attention(model, images)
    torch.testing.assert_close(out, before)
    assert [r.grid_size for r in records] == [(16, 16), (16, 16), (8, 8), (8, 8)]
    assert [r.attn.shape[1] for r in records] == [1, 1, 2, 2]
    for rec in records:
        assert rec.windowed and rec.num_prefix_tokens == 0
        torch.testing.assert_close(rec.attn.sum(-1), torch.ones(rec.attn.shape[:-1]))
    plain, shifted = records[0].attn[0, 0], records[1].attn[0, 0]  # (256, 256) on the 16x16 grid
    # unshifted 4x4 windows: token (0,0) sees exactly the tokens of rows 0-3 x cols 0-3
    assert set(plain[0].nonzero().flatten().tolist()) == {r * 16 + c for r in range(4) for c in range(4)}
    # shifted by 2: token (1,1) shares a window with rows 0-1 (shifted back from 14,15 is another region) ...
    nz = set(shifted[1 * 16 + 1].nonzero().flatten().tolist())
    assert nz <= {r * 16 + c for r in (14, 15, 0, 1) for c in (14, 15, 0, 1)}
    assert {0, 1, 16, 17} <= nz  # its own region is attended
    # ... and the shift mask suppresses the wrapped-around part of the window
    assert shifted[1 * 16 + 1, 15 * 16 + 15].item() < 1e-6
    rollout = rollout_records(records)
    assert rollout.matrix.shape == (2, 64, 256) and rollout.in_grid == (16, 16)


def test_t2t_vit_captures_the_backbone_blocks():
    pytest.importorskip("lifevit.models.t2t_vit")
    if "t2t_vit_12_32_life" not in timm.list_models():
        pytest.skip("t2t_vit_12_32_life not registered")
    model = timm.create_model("t2t_vit_12_32_life", num_classes=10).eval()
    _, records = capture_attention(model, torch.randn(1, 3, 32, 32))
    assert len(records) == 12  # the stem Performers compute no attention matrix
    assert all(r.attn.shape == (1, 4, 65, 65) and r.num_prefix_tokens == 1 and r.grid_size == (8, 8) for r in records)


def test_recorder_reads_a_non_square_grid_from_the_model():
    # 7 x 5 patches + class token = 36 tokens, which a square-grid guess would read as 6 x 6 without prefix
    model = timm.create_model("vit_lite_patch4_28_life", dynamic_img_size=True).eval()
    with torch.no_grad(), AttentionRecorder(model) as recorder:
        model(torch.randn(1, 1, 28, 20))
    assert all(r.num_prefix_tokens == 1 and r.grid_size == (7, 5) for r in recorder.records)
    assert len(recorder.records) == 6


def _explicit_window_attention(attn_module, x, mask):
    """SwinV2 cosine window attention written out (logit scale, continuous position bias, shift mask)."""
    B_, n, C = x.shape
    bias = torch.cat((attn_module.q_bias, attn_module.k_bias, attn_module.v_bias))
    qkv = torch.nn.functional.linear(x, attn_module.qkv.weight, bias)
    q, k, _ = qkv.reshape(B_, n, 3, attn_module.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (B_, h, n, d)
    logits = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(k, dim=-1).transpose(-2, -1)
    logits = logits * torch.clamp(attn_module.logit_scale, max=torch.log(torch.tensor(100.0))).exp()
    table = attn_module.cpb_mlp(attn_module.relative_coords_table).view(-1, attn_module.num_heads)
    rel = table[attn_module.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)  # (h, n, n)
    logits = logits + 16 * torch.sigmoid(rel)[None]
    if mask is not None:
        nW = mask.shape[0]
        logits = (logits.view(-1, nW, attn_module.num_heads, n, n) + mask[None, :, None]).view(B_, -1, n, n)
    return logits.softmax(-1)


def test_swinv2_capture_equals_explicit_window_attention_mapped_to_the_grid():
    torch.manual_seed(0)
    model = timm.create_model(
        "swinv2_tiny_window8_256", img_size=32, window_size=4, embed_dim=8, depths=(2,), num_heads=(2,), num_classes=3
    ).eval()
    blocks = model.layers[0].blocks
    assert blocks[1].shift_size == (2, 2)
    inputs = []
    handles = [
        blk.attn.register_forward_pre_hook(lambda m, a, kw: inputs.append(a[0]), with_kwargs=True) for blk in blocks
    ]
    images = torch.randn(2, 3, 32, 32)
    try:
        with torch.no_grad():
            model(images)
    finally:
        for h in handles:
            h.remove()
    _, records = capture_attention(model, images)
    for rec, blk, x in zip(records, blocks, inputs):
        with torch.no_grad():
            explicit = _explicit_window_attention(blk.attn, x, blk.attn_mask)
        expected = windows_to_global(explicit, (8, 8), blk.window_size, blk.shift_size)
        torch.testing.assert_close(rec.attn, expected, atol=1e-6, rtol=1e-5)
