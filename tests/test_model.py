"""The encoder and predictor end to end: gradients, absent-token removal, determinism, heads, pooling."""

from __future__ import annotations

import pytest
import torch

from spacenit.arch.heads import PixelHead, ProjectionHead, patch_targets
from spacenit.arch.models import PRESETS, create_model
from spacenit.arch.packing import pack, unpack
from spacenit.arch.pooling import AttentionPool, mean_pool
from spacenit.sensors import ERA5, SENTINEL, SENTINEL1, SENTINEL2_L2A, SRTM
from spacenit.train.objectives import LatentPrediction, random_visibility

SENSORS = [SENTINEL2_L2A, SENTINEL1, SRTM]


def batch(B: int = 2, T: int = 2, px: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = {
        "sentinel2_l2a": torch.randn(B, T, 12, px, px, generator=g),
        "sentinel1": torch.randn(B, T, 2, px, px, generator=g),
        "srtm": torch.randn(B, 1, 1, px, px, generator=g),
    }
    months = {"sentinel2_l2a": torch.tensor([[3, 9]] * B), "sentinel1": torch.tensor([[3, 0]] * B), "srtm": torch.zeros(B, 1, dtype=torch.long)}
    return images, months


def small_model(**overrides):
    torch.manual_seed(0)
    return create_model("spacenit_nano", SENSORS, depth=2, decoder_depth=1, **overrides)


def test_pack_unpack_round_trip() -> None:
    x = torch.randn(3, 7, 4)
    keep = torch.rand(3, 7) > 0.4
    keep[:, 0] = True
    packed, real, index = pack(x, keep)
    assert packed.shape[1] == int(keep.sum(1).max())
    torch.testing.assert_close(unpack(packed, real, index, 7), x * keep.unsqueeze(-1))


VARIANTS = {
    "default": {},
    "merge_before": {"merge_bandsets": True},
    "merge_mid_registers_gqa_qknorm": {"merge_bandsets": True, "merge_after_layer": 0, "num_registers": 2, "kv_heads": 2, "qk_norm": True},
    "hybrid_learned": {"output_patch_size": 4, "upsampler": "learned"},
}


@pytest.mark.parametrize("overrides", VARIANTS.values(), ids=VARIANTS.keys())
def test_every_parameter_gets_a_gradient(overrides) -> None:
    model = small_model(**overrides)
    images, months = batch(px=8 if overrides.get("output_patch_size") else 16)
    out = LatentPrediction(model)({"images": images, "months": months}, 8, torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []


def test_absent_tokens_are_removed_not_just_masked() -> None:
    """A sample's output must not depend on what else is in the batch (padding is invisible)."""
    model = small_model(num_registers=2).eval()
    images, months = batch()
    images["sentinel1"][0] = SENTINEL  # sample 0 has no Sentinel-1 at all: fewer tokens
    images["sentinel2_l2a"][1, 1, :, :8, :8] = SENTINEL  # sample 1 misses one patch at t=1
    with torch.no_grad():
        encoded, keep, tok = model.encoder(images, months, 8)
        assert keep[0].sum() < keep[1].sum()
        for b in range(2):
            alone = {k: v[b : b + 1] for k, v in images.items()}
            m = {k: v[b : b + 1] for k, v in months.items()}
            enc_b, keep_b, _ = model.encoder(alone, m, 8)
            torch.testing.assert_close(enc_b[0][keep_b[0]], encoded[b][keep[b]], atol=1e-5, rtol=1e-5)
    assert tok.absent[0].sum() == 2 * 4  # all-sentinel patches are absent: 2 timesteps x 4 patches of Sentinel-1
    assert tok.absent[1].sum() == 3  # the three S2 groups of one patch at t=1


def test_removing_dropped_tokens_equals_masking_them() -> None:
    """Packing (no compute on dropped tokens) = running every token with dropped keys masked out."""
    model = small_model(num_registers=2).eval()
    enc = model.encoder
    images, months = batch()
    images["sentinel2_l2a"][0, 0, :, :8, :] = SENTINEL
    with torch.no_grad():
        tok = enc.tokenizer(images, months, 8)
        visible = torch.rand(tok.absent.shape, generator=torch.Generator().manual_seed(1)) < 0.6
        removed, keep, _ = enc.encode(tok, visible)
        assert keep.sum(1).max() < keep.shape[1]  # something really was removed
        # Reference: the whole sequence, dropped tokens only masked as keys.
        B, N, _ = tok.tokens.shape
        h = torch.cat((enc.registers.expand(B, -1, -1), tok.tokens), dim=1)
        positions = torch.cat((torch.zeros(2, 3), tok.layout.positions(h.device)))
        rope = enc.rope(positions)[None, None]  # (1, 1, R+N, hd/2)
        real = torch.cat((torch.ones(B, 2, dtype=torch.bool), keep), dim=1)
        masked = enc.norm(enc.transformer(h, rope, real[:, None, None, :]))[:, 2:]
        torch.testing.assert_close(removed[keep], masked[keep], atol=1e-5, rtol=1e-5)
        assert (removed[~keep] == 0).all()


def test_eval_forward_is_deterministic_and_pooled_shape() -> None:
    model = small_model(dropout=0.2).eval()
    images, months = batch()
    a = model.embed(images, months, 8)
    b = model.embed(images, months, 8)
    assert a.shape == (2, PRESETS["spacenit_nano"].dim)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_random_visibility_invariants() -> None:
    absent = torch.zeros(4, 100, dtype=torch.bool)
    absent[1, :30] = True
    visible, predict = random_visibility(absent, 0.75, torch.Generator().manual_seed(0))
    assert not (visible & predict).any()
    assert not (visible & absent).any() and not (predict & absent).any()
    assert (visible | predict | absent).all()
    assert visible[0].sum() == 25 and visible[1].sum() == round(70 * 0.25)


def test_pooling_ignores_dropped_tokens() -> None:
    enc = torch.tensor([[[1.0], [3.0], [100.0]]])
    keep = torch.tensor([[True, True, False]])
    assert mean_pool(enc, keep).item() == 2.0
    pool = AttentionPool(8, 2)
    x = torch.randn(2, 5, 8)
    keep = torch.tensor([[True, True, False, False, False], [False] * 5])
    changed = x.clone()
    changed[0, 2:] = 1e3  # dropped tokens must not matter
    torch.testing.assert_close(pool(x, keep), pool(changed, keep))
    assert torch.isfinite(pool(x, keep)).all()  # a sample with no token pools to a finite vector


def test_nonspatial_sensor_is_one_token_per_timestep() -> None:
    torch.manual_seed(0)
    model = create_model("spacenit_nano", [SENTINEL2_L2A, ERA5], depth=1, decoder_depth=1).eval()
    images = {"sentinel2_l2a": torch.randn(2, 3, 12, 16, 16), "era5": torch.randn(2, 3, ERA5.num_bands)}
    images["era5"][1, 2] = SENTINEL
    months = {"sentinel2_l2a": torch.tensor([[1, 2, 3]] * 2), "era5": torch.tensor([[1, 2, 3]] * 2)}
    encoded, keep, tok = model.encoder(images, months, 8)
    assert encoded.shape[1] == 3 * 3 * 4 + 3  # S2: 3 groups x 3 timesteps x 4 patches; ERA5: 3 timesteps
    assert tok.absent[:, -3:].tolist() == [[False] * 3, [False, False, True]]
    assert tok.layout.positions(torch.device("cpu"))[-1, :2].tolist() == [8.0, 8.0]  # the tile centre


def test_heads_shapes() -> None:
    model = small_model()
    images, months = batch()
    encoded, _, tok = model.encoder(images, months, 4)
    groups = {(s, g.name): len(g.bands) for s, gs in model.encoder.tokenizer.groups.items() for g in gs}
    pixels = PixelHead(128, groups, 8)(encoded, tok.layout, tok.pixels)
    targets = patch_targets(tok.pixels)
    # One row per token (2 dates x 4 x 4 patches of 4 px), each its group's pixels at patch size 4.
    assert pixels[("sentinel2_l2a", "20m")].shape == targets[("sentinel2_l2a", "20m")].shape == (2, 2 * 16, 6 * 4 * 4)
    assert pixels[("srtm", "elevation")].shape == (2, 16, 1 * 4 * 4)
    z = ProjectionHead(128, 64, 32)(mean_pool(encoded, ~tok.absent))
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(2))
