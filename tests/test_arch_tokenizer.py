"""Tokenization: FlexiViT patch resize, band groups by name (the seed's bandset variants), band dropout, months."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from spacenit.arch.model_config import ModelConfig
from spacenit.arch.models import create_model
from spacenit.arch.month_embed import CyclicMonthEmbed
from spacenit.arch.patch_embed import AdaptivePatchEmbed
from spacenit.arch.tokenization import (
    SensorTokenization,
    TokenGroup,
    TokenizationConfig,
    band_dropout_keep,
)
from spacenit.config import apply_overrides
from spacenit.sensors import LANDSAT, SENTINEL2_L1C, SENTINEL2_L2A


def smooth_image(channels: int, px: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, px), torch.linspace(0, 1, px), indexing="ij")
    waves = [torch.sin(2 * math.pi * (0.3 * i * xx + 0.2 * yy) + i) for i in range(channels)]
    return torch.stack(waves)[None]  # (1, C, px, px)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@torch.no_grad()
def test_flexivit_resize_keeps_tokens_close_for_smooth_inputs() -> None:
    torch.manual_seed(0)
    embed = AdaptivePatchEmbed(4, 32, base_patch_size=8)
    smooth_kernel = F.interpolate(torch.randn(32, 4, 3, 3), size=(8, 8), mode="bilinear", align_corners=True) / 16
    embed.weight.copy_(smooth_kernel)  # smooth, like trained kernels
    x = smooth_image(4, 64)
    reference = embed(x, 8)  # (1, 64 tokens, 32)
    for p in (4, 6):
        smaller = F.interpolate(x, size=(8 * p, 8 * p), mode="bilinear", antialias=True, align_corners=False)
        assert rel_err(embed(smaller, p), reference) < 0.05, p  # same scene, fewer pixels, smaller patches
        naive = F.conv2d(smaller, embed.weight[..., :: 8 // p, :: 8 // p] if p == 4 else embed.weight[..., 1:7, 1:7],
                         embed.bias, stride=p).flatten(2).transpose(1, 2)  # fmt: skip
        assert rel_err(naive, reference) > 0.3  # a subsampled or cropped kernel is far off: the bound means something
    # Growing the patch (base 4 -> 8) is exact per patch: <B x, pinv(B^T) w> = <x, w>.
    small = AdaptivePatchEmbed(4, 32, base_patch_size=4)
    x4 = F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    assert rel_err(small(x, 8), small(x4, 4)) < 0.05


def groups_of(config: TokenizationConfig, sensor=SENTINEL2_L2A) -> dict[str, int]:
    return {g.name: len(g.bands) for g in config.groups_for(sensor)}


def test_tokenization_presets_select_bands_by_name() -> None:
    assert groups_of(TokenizationConfig()) == {"10m": 4, "20m": 6, "60m": 2}
    assert groups_of(TokenizationConfig(), LANDSAT) == {"vnir": 6, "swir_tir": 5}
    assert groups_of(TokenizationConfig("single_bandset_all12")) == {"all": 12}
    assert groups_of(TokenizationConfig("single_bandset_all12"), LANDSAT) == {"all": 11}
    assert groups_of(TokenizationConfig("single_bandset_no60m")) == {"no60m": 10}
    assert groups_of(TokenizationConfig("single_bandset_10m_only")) == {"10m": 4}
    assert groups_of(TokenizationConfig("two_bandsets_10m_20m")) == {"10m": 4, "20m": 6}
    assert groups_of(TokenizationConfig("two_bandsets_10m_20m"), LANDSAT) == {"all": 11}
    for sensor, bands in ((SENTINEL2_L2A, 12), (SENTINEL2_L1C, 13), (LANDSAT, 11)):
        assert groups_of(TokenizationConfig("single_bandset"), sensor) == {"all": bands}
        assert TokenizationConfig("single_bandset").groups_for(sensor)[0].bands == list(sensor.bands)
    no60m = TokenizationConfig("single_bandset_no60m").groups_for(SENTINEL2_L2A)[0]
    assert "B01" not in no60m.bands and "B09" not in no60m.bands
    with pytest.raises(KeyError, match="B99"):
        TokenizationConfig(sensors=[SensorTokenization("sentinel2_l2a", [TokenGroup("x", ["B02", "B99"])])]).groups_for(SENTINEL2_L2A)
    with pytest.raises(ValueError, match="unknown tokenization preset"):
        TokenizationConfig("three_bandsets")


def test_tokens_follow_the_tokenization_and_the_default_via_config_is_the_default() -> None:
    images = {"sentinel2_l2a": torch.randn(1, 2, 12, 16, 16)}
    images["sentinel2_l2a"][:, :, 0] = 1e4  # B01 (60m) only: must not reach a no-60m token
    months = {"sentinel2_l2a": torch.tensor([[1, 7]])}
    torch.manual_seed(0)
    default = create_model("spacenit_nano", [SENTINEL2_L2A], depth=1).encoder.tokenizer
    spelled_out = TokenizationConfig(sensors=[SensorTokenization("sentinel2_l2a", [
        TokenGroup(g.name, list(g.bands)) for g in SENTINEL2_L2A.groups])])  # fmt: skip
    torch.manual_seed(0)
    explicit = create_model("spacenit_nano", [SENTINEL2_L2A], depth=1, tokenization=spelled_out).encoder.tokenizer
    torch.testing.assert_close(explicit(images, months, 8).tokens, default(images, months, 8).tokens)  # experiment 11
    no60m = create_model("spacenit_nano", [SENTINEL2_L2A], depth=1, tokenization=TokenizationConfig("single_bandset_no60m"))
    tok = no60m.encoder.tokenizer(images, months, 8)
    assert tok.tokens.shape[1] == 2 * 4 and tok.tokens.abs().max() < 100  # 1 group x 2 timesteps x 4 patches


def test_tokenization_round_trips_through_model_config_and_overrides() -> None:
    cfg = apply_overrides(ModelConfig(), ["tokenization.preset=two_bandsets_10m_20m", "tokenization.band_dropout=0.3",
                                          "tokenization.random_band_dropout=true", "merge_bandsets=true", "merge_after_layer=3"])  # fmt: skip
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.tokenization.preset == "two_bandsets_10m_20m" and cfg.tokenization.band_dropout == 0.3
    custom = ModelConfig(tokenization=TokenizationConfig(sensors=[SensorTokenization("landsat", [TokenGroup("a", ["B1"])])]))
    assert ModelConfig.from_dict(custom.to_dict()) == custom


def test_band_dropout_fixed_and_random_rates() -> None:
    torch.manual_seed(0)
    fixed = band_dropout_keep(20000, 12, 0.5, False, torch.device("cpu"))
    assert fixed.any(dim=1).all()  # at least one band per sample
    assert abs((~fixed).float().mean().item() - 0.5) < 0.02
    rand = band_dropout_keep(20000, 12, 0.3, True, torch.device("cpu"))
    dropped = (~rand).float().mean(dim=1)  # per-sample rate ~ U(0, 0.3): mean 0.15, never far above 0.3
    assert abs(dropped.mean().item() - 0.15) < 0.01 and dropped.max() < 0.8
    assert (dropped == 0).float().mean() > 0.1  # rates near 0 keep every band


def test_band_dropout_only_in_training_and_only_where_enabled() -> None:
    cfg = TokenizationConfig("single_bandset_all12", band_dropout=0.5)
    torch.manual_seed(0)
    tokenizer = create_model("spacenit_nano", [SENTINEL2_L2A], depth=1, tokenization=cfg).encoder.tokenizer
    images, months = {"sentinel2_l2a": torch.randn(4, 1, 12, 8, 8)}, {"sentinel2_l2a": torch.ones(4, 1, dtype=torch.long)}
    clean = tokenizer.eval()(images, months, 8).tokens
    assert not torch.allclose(tokenizer.train()(images, months, 8).tokens, clean)
    tokenizer.band_dropout_enabled = False  # the EMA target encoder
    torch.testing.assert_close(tokenizer.train()(images, months, 8).tokens, clean)


def test_cyclic_month_embedding() -> None:
    embed = CyclicMonthEmbed(8)
    e = embed(torch.tensor([0, 1, 12, 6]))
    assert (e[0] == 0).all()  # unknown month
    assert (e[1] - e[2]).norm() < (e[1] - e[3]).norm()  # January is next to December, far from June
