"""Augmentations: D4 symmetries shared by co-registered sensors, CutMix boxes, SensorDropout, two-view crops."""

from __future__ import annotations

import torch

from spacenit.data.augmentations import (
    AugmentConfig,
    augmented_view,
    cutmix,
    dihedral,
    random_crop,
    random_resized_crop,
    sensor_dropout,
    spectral_jitter,
)
from spacenit.sensors import SENTINEL, Grid

S2, S1, ERA5 = Grid("10m", ("a", "b", "c"), 10.0), Grid("10m", ("vv", "vh"), 10.0), Grid("values", tuple("wxyz"), 1e4)


def batch(B: int = 8, px: int = 8) -> dict:
    """{sensor: {Grid: tensor}}: the structure of a loader batch (`spacenit.data.images`)."""
    g = torch.Generator().manual_seed(0)
    s2 = torch.randn(B, 2, 3, px, px, generator=g)
    return {"s2": {S2: s2}, "s1": {S1: s2[:, :, :2] * 2 + 1}, "era5": {ERA5: torch.randn(B, 2, 4, generator=g)}}


def one(grids: dict) -> torch.Tensor:
    """The array of a sensor stored on one grid."""
    (x,) = grids.values()
    return x


def d4_orbit(x: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for k in range(4):
        r = torch.rot90(x, k, dims=(-2, -1))
        out += [r, torch.flip(r, dims=(-1,))]
    return out


def test_dihedral_applies_one_symmetry_per_sample_to_every_sensor() -> None:
    images = batch()
    out = dihedral(images, torch.Generator().manual_seed(1))
    assert torch.equal(one(out["era5"]), one(images["era5"])), "non-spatial sensors pass through"
    seen = set()
    for b in range(8):
        matches = [i for i, y in enumerate(d4_orbit(one(images["s2"])[b])) if torch.equal(y, one(out["s2"])[b])]
        assert matches, f"sample {b} is not a D4 image of itself"
        seen.add(matches[0])
        # S1 is a function of S2 here: the same transform keeps the relation
        torch.testing.assert_close(one(out["s1"])[b], one(out["s2"])[b, :, :2] * 2 + 1)
    assert len(seen) > 2, "several symmetries should be drawn over 8 samples"


def test_cutmix_pastes_one_box_from_the_next_sample() -> None:
    images = batch()
    out = cutmix(images, torch.Generator().manual_seed(0))
    changed = (one(out["s2"]) != one(images["s2"])).any(dim=(1, 2))  # (B, H, W)
    rows, cols = torch.nonzero(changed.any(0), as_tuple=True)
    box = (slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1))
    torch.testing.assert_close(one(out["s2"])[..., box[0], box[1]], one(images["s2"]).roll(1, 0)[..., box[0], box[1]])
    outside = torch.ones_like(changed[0])
    outside[box] = False
    assert torch.equal(one(out["s2"])[..., outside], one(images["s2"])[..., outside])
    assert torch.equal(one(out["era5"]), one(images["era5"]))


def test_sensor_dropout_sets_whole_sensors_to_the_sentinel_and_keeps_one() -> None:
    images = batch(B=64)
    out = sensor_dropout(images, torch.Generator().manual_seed(0), probability=0.7)
    dropped = torch.stack([(one(out[k]) == SENTINEL).flatten(1).all(1) for k in images], dim=1)  # (B, S)
    kept = torch.tensor([torch.equal(one(out[k])[b], one(images[k])[b]) for b in range(64) for k in images]).view(64, 3)
    assert (dropped ^ kept).all(), "a sensor is either whole or entirely dropped"
    assert kept.any(1).all() and dropped.any(), "every sample keeps a sensor; some are dropped"


def test_augment_config_is_deterministic_per_generator() -> None:
    cfg = AugmentConfig(dihedral=True, cutmix_probability=1.0, sensor_dropout=0.3)
    a = cfg.apply_after_crop(cfg.apply(batch(), torch.Generator().manual_seed(5)), torch.Generator().manual_seed(6))
    b = cfg.apply_after_crop(cfg.apply(batch(), torch.Generator().manual_seed(5)), torch.Generator().manual_seed(6))
    assert all(torch.equal(one(a[k]), one(b[k])) for k in a)


