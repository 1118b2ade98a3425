"""Pretraining batches: deterministic plans, rank sharding, token budget, workers, resume position."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spacenit.arch.model_config import ModelConfig
from spacenit.arch.models import SpaceNitModel
from spacenit.arch.tokenization import (
    TOKENIZATION_PRESETS,
    SensorTokenization,
    TokenGroup,
    TokenizationConfig,
)
from spacenit.data.crop import TokenGeometry, sample_crop
from spacenit.data.loader import (
    BatchPlanner,
    GeoTileDataset,
    LoaderConfig,
    MicroBatchSampler,
    build_pretrain_loader,
    pretrain_geometry,
)
from spacenit.data.stats import load_stats
from spacenit.sensors import SENTINEL


@pytest.fixture(scope="module")
def dataset(synthetic_dataset: Path) -> GeoTileDataset:
    return GeoTileDataset(synthetic_dataset, load_stats(synthetic_dataset / "stats.json"))


def planner(dataset: GeoTileDataset, micro: int = 2, seed: int = 0, **cfg) -> BatchPlanner:
    return BatchPlanner(len(dataset), 8, micro, pretrain_geometry(dataset, ModelConfig()), LoaderConfig(**cfg), seed)


def test_plans_depend_only_on_seed_and_step(dataset) -> None:
    a, b = planner(dataset), planner(dataset)
    assert [a.plan(s, j) for s in range(6) for j in range(4)] == [b.plan(s, j) for s in range(6) for j in range(4)]
    assert planner(dataset, seed=1).plan(0, 0) != a.plan(0, 0)
    # one epoch (3 steps of 8 out of 24 samples) visits every sample once, the next one reshuffles
    epoch0 = [i for s in range(3) for j in range(4) for i in a.plan(s, j).indices]
    epoch1 = [i for s in range(3, 6) for j in range(4) for i in a.plan(s, j).indices]
    assert sorted(epoch0) == sorted(epoch1) == list(range(24)) and epoch0 != epoch1
    # every micro-batch of a step shares the patch size and the crop
    for s in range(6):
        assert len({(a.plan(s, j).patch_size, a.plan(s, j).crop) for j in range(4)}) == 1


def test_ranks_split_the_global_batch_like_accumulation(dataset) -> None:
    p = planner(dataset)
    one_rank = list(MicroBatchSampler(p, rank=0, world_size=1, start_step=0, total_steps=3))
    two_ranks = [list(MicroBatchSampler(p, rank=r, world_size=2, start_step=0, total_steps=3)) for r in (0, 1)]
    for step in range(3):
        mine = one_rank[step * 4 : step * 4 + 4]
        assert mine[:2] == two_ranks[0][step * 2 : step * 2 + 2] and mine[2:] == two_ranks[1][step * 2 : step * 2 + 2]
    with pytest.raises(ValueError, match="do not split"):
        MicroBatchSampler(p, rank=0, world_size=3, start_step=0, total_steps=1)


def test_crop_respects_the_token_budget_and_patch_range() -> None:
    geometry = TokenGeometry(tokens_per_patch=9, fixed_tokens=0, tile_size_px=64)
    import numpy as np

    rng = np.random.default_rng(0)
    for budget in (50, 300, 2250, 10**6):
        for p in (1, 2, 3, 8):
            h, w = sample_crop(rng, geometry, p, budget)
            assert 1 <= h <= 64 // p and 1 <= w <= 64 // p
            assert h * w * 9 <= budget or (h, w) == (64 // p, 64 // p) and 64 // p * 64 // p * 9 <= budget
    with pytest.raises(ValueError, match="token budget"):
        sample_crop(rng, geometry, 1, 5)


def test_batches_are_cropped_standardized_and_identical_with_workers(dataset) -> None:
    cfg = LoaderConfig(min_patch_size=2, max_patch_size=8, token_budget=300, num_workers=0)
    p = BatchPlanner(len(dataset), 8, 4, pretrain_geometry(dataset, ModelConfig()), cfg, seed=3)
    inline = list(build_pretrain_loader(dataset, p, cfg, rank=0, world_size=1, start_step=0, total_steps=3))
    cfg_workers = LoaderConfig(min_patch_size=2, max_patch_size=8, token_budget=300, num_workers=2)
    pooled = list(build_pretrain_loader(dataset, p, cfg_workers, rank=0, world_size=1, start_step=0, total_steps=3))
    assert len(inline) == len(pooled) == 6
    geometry = pretrain_geometry(dataset, ModelConfig())
    for a, b in zip(inline, pooled, strict=True):
        assert (a["step"], a["micro_index"], a["patch_size"]) == (b["step"], b["micro_index"], b["patch_size"])
        assert a["gsd_m"] == 10.0  # the reference grid's pixel size, which patch sizes count in
        p = a["patch_size"]
        for sensor, grids in a["images"].items():
            for grid, x in grids.items():
                torch.testing.assert_close(x, b["images"][sensor][grid], rtol=0, atol=0)
                B, T, C, H, W = x.shape
                assert B == 4 and C == len(grid.bands)
        s2 = a["images"]["sentinel2_l2a"]
        (H, W), *_ = [x.shape[-2:] for g, x in s2.items() if g.gsd_m == 10.0]
        assert H % p == 0 and W % p == 0  # the reference grid is cut in whole patches
        for grid, x in s2.items():  # every grid covers the crop's ground, in whole pixels of its own
            assert x.shape[-2] * grid.gsd_m >= H * 10.0 > (x.shape[-2] - 1) * grid.gsd_m
        assert geometry.tokens(H // p, W // p) <= 300
        real = torch.cat([x[x != SENTINEL] for x in s2.values()])
        assert real.abs().mean() < 5, "images should be standardized"


def test_resuming_mid_run_yields_the_same_batches(dataset) -> None:
    cfg = LoaderConfig(num_workers=0, token_budget=500)
    p = BatchPlanner(len(dataset), 8, 8, pretrain_geometry(dataset, ModelConfig()), cfg, seed=0)
    full = list(build_pretrain_loader(dataset, p, cfg, rank=0, world_size=1, start_step=0, total_steps=4))
    resumed = list(build_pretrain_loader(dataset, p, cfg, rank=0, world_size=1, start_step=2, total_steps=4))
    for a, b in zip(full[2:], resumed, strict=True):
        assert a["step"] == b["step"] and torch.equal(a["index"], b["index"])
        for sensor, grids in a["images"].items():
            for grid, x in grids.items():
                assert torch.equal(x, b["images"][sensor][grid])


def _best_tokens(per_patch: int, side: int, budget: int) -> int:
    """The most tokens whole-patch crops of a side x side tile can have within the budget (brute force)."""
    return max(h * w * per_patch for h in range(1, side + 1) for w in range(1, side + 1) if h * w * per_patch <= budget)


def _emitted_tokens(dataset: GeoTileDataset, model_config: ModelConfig, cfg: LoaderConfig, steps: int = 6) -> list[tuple[int, int, int]]:
    """(tokens the tokenizer emits for one sample at the patch size its loss needs, that patch size, its
    tokens per patch) for the first steps' batches."""
    sensors = [dataset.reader.info.sensors[n] for n in dataset.sensor_names]
    model = SpaceNitModel(model_config, sensors)
    planner = BatchPlanner(len(dataset), 8, 8, pretrain_geometry(dataset, model_config), cfg, seed=0)
    out = []
    for batch in build_pretrain_loader(dataset, planner, cfg, rank=0, world_size=1, start_step=0, total_steps=steps):
        tok = model.encoder.tokenizer(batch["images"], batch["months"], batch["patch_size"], batch["gsd_m"])
        fine = model_config.output_patch_size
        p = batch["patch_size"]
        if fine is not None and fine < p:  # hybrid: the target encoder tokenizes at the output size
            tok, p = model.encoder.tokenizer(batch["images"], batch["months"], fine, batch["gsd_m"]), fine
        h, w = tok.layout.grid
        out.append((tok.tokens.shape[1], p, tok.tokens.shape[1] // (h * w)))
    return out


@pytest.mark.parametrize("preset", sorted(TOKENIZATION_PRESETS))
def test_what_the_tokenizer_emits_stays_within_the_budget_and_uses_most_of_it(dataset, preset: str) -> None:
    # The token budget counts the model's token groups, not the sensors' spectral groups: a
    # single-bandset preset gets three times the patches, a finer grouping fewer.
    cfg = LoaderConfig(num_workers=0, token_budget=150, min_patch_size=1, max_patch_size=4)
    for tokens, p, per_patch in _emitted_tokens(dataset, ModelConfig(tokenization=TokenizationConfig(preset=preset)), cfg):
        assert tokens <= 150, (preset, p, tokens)
        assert tokens >= 0.9 * min(150, _best_tokens(per_patch, 24 // p, 150)), (preset, p, tokens)


def test_a_user_grouping_and_hybrid_targets_are_budgeted_too(dataset) -> None:
    singles = [TokenGroup(b, [b]) for b in ("B02", "B03", "B04", "B08")]  # 4 one-band groups instead of one
    finer = TokenizationConfig(sensors=[SensorTokenization("sentinel2_l2a", [*singles,
        TokenGroup("rest", ["B01", "B05", "B06", "B07", "B8A", "B09", "B11", "B12"])])])  # fmt: skip
    cfg = LoaderConfig(num_workers=0, token_budget=200, min_patch_size=2, max_patch_size=6)
    for tokens, p, per_patch in _emitted_tokens(dataset, ModelConfig(tokenization=finer), cfg):
        assert per_patch == 5 * 2 + 2 + 1  # 5 groups x 2 dates of S2, 2 dates of S1, the DEM
        assert 0.9 * min(200, _best_tokens(per_patch, 24 // p, 200)) <= tokens <= 200, (p, tokens)
    hybrid = ModelConfig(output_patch_size=1)  # the target encoder runs at patch size 1: that is what counts
    for tokens, p, _ in _emitted_tokens(dataset, hybrid, LoaderConfig(num_workers=0, token_budget=400, min_patch_size=2, max_patch_size=4)):
        assert p == 1 and tokens <= 400, tokens
