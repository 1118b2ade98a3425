"""Masking strategies: exact ratios, the four states, absent tokens, cross-sensor semantics."""

from __future__ import annotations

import pytest
import torch

from spacenit.config import ConfigError
from spacenit.data.masking import (
    ABSENT,
    PREDICTED,
    TARGET_ONLY,
    VISIBLE,
    MaskingConfig,
    TokenInfo,
)

# Three sensors on a 4x4 patch grid: S2 with 3 bandsets x 2 timesteps, S1 with 1 x 2, SRTM static 1 x 1.
GROUPS = [("sentinel2_l2a", 2), ("sentinel2_l2a", 2), ("sentinel2_l2a", 2), ("sentinel1", 2), ("srtm", 1)]
H = W = 4


def layout_info(batch: int = 6, seed: int = 0, absent_fraction: float = 0.15) -> TokenInfo:
    positions, group_index = [], []
    for g, (_, T) in enumerate(GROUPS):
        for t in range(T):
            for r in range(H):
                for c in range(W):
                    positions.append(((r + 0.5) * 8, (c + 0.5) * 8, float(t)))
                    group_index.append(g)
    N = len(positions)
    gen = torch.Generator().manual_seed(seed)
    absent = torch.rand(batch, N, generator=gen) < absent_fraction
    absent[0] = False
    s1 = torch.tensor([GROUPS[g][0] == "sentinel1" for g in group_index])
    absent[1, s1] = True  # sample 1 has no Sentinel-1 at all
    return TokenInfo(absent, torch.tensor(positions), torch.tensor(group_index), tuple(s for s, _ in GROUPS),
                     static_sensors=frozenset({"srtm"}))  # fmt: skip


ALL = ["random", "range", "spatial", "block", "temporal", "spectral", "modality_cross_random", "random_with_decode"]


def build(strategy: str, **kw):
    return MaskingConfig(strategy=strategy, **kw).build()


@pytest.mark.parametrize("strategy", ALL + ["scheduled", "composite"])
def test_states_are_valid_and_absent_tokens_stay_absent(strategy: str) -> None:
    info = layout_info()
    extra = {"parts": [MaskingConfig(strategy="spatial"), MaskingConfig(strategy="random")]} if strategy == "composite" else {}
    if strategy == "scheduled":
        extra = {"parts": [MaskingConfig(strategy="random")]}
    states = build(strategy, **extra)(info, torch.Generator().manual_seed(1), step=10)
    assert states.shape == info.absent.shape and states.dtype == torch.int8
    assert set(states.unique().tolist()) <= {VISIBLE, TARGET_ONLY, PREDICTED, ABSENT}
    assert ((states == ABSENT) == info.absent).all(), "absent tokens must be ABSENT and nothing else"
    for b in range(info.batch_size):
        assert (states[b] == VISIBLE).any() and (states[b] == PREDICTED).any(), f"sample {b} has nothing to see or predict"