# ---------------------------------------------------------------- views for two-view objectives


def ramps(B: int, px: int, pixel_m: float) -> torch.Tensor:
    """(B, 1, 2, px, px): band 0 is the map x of each pixel's centre, band 1 its map y."""
    centres = (torch.arange(px, dtype=torch.float32) + 0.5) * pixel_m
    x = centres.expand(px, px)
    return torch.stack((x, x.T)).expand(B, 1, 2, px, px).clone()


def test_random_resized_crop_at_full_scale_is_the_identity() -> None:
    images = batch()
    out = random_resized_crop(images, torch.Generator().manual_seed(0), scale=(1.0, 1.0))
    torch.testing.assert_close(one(out["s2"]), one(images["s2"]), atol=1e-5, rtol=0)
    assert torch.equal(one(out["era5"]), one(images["era5"])), "non-spatial sensors pass through"


def test_random_resized_crop_zooms_one_square_box_shared_by_co_registered_sensors() -> None:
    # The same 320 m tile at 10 m (32 px) and 20 m (16 px). Bilinear resampling of a linear
    # ramp is exact, so each view's ramp slope is the box side and its centre the box centre.
    fine, coarse = ramps(6, 32, 10.0), ramps(6, 16, 20.0)
    grids = {"fine": {Grid("10m", ("x", "y"), 10.0): fine}, "coarse": {Grid("20m", ("x", "y"), 20.0): coarse}}
    out = random_resized_crop(grids, torch.Generator().manual_seed(3), scale=(0.25, 0.5))
    f, c = one(out["fine"])[:, 0], one(out["coarse"])[:, 0]  # (B, 2, H, W)
    slope_x = (f[:, 0, :, 1:] - f[:, 0, :, :-1]) / 10.0  # map metres per output metre: the box side
    slope_y = (f[:, 1, 1:, :] - f[:, 1, :-1, :]) / 10.0
    side = slope_x[:, 0, 0]
    assert ((side >= 0.5 - 1e-4) & (side <= 0.5**0.5 + 1e-4)).all(), "area fraction in [0.25, 0.5]"
    assert len(set(side.round(decimals=4).tolist())) > 1, "every sample draws its own box"
    torch.testing.assert_close(slope_x, side[:, None, None].expand_as(slope_x), atol=1e-3, rtol=0)
    torch.testing.assert_close(slope_y, side[:, None, None].expand_as(slope_y), atol=1e-3, rtol=0)
    # The central half of each view shows the same map area at both resolutions.
    torch.testing.assert_close(f[:, :, 8:24, 8:24].mean((-2, -1)), c[:, :, 4:12, 4:12].mean((-2, -1)), atol=1e-3, rtol=0)
    assert (f.amin((-3, -2, -1)) >= 5.0 - 1e-4).all() and (f.amax((-3, -2, -1)) <= 315.0 + 1e-4).all(), "box inside the tile"


def test_random_resized_crop_keeps_missing_data_missing_and_never_blends_the_sentinel() -> None:
    x = ramps(8, 16, 1.0)
    x[..., :, :8] = SENTINEL  # the western half has no data
    out = one(random_resized_crop({"s2": {S2: x}}, torch.Generator().manual_seed(0), scale=(0.25, 1.0))["s2"])
    values = out[out != SENTINEL]
    assert values.numel() > 0 and (values >= 0).all() and (values <= 16).all(), "no sentinel leaks into a value"
    fraction = (out == SENTINEL).float().mean().item()
    assert 0.2 < fraction < 0.8, f"missing share of the views {fraction:.2f}"
    # Where a view's pixel maps well inside the data (map x > 9 px), it has a value.
    east = (out[:, :, 0] != SENTINEL) & (out[:, :, 0] > 9)
    assert east.any() and (out[:, :, 1][east] != SENTINEL).all()
    again = one(random_resized_crop({"s2": {S2: x}}, torch.Generator().manual_seed(0), scale=(0.25, 1.0))["s2"])
    assert torch.equal(out, again), "the generator fixes every view"


