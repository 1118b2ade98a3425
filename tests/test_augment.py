"""Augmentations: D4 symmetries shared by co-registered sensors, CutMix boxes, SensorDropout."""

from __future__ import annotations

import torch

from spacenit.data.augmentations import AugmentConfig, cutmix, dihedral, sensor_dropout
from spacenit.sensors import SENTINEL


def batch(B: int = 8, px: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    s2 = torch.randn(B, 2, 3, px, px, generator=g)
    return {"s2": s2, "s1": s2[:, :, :2] * 2 + 1, "era5": torch.randn(B, 2, 4, generator=g)}


def d4_orbit(x: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for k in range(4):
        r = torch.rot90(x, k, dims=(-2, -1))
        out += [r, torch.flip(r, dims=(-1,))]
    return out


def test_dihedral_applies_one_symmetry_per_sample_to_every_sensor() -> None:
    images = batch()
    out = dihedral(images, torch.Generator().manual_seed(1))
    assert torch.equal(out["era5"], images["era5"]), "non-spatial sensors pass through"
    seen = set()
    for b in range(8):
        matches = [i for i, y in enumerate(d4_orbit(images["s2"][b])) if torch.equal(y, out["s2"][b])]
        assert matches, f"sample {b} is not a D4 image of itself"
        seen.add(matches[0])
        # S1 is a function of S2 here: the same transform keeps the relation
        torch.testing.assert_close(out["s1"][b], out["s2"][b, :, :2] * 2 + 1)
    assert len(seen) > 2, "several symmetries should be drawn over 8 samples"


def test_cutmix_pastes_one_box_from_the_next_sample() -> None:
    images = batch()
    out = cutmix(images, torch.Generator().manual_seed(0))
    changed = (out["s2"] != images["s2"]).any(dim=(1, 2))  # (B, H, W)
    rows, cols = torch.nonzero(changed.any(0), as_tuple=True)
    box = (slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1))
    torch.testing.assert_close(out["s2"][..., box[0], box[1]], images["s2"].roll(1, 0)[..., box[0], box[1]])
    outside = torch.ones_like(changed[0])
    outside[box] = False
    assert torch.equal(out["s2"][..., outside], images["s2"][..., outside])
    assert torch.equal(out["era5"], images["era5"])


def test_sensor_dropout_sets_whole_sensors_to_the_sentinel_and_keeps_one() -> None:
    images = batch(B=64)
    out = sensor_dropout(images, torch.Generator().manual_seed(0), probability=0.7)
    dropped = torch.stack([(out[k] == SENTINEL).flatten(1).all(1) for k in images], dim=1)  # (B, S)
    kept = torch.tensor([torch.equal(out[k][b], images[k][b]) for b in range(64) for k in images]).view(64, 3)
    assert (dropped ^ kept).all(), "a sensor is either whole or entirely dropped"
    assert kept.any(1).all() and dropped.any(), "every sample keeps a sensor; some are dropped"


def test_augment_config_is_deterministic_per_generator() -> None:
    cfg = AugmentConfig(dihedral=True, cutmix_probability=1.0, sensor_dropout=0.3)
    a = cfg.apply_after_crop(cfg.apply(batch(), torch.Generator().manual_seed(5)), torch.Generator().manual_seed(6))
    b = cfg.apply_after_crop(cfg.apply(batch(), torch.Generator().manual_seed(5)), torch.Generator().manual_seed(6))
    assert all(torch.equal(a[k], b[k]) for k in a)
