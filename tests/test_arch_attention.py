"""Attention and RoPE: GQA against standard multi-head attention; translation invariance; GSD scaling."""

from __future__ import annotations

import torch
from torch import nn

from spacenit.arch.attention import Attention
from spacenit.arch.models import create_model
from spacenit.arch.rope import SpatioTemporalRoPE, apply_rope
from spacenit.sensors import SENTINEL2_L2A


def test_gqa_with_as_many_kv_heads_as_heads_is_multi_head_attention() -> None:
    torch.manual_seed(0)
    attn = Attention(32, heads=4, kv_heads=4)
    mha = nn.MultiheadAttention(32, 4, bias=False, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(attn.qkv.weight)  # rows: queries, keys, values
        mha.out_proj.weight.copy_(attn.proj.weight)
    x = torch.randn(2, 9, 32)
    key_padding = torch.zeros(2, 9, dtype=torch.bool)
    key_padding[1, 6:] = True
    expected, _ = mha(x, x, x, key_padding_mask=key_padding, need_weights=False)
    got = attn(x, None, (~key_padding)[:, None, None, :])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_gqa_shares_each_kv_head_among_its_query_group() -> None:
    torch.manual_seed(0)
    gqa = Attention(32, heads=4, kv_heads=2)
    mha = Attention(32, heads=4, kv_heads=4)
    hd = 8
    with torch.no_grad():
        q, k, v = gqa.qkv.weight.split((4 * hd, 2 * hd, 2 * hd))
        # Query heads 0, 1 use KV head 0; heads 2, 3 use KV head 1.
        k4 = k.view(2, hd, 32).repeat_interleave(2, dim=0).reshape(4 * hd, 32)
        v4 = v.view(2, hd, 32).repeat_interleave(2, dim=0).reshape(4 * hd, 32)
        mha.qkv.weight.copy_(torch.cat((q, k4, v4)))
        mha.proj.weight.copy_(gqa.proj.weight)
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(gqa(x, None, None), mha(x, None, None), atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in gqa.parameters()) < sum(p.numel() for p in mha.parameters())


def scores(rope: SpatioTemporalRoPE, q: torch.Tensor, k: torch.Tensor, pos_q: torch.Tensor, pos_k: torch.Tensor) -> torch.Tensor:
    """Attention logits (Lq, Lk) of one head with RoPE at the given positions (L, 3)."""
    qr = apply_rope(q[None, None], rope(pos_q)[None, None])[0, 0]
    kr = apply_rope(k[None, None], rope(pos_k)[None, None])[0, 0]
    return qr @ kr.T


def test_rope_scores_are_invariant_to_a_common_translation() -> None:
    torch.manual_seed(0)
    rope = SpatioTemporalRoPE(32)
    q, k = torch.randn(5, 32), torch.randn(6, 32)
    pos_q, pos_k = torch.rand(5, 3) * 50, torch.rand(6, 3) * 50
    shift = torch.tensor([37.5, -12.0, 3.0])
    torch.testing.assert_close(scores(rope, q, k, pos_q + shift, pos_k + shift), scores(rope, q, k, pos_q, pos_k), atol=1e-3, rtol=1e-4)
    moved_k_only = scores(rope, q, k, pos_q, pos_k + shift)
    assert not torch.allclose(moved_k_only, scores(rope, q, k, pos_q, pos_k), atol=1e-2)  # positions do matter


def test_rope_positions_scale_with_gsd() -> None:
    """At 20 m pixels, a patch step covers the ground of two steps at 10 m: same positions, same scores."""
    model = create_model("spacenit_nano", [SENTINEL2_L2A], depth=1, decoder_depth=1)
    tok = model.encoder.tokenizer
    images = {"sentinel2_l2a": torch.randn(1, 1, 12, 32, 32)}
    months = {"sentinel2_l2a": torch.tensor([[5]])}
    cpu = torch.device("cpu")
    pos10 = tok(images, months, 8, gsd_m=10.0).layout.positions(cpu)  # (3 groups x 4 x 4, 3)
    pos20 = tok(images, months, 8, gsd_m=20.0).layout.positions(cpu)
    torch.testing.assert_close(pos20[:, :2], 2 * pos10[:, :2])
    # The same patch offset at 20 m rotates like twice the offset at 10 m.
    rope = model.encoder.rope
    q, k = torch.randn(1, 16), torch.randn(1, 16)
    origin = torch.zeros(1, 3)
    one_patch_20m = pos20[1:2] - pos20[0:1]  # next column at 20 m
    two_patches_10m = pos10[2:3] - pos10[0:1]  # two columns at 10 m
    torch.testing.assert_close(scores(rope, q, k, origin, one_patch_20m), scores(rope, q, k, origin, two_patches_10m))
    assert not torch.allclose(scores(rope, q, k, origin, pos10[1:2] - pos10[0:1]), scores(rope, q, k, origin, one_patch_20m))
    # The position of a patch centre does not depend on the patch size: 4 px patches at 2x the count cover the same ground.
    pos_p4 = tok(images, months, 4).layout.positions(cpu)
    assert pos_p4[:64, 0].max() == 30.0 and pos10[:16, 0].max() == 28.0  # centres of the last 4 px and 8 px rows
