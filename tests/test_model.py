"""The nano encoder: shapes, gradients, absent-token removal, determinism."""

from __future__ import annotations

import torch

from spacenit.arch.encoder import mean_pool, pack, unpack
from spacenit.arch.models import PRESETS, count_parameters, create_model
from spacenit.sensors import SENTINEL, SENTINEL1, SENTINEL2_L2A, SRTM
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


def small_model():
    torch.manual_seed(0)
    return create_model("spacenit_nano", SENSORS, depth=2, decoder_depth=1)


def test_pack_unpack_round_trip() -> None:
    x = torch.randn(3, 7, 4)
    keep = torch.rand(3, 7) > 0.4
    keep[:, 0] = True
    packed, pad, index = pack(x, keep)
    assert packed.shape[1] == int(keep.sum(1).max())
    back = unpack(packed, pad, index, 7)
    torch.testing.assert_close(back, x * keep.unsqueeze(-1))


def test_every_parameter_gets_a_gradient() -> None:
    model = small_model()
    images, months = batch()
    out = LatentPrediction(model)({"images": images, "months": months}, 8, torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []


def test_absent_tokens_are_removed_not_just_masked() -> None:
    """A sample's output must not depend on what else is in the batch (padding is invisible)."""
    model = small_model().eval()
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
    # all-sentinel patches are absent tokens
    assert tok.absent[0].sum() == 2 * 4  # 2 timesteps x 4 patches of Sentinel-1


def test_eval_forward_is_deterministic_and_pooled_shape() -> None:
    model = small_model().eval()
    images, months = batch()
    a = model.embed(images, months, 8)
    b = model.embed(images, months, 8)
    assert a.shape == (2, PRESETS["spacenit_nano"].dim)
    torch.testing.assert_close(a, b)


def test_random_visibility_invariants() -> None:
    absent = torch.zeros(4, 100, dtype=torch.bool)
    absent[1, :30] = True
    visible, predict = random_visibility(absent, 0.75, torch.Generator().manual_seed(0))
    assert not (visible & predict).any()
    assert not (visible & absent).any() and not (predict & absent).any()
    assert (visible | predict | absent).all()
    assert visible[0].sum() == 25 and visible[1].sum() == round(70 * 0.25)


def test_mean_pool_ignores_dropped_tokens() -> None:
    enc = torch.tensor([[[1.0], [3.0], [100.0]]])
    keep = torch.tensor([[True, True, False]])
    assert mean_pool(enc, keep).item() == 2.0


def test_nano_size() -> None:
    model = create_model("spacenit_nano", SENSORS)
    assert 0.5e6 < count_parameters(model.encoder) < 5e6
