"""Roll-out and Dense Attention Roll-Out on hand-made attention matrices with known answers."""

import pytest
import torch

from lifevit.explain import (
    AttentionRecord,
    Rollout,
    attention_rollout,
    box_token_weights,
    class_token_map,
    dense_rollout,
    rollout_records,
    token_class_weights,
)
from lifevit.explain.rollout import discard_lowest, fuse_heads, pooling_matrix, residual_normalize


def _uniform(B, heads, N):
    return torch.full((B, heads, N, N), 1.0 / N)


def _one_hot(B, heads, N, k):
    a = torch.zeros(B, heads, N, N)
    a[..., k] = 1.0
    return a


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_identity_attention_rolls_out_to_identity(fusion):
    eye = torch.eye(10).expand(2, 3, 10, 10)
    R = attention_rollout([eye] * 4, head_fusion=fusion)
    torch.testing.assert_close(R, torch.eye(10).expand(2, 10, 10))


@pytest.mark.parametrize("layers", [1, 2, 5])
def test_uniform_attention_has_closed_form(layers):
    # (U + I)/2 with U idempotent: R = 2^-L I + (1 - 2^-L) U
    N = 17
    R = attention_rollout([_uniform(3, 2, N)] * layers)
    a = 2.0**-layers
    expected = a * torch.eye(N) + (1 - a) * torch.full((N, N), 1.0 / N)
    torch.testing.assert_close(R, expected.expand(3, N, N))
    rollout = Rollout(R, out_prefix=1, out_grid=(4, 4), in_prefix=1, in_grid=(4, 4))
    cls = class_token_map(rollout)
    assert cls.shape == (3, 4, 4)
    torch.testing.assert_close(cls, torch.full((3, 4, 4), (1 - a) / N))
    # average pooling: mean of the patch rows, which also hold the identity share on their own column
    avg = class_token_map(rollout, average_pool=True)
    torch.testing.assert_close(avg, torch.full((3, 4, 4), (1 - a) / N + a / 16))


def test_one_hot_attention_points_at_the_attended_token():
    # every token attends only to token k: R = 2^-L I + (1 - 2^-L) 1 e_k^T
    N, k, L = 10, 7, 3
    R = attention_rollout([_one_hot(1, 2, N, k)] * L)
    a = 2.0**-L
    J = torch.zeros(N, N)
    J[:, k] = 1
    torch.testing.assert_close(R[0], a * torch.eye(N) + (1 - a) * J)
    cls = class_token_map(Rollout(R, 1, (3, 3), 1, (3, 3)))  # class token 0, patches 1..9 on a 3x3 grid
    assert cls[0].flatten().argmax().item() == k - 1
    assert cls[0].flatten()[k - 1].item() == pytest.approx(1 - a)


def test_rows_stay_normalised_for_random_attention_and_all_fusions():
    torch.manual_seed(0)
    attns = [torch.randn(2, 4, 26, 26).softmax(-1) for _ in range(6)]
    for fusion in ("mean", "max", "min"):
        for ratio in (0.0, 0.5, 0.9):
            R = attention_rollout(attns, head_fusion=fusion, discard_ratio=ratio, num_prefix_tokens=1)
            torch.testing.assert_close(R.sum(-1), torch.ones(2, 26))
            assert (R >= 0).all()


def test_head_fusion_and_residual_step():
    heads = torch.stack([torch.eye(3), torch.full((3, 3), 1 / 3)])[None]  # (1, 2, 3, 3)
    torch.testing.assert_close(fuse_heads(heads, "mean")[0], (torch.eye(3) + 1 / 3) / 2)
    torch.testing.assert_close(fuse_heads(heads, "max")[0], torch.eye(3) * (2 / 3) + 1 / 3)
    torch.testing.assert_close(fuse_heads(heads, "min")[0], torch.eye(3) / 3)
    step = residual_normalize(fuse_heads(heads, "max"))[0]  # max-fused rows sum to 5/3: (A + I) / (8/3)
    torch.testing.assert_close(step, (torch.eye(3) * (2 / 3) + 1 / 3 + torch.eye(3)) / (8 / 3))
    with pytest.raises(ValueError, match="head_fusion must be one of"):
        fuse_heads(heads, "median")


def test_discard_drops_the_lowest_patch_entries_but_never_prefix_columns():
    row = torch.tensor([[[0.01, 0.5, 0.05, 0.3, 0.04, 0.1]]])  # 1 prefix + 5 patches
    out = discard_lowest(row, 0.4, num_prefix_tokens=1)  # floor(0.4 * 5) = 2 smallest patch entries: 0.04, 0.05
    torch.testing.assert_close(out, torch.tensor([[[0.01, 0.5, 0.0, 0.3, 0.0, 0.1]]]))
    with pytest.raises(ValueError, match=r"discard_ratio must be in \[0, 1\)"):
        discard_lowest(row, 1.0)


def test_layer_order_is_last_layer_times_first():
    # layer 1: every token attends to token 0; layer 2: every token attends to token 1
    N = 3
    first, second = _one_hot(1, 1, N, 0), _one_hot(1, 1, N, 1)
    R = attention_rollout([first, second])
    A1, A2 = residual_normalize(first[:, 0]), residual_normalize(second[:, 0])
    torch.testing.assert_close(R, A2 @ A1)
    assert not torch.allclose(R, A1 @ A2)


def test_mismatched_layers_are_rejected():
    with pytest.raises(ValueError, match="expected"):
        attention_rollout([_uniform(1, 1, 5), _uniform(1, 1, 6)])
    with pytest.raises(ValueError, match="at least one"):
        attention_rollout([])