def test_augmented_view_turns_square_tiles_only() -> None:
    g = torch.Generator().manual_seed(0)
    view = augmented_view(batch(B=16), g, scale=(1.0, 1.0))
    images = batch(B=16)
    turned = sum(not torch.allclose(one(view["s2"])[b], one(images["s2"])[b], atol=1e-5) for b in range(16))
    assert turned > 8, "most of 16 samples get a non-identity symmetry"
    tall = {"s2": {S2: torch.randn(2, 1, 3, 8, 4)}}
    torch.testing.assert_close(one(augmented_view(tall, g, scale=(1.0, 1.0))["s2"]), one(tall["s2"]), atol=1e-5, rtol=0)


def test_random_crop_keeps_native_pixels_in_one_box_per_sample_shared_by_sensors() -> None:
    images = batch(B=8, px=32)
    g = torch.Generator().manual_seed(2)
    out = random_crop(images, g, scale=(0.2, 0.3), multiple=8)
    side = one(out["s2"]).shape[-1]
    assert one(out["s2"]).shape == (8, 2, 3, side, side) and side == 16, "sqrt(0.2..0.3) x 32 px, in whole patches of 8"
    assert torch.equal(one(out["era5"]), one(images["era5"]))
    boxes = set()
    for b in range(8):  # each view is an exact sub-array of its own sample, the same box in every sensor
        windows = one(images["s2"])[b].unfold(-2, side, 1).unfold(-2, side, 1)  # (T, C, nh, nw, side, side)
        hits = (windows == one(out["s2"])[b][:, :, None, None]).all(-1).all(-1).all(0).all(0).nonzero().tolist()
        assert len(hits) >= 1
        top, left = hits[0]
        torch.testing.assert_close(one(out["s1"])[b], one(images["s1"])[b][..., top : top + side, left : left + side], rtol=0, atol=0)
        boxes.add((top, left))
    assert len(boxes) > 1, "every sample draws its own position"
    assert one(random_crop(images, g, scale=(1.0, 1.0), multiple=5)["s2"]).shape[-1] == 30, "never beyond the tile"


def test_spectral_jitter_is_one_affine_map_per_sample_and_band_that_spares_sentinels() -> None:
    images = batch()
    one(images["s2"])[0, 1, 2, 3, 4] = SENTINEL
    out = spectral_jitter(images, torch.Generator().manual_seed(0), 0.2, sensors={"s2", "era5"})
    assert one(out["s2"])[0, 1, 2, 3, 4] == SENTINEL, "missing stays missing"
    assert torch.equal(one(out["s1"]), one(images["s1"])), "sensors not listed pass through"
    for name in ("s2", "era5"):
        x, y = one(images[name]), one(out[name])
        valid = x != SENTINEL
        for b in range(x.shape[0]):
            for c in range(x.shape[2]):
                xs, ys = x[b, :, c][valid[b, :, c]], y[b, :, c][valid[b, :, c]]
                # Fit y = gain * x + offset over every timestep and pixel of the band: exact, in range.
                A = torch.stack([xs, torch.ones_like(xs)], dim=1).double()
                gain, offset = torch.linalg.lstsq(A, ys.double().unsqueeze(1)).solution.squeeze(1).tolist()
                torch.testing.assert_close(ys.double(), gain * xs.double() + offset, atol=1e-5, rtol=0)
                assert 0.8 - 1e-6 <= gain <= 1.2 + 1e-6 and abs(offset) <= 0.2 + 1e-6
    gains = (one(out["s2"])[:, 0, :, 0, 1] - one(out["s2"])[:, 0, :, 0, 0]) / (one(images["s2"])[:, 0, :, 0, 1] - one(images["s2"])[:, 0, :, 0, 0])
    assert gains.std() > 0.05, "samples and bands draw their own gains"
    assert spectral_jitter(images, torch.Generator(), 0.0) is images, "strength 0 is the identity and draws nothing"
