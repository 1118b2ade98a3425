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


# ---------------------------------------------------------------- native resolution (spec core ideas 1 and 2)


def native_s2(B: int = 1, T: int = 1, px: int = 48, fn=None) -> dict:
    """Sentinel-2 L2A on its native grids over a px * 10 m footprint; each band a smooth field of the ground
    (`fn(x_m, y_m, band)`), sampled at each grid's pixel centres, so grids agree where they overlap."""
    fn = fn or (lambda x, y, c: torch.sin(2 * math.pi * (x / 400 + 0.3 * c) + y / 300))
    grids = {}
    for grid in SENTINEL2_L2A.native_grids():
        side = int(px * 10 // grid.gsd_m)
        centres = (torch.arange(side, dtype=torch.float32) + 0.5) * grid.gsd_m
        y, x = torch.meshgrid(centres, centres, indexing="ij")
        bands = [fn(x, y, SENTINEL2_L2A.bands.index(b)) for b in grid.bands]
        grids[grid] = torch.stack(bands).expand(B, T, -1, -1, -1).clone()
    return grids


def test_each_group_is_patched_on_its_own_grid_at_one_ground_patch_size() -> None:
    model = create_model("spacenit_nano", [SENTINEL2_L2A], depth=1).eval()
    months = {"sentinel2_l2a": torch.ones(1, 1, dtype=torch.long)}
    for patch_size, expected_k in ((8, {10.0: 8, 20.0: 4, 60.0: 2}), (6, {10.0: 6, 20.0: 3, 60.0: 1}), (2, {10.0: 2, 20.0: 1, 60.0: 1})):
        tok = model.encoder.tokenizer({"sentinel2_l2a": native_s2()}, months, patch_size)
        assert tok.layout.grid == (48 // patch_size, 48 // patch_size)  # one token grid of patch_size x 10 m patches
        got = {float(SENTINEL2_L2A.native_grids()[i].gsd_m): part.pixels_per_patch for i, part in enumerate(tok.pixels)}
        assert got == expected_k, patch_size  # 80 m: 8 px at 10 m, 4 at 20 m; 60 m: ceil(80 / 60) = 2
        for part in tok.pixels:
            assert part.values.shape[-1] == tok.layout.grid[1] * part.pixels_per_patch


def test_a_60m_grid_resampled_to_whole_pixels_per_patch_keeps_its_geometry() -> None:
    # P = 80 m is 4/3 of a 60 m pixel: the grid is resampled to 2 px per patch (40 m pixels). A
    # field linear in x is reproduced exactly where bilinear interpolation has neighbours on both
    # sides, i.e. the resampled pixels sit where their 40 m centres are on the ground.
    model = create_model("spacenit_nano", [SENTINEL2_L2A], depth=1).eval()
    grids = native_s2(px=48, fn=lambda x, y, c: x + 0 * y)
    tok = model.encoder.tokenizer({"sentinel2_l2a": grids}, {"sentinel2_l2a": torch.ones(1, 1, dtype=torch.long)}, 8)
    part = next(p for p in tok.pixels if p.group == "60m")
    values = part.values[0, 0, 0]  # (12, 12): 6 patches x 2 px of 40 m
    centres = (torch.arange(12, dtype=torch.float32) + 0.5) * 40.0
    inner = slice(1, -1)  # the edges clamp (no neighbour beyond the footprint)
    torch.testing.assert_close(values[0, inner], centres[inner], atol=1e-3, rtol=0)


@torch.no_grad()
def test_native_grids_and_the_same_bands_upsampled_to_10m_give_close_tokens() -> None:
    # FlexiViT's resize: a 20 m band's 4 x 4 pixels through the resized kernel give (least squares)
    # the token its 8 x 8 upsampled pixels give through the base kernel. Smooth scene, smooth kernels.
    torch.manual_seed(0)
    model = create_model("spacenit_nano", [SENTINEL2_L2A], depth=1, tokenization=TokenizationConfig(preset="single_bandset")).eval()
    for embed in model.encoder.tokenizer.patch_embed.values():
        embed.weight.copy_(F.interpolate(torch.randn(embed.weight.shape[0], embed.in_channels, 3, 3), size=(8, 8),
                                         mode="bilinear", align_corners=True) / 16)  # fmt: skip
    native = native_s2(px=48)
    one_grid = {"sentinel2_l2a": torch.cat([F.interpolate(x[0], size=(48, 48), mode="bilinear", align_corners=False)[None]
                                             for x in native.values()], dim=2)}  # fmt: skip
    order = [b for g in native for b in g.bands]
    one_grid["sentinel2_l2a"] = one_grid["sentinel2_l2a"][:, :, [order.index(b) for b in SENTINEL2_L2A.bands]]
    months = {"sentinel2_l2a": torch.ones(1, 1, dtype=torch.long)}
    a = model.encoder.tokenizer({"sentinel2_l2a": native}, months, 8).tokens
    b = model.encoder.tokenizer(one_grid, months, 8).tokens
    assert rel_err(a, b) < 0.1


def test_rope_places_a_10m_and_a_30m_token_of_the_same_ground_at_the_same_rotation() -> None:
    # Spec 2.2: positions are in ground units, so a Sentinel-2 10 m token and a Landsat 30 m token over
    # the same ground rotate alike; and a 30 m-only input tokenized at 240 m patches sits where a 10 m
    # input at 240 m patches does.
    model = create_model("spacenit_nano", [SENTINEL2_L2A, LANDSAT], depth=1).eval()
    s2 = native_s2(px=48)
    landsat = {LANDSAT.native_grids()[0]: torch.randn(1, 1, LANDSAT.num_bands, 16, 16)}
    months = {"sentinel2_l2a": torch.ones(1, 1, dtype=torch.long), "landsat": torch.ones(1, 1, dtype=torch.long)}
    tok = model.encoder.tokenizer({"sentinel2_l2a": s2, "landsat": landsat}, months, 8)
    positions = tok.layout.positions(torch.device("cpu"))[:, :2]
    spans = {block.sensor: (start, stop) for block, start, stop in tok.layout.spans()}
    per_map = tok.layout.grid[0] * tok.layout.grid[1]
    s2_first = positions[spans["sentinel2_l2a"][0] : spans["sentinel2_l2a"][0] + per_map]
    landsat_first = positions[spans["landsat"][0] : spans["landsat"][0] + per_map]
    torch.testing.assert_close(s2_first, landsat_first)
    rotation = model.encoder.rope(torch.cat((positions, torch.zeros(len(positions), 1)), dim=1))
    torch.testing.assert_close(rotation[spans["sentinel2_l2a"][0]], rotation[spans["landsat"][0]])
    only_landsat = create_model("spacenit_nano", [LANDSAT], depth=1).eval()
    at_30m = only_landsat.encoder.tokenizer({"landsat": landsat}, {"landsat": months["landsat"]}, 8, gsd_m=30.0)
    at_10m = model.encoder.tokenizer({"sentinel2_l2a": s2, "landsat": landsat}, months, 24)
    torch.testing.assert_close(at_30m.layout.positions(torch.device("cpu"))[:, :2],
                               at_10m.layout.positions(torch.device("cpu"))[: at_30m.layout.num_tokens, :2])  # fmt: skip
