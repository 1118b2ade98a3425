"""Pretraining batches: deterministic plans, rank sharding, token budget, workers, resume position."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

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
    return BatchPlanner(len(dataset), 8, micro, pretrain_geometry(dataset), LoaderConfig(**cfg), seed)


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
    p = BatchPlanner(len(dataset), 8, 4, pretrain_geometry(dataset), cfg, seed=3)
    inline = list(build_pretrain_loader(dataset, p, cfg, rank=0, world_size=1, start_step=0, total_steps=3))
    cfg_workers = LoaderConfig(min_patch_size=2, max_patch_size=8, token_budget=300, num_workers=2)
    pooled = list(build_pretrain_loader(dataset, p, cfg_workers, rank=0, world_size=1, start_step=0, total_steps=3))
    assert len(inline) == len(pooled) == 6
    geometry = pretrain_geometry(dataset)
    for a, b in zip(inline, pooled, strict=True):
        assert (a["step"], a["micro_index"], a["patch_size"]) == (b["step"], b["micro_index"], b["patch_size"])
        assert a["gsd_m"] == 10.0  # the grid's pixel size, which the tokenizer scales positions by
        for sensor, x in a["images"].items():
            torch.testing.assert_close(x, b["images"][sensor], rtol=0, atol=0)
            B, T, C, H, W = x.shape
            assert B == 4 and H % a["patch_size"] == 0 and W % a["patch_size"] == 0
        H, W = a["images"]["sentinel2_l2a"].shape[-2:]
        assert geometry.tokens(H // a["patch_size"], W // a["patch_size"]) <= 300
        s2 = a["images"]["sentinel2_l2a"]
        real = s2[s2 != SENTINEL]
        assert real.abs().mean() < 5, "images should be standardized"


def test_resuming_mid_run_yields_the_same_batches(dataset) -> None:
    cfg = LoaderConfig(num_workers=0, token_budget=500)
    p = BatchPlanner(len(dataset), 8, 8, pretrain_geometry(dataset), cfg, seed=0)
    full = list(build_pretrain_loader(dataset, p, cfg, rank=0, world_size=1, start_step=0, total_steps=4))
    resumed = list(build_pretrain_loader(dataset, p, cfg, rank=0, world_size=1, start_step=2, total_steps=4))
    for a, b in zip(full[2:], resumed, strict=True):
        assert a["step"] == b["step"] and torch.equal(a["index"], b["index"])
        for sensor in a["images"]:
            assert torch.equal(a["images"][sensor], b["images"][sensor])