@pytest.mark.parametrize("strategy", ALL)
def test_masks_depend_only_on_the_generator(strategy: str) -> None:
    info = layout_info()
    masking = build(strategy)
    a = masking(info, torch.Generator().manual_seed(7))
    b = masking(info, torch.Generator().manual_seed(7))
    c = masking(info, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_random_hits_exact_ratios() -> None:
    info = layout_info()
    states = build("random", encode_ratio=0.25, decode_ratio=0.5)(info, torch.Generator().manual_seed(0))
    for b in range(info.batch_size):
        n = int((~info.absent[b]).sum())
        assert int((states[b] == VISIBLE).sum()) == int(n * 0.25 + 0.5)
        assert int((states[b] == PREDICTED).sum()) == int(n * 0.5 + 0.5)


def test_spatial_masks_whole_cells_and_block_masking_is_contiguous_and_exact() -> None:
    info = layout_info(absent_fraction=0.0)
    cells, h, w = info.spatial_cells()
    static = info.tokens_of(["srtm"])
    for strategy in ("spatial", "block"):
        states = build(strategy, encode_ratio=0.25, decode_ratio=0.75, block_size=2)(info, torch.Generator().manual_seed(3))
        for b in range(info.batch_size):
            per_cell = [set(states[b][(cells == c)].tolist()) - {ABSENT} for c in range(h * w)]
            assert all(len(s) == 1 for s in per_cell), f"{strategy}: a cell has mixed states"
            predicted = torch.tensor([PREDICTED in s for s in per_cell]).view(h, w)
            assert int(predicted.sum()) == 12  # exactly 75% of 16 cells
            if strategy == "block":  # 75% of a 4x4 grid in 2x2 blocks: three whole blocks
                blocks = predicted.view(2, 2, 2, 2).permute(0, 2, 1, 3).reshape(4, 4).sum(1)
                assert sorted(blocks.tolist()) == [0, 4, 4, 4]
    assert static.any()


def test_temporal_masks_whole_timesteps_and_static_sensors_randomly() -> None:
    info = layout_info(absent_fraction=0.0)
    states = build("temporal")(info, torch.Generator().manual_seed(0))
    t_idx, _ = info.timesteps()
    temporal = ~info.tokens_of(["srtm"])
    for b in range(info.batch_size):
        for t in (0, 1):
            assert len(set(states[b][temporal & (t_idx == t)].tolist()) - {ABSENT}) == 1
        assert {VISIBLE, PREDICTED} <= set(states[b][~temporal].tolist())


def test_spectral_masks_whole_bandsets() -> None:
    info = layout_info(absent_fraction=0.0)
    states = build("spectral")(info, torch.Generator().manual_seed(0))
    for b in range(info.batch_size):
        for g in range(len(GROUPS)):
            assert len(set(states[b][info.group_index == g].tolist()) - {ABSENT}) <= 1


@pytest.mark.parametrize("unit", ["group", "sensor"])
def test_cross_sensor_encodes_and_decodes_disjoint_units(unit: str) -> None:
    info = layout_info()
    states = build("modality_cross_random", cross_unit=unit)(info, torch.Generator().manual_seed(5))
    unit_of_token = info.group_index if unit == "group" else torch.tensor(
        [["sentinel2_l2a", "sentinel1", "srtm"].index(info.group_sensors[g]) for g in info.group_index.tolist()])  # fmt: skip
    for b in range(info.batch_size):
        seen = set(unit_of_token[states[b] == VISIBLE].tolist())
        predicted = set(unit_of_token[states[b] == PREDICTED].tolist())
        assert seen and predicted and not (seen & predicted), (b, seen, predicted)
        assert len(seen) >= min(2, len(seen | predicted) - 1)


def test_decode_only_sensors_are_never_visible() -> None:
    info = layout_info()
    s1 = info.tokens_of(["sentinel1"])
    for strategy in ("random", "spatial", "modality_cross_random", "random_with_decode"):
        states = build(strategy, decode_only_sensors=["sentinel1"])(info, torch.Generator().manual_seed(2))
        assert not (states[:, s1] == VISIBLE).any(), strategy
        assert (states[:, s1] == PREDICTED).any(), strategy
    # random_with_decode predicts every present token of a decode-only sensor
    states = build("random_with_decode", decode_only_sensors=["sentinel1"])(info, torch.Generator().manual_seed(2))
    present = ~info.absent[:, s1]
    assert ((states[:, s1] == PREDICTED) == present).all()


def test_random_with_decode_gives_each_bandset_one_role() -> None:
    info = layout_info()
    states = build("random_with_decode")(info, torch.Generator().manual_seed(4))
    for b in range(info.batch_size):
        for g in range(len(GROUPS)):
            s = set(states[b][info.group_index == g].tolist()) - {ABSENT, TARGET_ONLY}
            assert len(s) <= 1, f"bandset {g} of sample {b} is both seen and predicted"


def test_range_draws_ratios_per_sample() -> None:
    info = layout_info(batch=16, absent_fraction=0.0)
    states = build("range", encode_ratio_range=[0.1, 0.5], decode_ratio_range=[0.3, 0.5])(info, torch.Generator().manual_seed(0))
    n = (~info.absent).sum(1).float()
    enc = (states == VISIBLE).sum(1).float() / n
    dec = (states == PREDICTED).sum(1).float() / n
    n = float(n.min())
    assert enc.min() >= 0.1 - 1 / n and enc.max() <= 0.5 + 1 / n and dec.min() >= 0.3 - 1 / n and dec.max() <= 0.5 + 1 / n
    assert len(set(enc.tolist())) > 4, "ratios should vary across samples"


def test_scheduled_moves_the_ratios() -> None:
    info = layout_info(absent_fraction=0.0)
    masking = build("scheduled", parts=[MaskingConfig(strategy="random", encode_ratio=0.5, decode_ratio=0.5)],
                    end_encode_ratio=0.25, end_decode_ratio=0.75, schedule_steps=100)  # fmt: skip
    n = info.num_tokens
    start = masking(info, torch.Generator().manual_seed(0), step=0)
    end = masking(info, torch.Generator().manual_seed(0), step=500)
    assert int((start[0] == PREDICTED).sum()) == n // 2 and int((end[0] == PREDICTED).sum()) == int(n * 0.75 + 0.5)


def test_composite_union_intersection_cascade() -> None:
    info = layout_info(absent_fraction=0.0)
    parts = [MaskingConfig(strategy="spatial", encode_ratio=0.5, decode_ratio=0.5),
             MaskingConfig(strategy="temporal", encode_ratio=0.5, decode_ratio=0.5)]  # fmt: skip
    g = lambda: torch.Generator().manual_seed(9)  # noqa: E731
    a = parts[0].build()(info, g())
    b_gen = g()
    parts[0].build()(info, b_gen)  # the composite draws its parts in order from one generator
    b = parts[1].build()(info, b_gen)
    union = build("composite", parts=parts, combine="union")(info, g())
    inter = build("composite", parts=parts, combine="intersection")(info, g())
    assert torch.equal(union == VISIBLE, (a == VISIBLE) & (b == VISIBLE))
    assert torch.equal(inter == VISIBLE, (a == VISIBLE) | (b == VISIBLE))
    assert torch.equal(inter == PREDICTED, (a == PREDICTED) & (b == PREDICTED) & ~((a == VISIBLE) | (b == VISIBLE)))
    cascade = build("composite", parts=[parts[0], MaskingConfig(strategy="random", encode_ratio=0.5, decode_ratio=0.5)],
                    combine="cascade")(info, g())  # fmt: skip
    first = parts[0].build()(info, g())
    assert torch.equal(cascade[first != VISIBLE], first[first != VISIBLE]), "cascade keeps what the first part hid"
    for s in range(info.batch_size):
        assert int((cascade[s] == VISIBLE).sum()) == int((first[s] == VISIBLE).sum() * 0.5 + 0.5)


def test_bad_configs_fail_loudly() -> None:
    with pytest.raises(ConfigError, match="unknown masking strategy"):
        build("checkerboard")
    with pytest.raises(ConfigError, match="> 1"):
        build("random", encode_ratio=0.6, decode_ratio=0.6)
    with pytest.raises(ConfigError, match="scheduled"):
        build("scheduled")


def test_masking_config_round_trips_nested_parts() -> None:
    cfg = MaskingConfig.from_dict({"strategy": "composite", "combine": "cascade", "parts": [{"strategy": "block", "block_size": 3}]})
    assert cfg.parts[0].block_size == 3 and MaskingConfig.from_dict(cfg.to_dict()) == cfg