def test_pooling_matrix_averages_2x2_cells():
    P = pooling_matrix((4, 4), (2, 2))
    assert P.shape == (4, 16)
    torch.testing.assert_close(P.sum(-1), torch.ones(4))
    assert P[0].nonzero().flatten().tolist() == [0, 1, 4, 5]
    assert P[3].nonzero().flatten().tolist() == [10, 11, 14, 15]
    with pytest.raises(ValueError, match="integer factor"):
        pooling_matrix((5, 4), (2, 2))


def test_records_across_a_shrinking_grid_chain_with_pooling():
    fine = AttentionRecord("s0", torch.eye(16).expand(1, 1, 16, 16), 0, (4, 4), windowed=True)
    coarse = AttentionRecord("s1", _uniform(1, 1, 4), 0, (2, 2), windowed=True)
    unrelated = AttentionRecord("stem", _uniform(1, 1, 7), 0, None)
    r = rollout_records([unrelated, fine, coarse])
    assert r.matrix.shape == (1, 4, 16) and r.in_grid == (4, 4) and r.out_grid == (2, 2)
    expected = residual_normalize(_uniform(1, 1, 4)[:, 0]) @ pooling_matrix((4, 4), (2, 2))
    torch.testing.assert_close(r.matrix, expected)
    torch.testing.assert_close(r.matrix.sum(-1), torch.ones(1, 4))


def test_dense_rollout_with_identity_rollout_returns_the_weighted_predicted_tokens():
    # 2x2 grid, 1 prefix token; classes: 0 background, 1, 2
    probs = torch.tensor([[[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [0.1, 0.5, 0.4]]])
    w = token_class_weights(probs, ignore_index=0)
    torch.testing.assert_close(w, torch.tensor([[[0.0, 0, 0], [0, 0.7, 0], [0, 0, 0.6], [0, 0.5, 0]]]))
    rollout = Rollout(torch.eye(5)[None], 1, (2, 2), 1, (2, 2))
    maps, defined = dense_rollout(rollout, w)
    assert maps.shape == (1, 3, 2, 2)
    assert defined.tolist() == [[False, True, True]]
    torch.testing.assert_close(maps[0, 1], torch.tensor([[0.0, 0.7 / 1.2], [0.0, 0.5 / 1.2]]))
    torch.testing.assert_close(maps[0, 2], torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    torch.testing.assert_close(maps[0, 0], torch.zeros(2, 2))
    # fallback: class 0 has no predicted token, its soft probabilities are used instead
    maps, defined = dense_rollout(rollout, w, fallback_weights=probs)
    assert defined.all()
    torch.testing.assert_close(maps[0, 0], torch.tensor([[0.9, 0.2], [0.1, 0.1]]) / 1.3)


def test_dense_rollout_follows_the_rollout_rows():
    # every token attends to patch 3 in 4 layers: all class maps concentrate there
    N, L = 5, 4
    R = attention_rollout([_one_hot(1, 1, N, 4)] * L)
    probs = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])
    maps, _ = dense_rollout(Rollout(R, 1, (2, 2), 1, (2, 2)), token_class_weights(probs))
    for c in range(2):
        assert maps[0, c].flatten().argmax().item() == 3
        torch.testing.assert_close(maps[0, c].sum(), torch.tensor(1.0))  # rows of patch tokens have no prefix mass


def test_box_token_weights_mark_tokens_whose_centre_is_inside():
    # 8x8 image, 2x2 grid -> token centres at 2 and 6 px
    w = box_token_weights(
        [torch.tensor([[0.0, 0.0, 4.0, 8.0], [5.0, 5.0, 8.0, 8.0]])],
        [torch.tensor([1, 0])],
        [torch.tensor([0.8, 0.5])],
        img_size=(8, 8),
        grid_size=(2, 2),
        num_classes=2,
    )
    torch.testing.assert_close(w, torch.tensor([[[0.0, 0.8], [0.0, 0.0], [0.0, 0.8], [0.5, 0.0]]]))
    with pytest.raises(ValueError, match=r"box labels must be in \[0, 2\)"):
        box_token_weights([torch.zeros(1, 4)], [torch.tensor([2])], [torch.ones(1)], (8, 8), (2, 2), 2)


def test_dense_rollout_rejects_wrong_weight_shape():
    rollout = Rollout(torch.eye(5)[None], 1, (2, 2), 1, (2, 2))
    with pytest.raises(ValueError, match=r"\(B, N_out_patch, K\) = \(1, 4, K\)"):
        dense_rollout(rollout, torch.ones(1, 5, 3))


def test_a_prefix_free_layer_after_a_prefixed_one_reads_the_patch_rows():
    # backbone: 1 class token + 2x2 grid, every token attends to patch 2 (token 3); encoder: 2x2 grid, uniform
    backbone = AttentionRecord("backbone.blocks.0.attn", _one_hot(1, 1, 5, 3), 1, (2, 2))
    encoder = AttentionRecord("head.encoder.0.attn", _uniform(1, 1, 4), 0, (2, 2))
    r = rollout_records([backbone, encoder])
    assert r.matrix.shape == (1, 4, 5) and (r.out_prefix, r.in_prefix) == (0, 1)
    expected = residual_normalize(_uniform(1, 1, 4)[:, 0]) @ residual_normalize(_one_hot(1, 1, 5, 3)[:, 0])[:, 1:]
    torch.testing.assert_close(r.matrix, expected)
    torch.testing.assert_close(r.matrix.sum(-1), torch.ones(1, 4))
    assert class_token_map(r).flatten().argmax().item() == 2  # no class token at the end: mean of the rows
