"""Sliding-window scene embedding: georeferencing checked with rasterio, blending against a dense loop."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import zarr
from affine import Affine

from spacenit.arch.models import create_model
from spacenit.cli import main
from spacenit.data.stats import SensorStats
from spacenit.evaluation.embed import EmbedError
from spacenit.evaluation.patch_maps import embed_with_maps
from spacenit.evaluation.sliding import embed_scene, tent_weights, window_starts
from spacenit.sensors import LANDSAT, SENTINEL
from spacenit.train.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from tests.rasters import write_tif

#: The 6 bands of the scikit-eo Landsat-8 surface-reflectance scene, in file order.
SCENE_BANDS = ["B2", "B3", "B4", "B5", "B6", "B7"]
PATCH = 8


def landsat_checkpoint(path: Path, scene_values: np.ndarray) -> Path:
    """A tiny randomly initialized model on the Landsat sensor, normalized with the scene's own band stats."""
    torch.manual_seed(0)
    model = create_model("spacenit_nano", [LANDSAT], dim=32, depth=1, heads=2, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    mean, std = np.zeros(LANDSAT.num_bands), np.ones(LANDSAT.num_bands)
    valid = np.ma.masked_equal(scene_values, -9999).reshape(len(SCENE_BANDS), -1)
    for i, band in enumerate(SCENE_BANDS):
        # A constant band (std 0) would need the stats' `constant` flag: keep a unit std for it.
        mean[LANDSAT.bands.index(band)], std[LANDSAT.bands.index(band)] = valid[i].mean(), valid[i].std() or 1.0
    meta = CheckpointMeta(model.config, [LANDSAT], PATCH, {"landsat": SensorStats(list(LANDSAT.bands), mean, std)}, {})
    return save_checkpoint(path, model, meta)


def test_windows_cover_the_grid_and_weights_never_vanish() -> None:
    assert window_starts(30, 8, 6) == [0, 6, 12, 18, 22]
    assert window_starts(5, 8, 6) == [0]
    for cells, win, stride in [(30, 8, 6), (41, 8, 8), (9, 8, 2)]:
        covered = np.zeros(cells, bool)
        for s in window_starts(cells, win, stride):
            covered[s : s + win] = True
        assert covered.all()
    w = tent_weights(8)
    assert w.min() > 0 and w.max() == 1.0 and np.allclose(w, w[::-1])


def dense_reference(model, meta, scene: np.ndarray, window_cells: int, stride_cells: int, gsd_m: float) -> np.ndarray:
    """Every window encoded on its own (positions at the scene's `gsd_m`), weighted sums accumulated over the whole grid."""
    C, H, W = scene.shape
    h, w = math.ceil(H / PATCH), math.ceil(W / PATCH)
    padded = np.full((C, h * PATCH, w * PATCH), SENTINEL, np.float32)
    padded[:, :H, :W] = np.where(scene == -9999, SENTINEL, scene)  # the file's nodata
    mean = meta.stats["landsat"].mean[[LANDSAT.bands.index(b) for b in SCENE_BANDS]]
    std = meta.stats["landsat"].std[[LANDSAT.bands.index(b) for b in SCENE_BANDS]]
    acc, wsum = np.zeros((meta.model.dim, h, w)), np.zeros((h, w))
    wh, ww = min(window_cells, h), min(window_cells, w)
    tent = tent_weights(wh)[:, None] * tent_weights(ww)[None, :]
    for r0 in window_starts(h, wh, stride_cells):
        for c0 in window_starts(w, ww, stride_cells):
            win = padded[:, r0 * PATCH : (r0 + wh) * PATCH, c0 * PATCH : (c0 + ww) * PATCH]
            x = np.full((1, 1, LANDSAT.num_bands, *win.shape[1:]), SENTINEL, np.float32)
            for i, band in enumerate(SCENE_BANDS):
                x[0, 0, LANDSAT.bands.index(band)] = np.where(win[i] == SENTINEL, SENTINEL, (win[i] - mean[i]) / std[i])
            _, maps, valid = embed_with_maps(model, {"landsat": torch.from_numpy(x)}, {"landsat": torch.zeros(1, 1, dtype=torch.long)},
                                             PATCH, gsd_m)  # fmt: skip
            wv = tent * valid[0].numpy()
            acc[:, r0 : r0 + wh, c0 : c0 + ww] += np.moveaxis(maps[0].numpy(), -1, 0) * wv
            wsum[r0 : r0 + wh, c0 : c0 + ww] += wv
    return np.where(wsum > 0, acc / np.maximum(wsum, 1e-12), np.nan)


def test_blending_equals_a_dense_reference_and_no_data_stays_nan(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    scene = rng.normal(1000, 200, (6, 70, 90)).astype(np.float32)
    scene[:, :20, :20] = -9999  # a corner without data: 2 x 2 whole cells of 8 px
    path = write_tif(tmp_path / "scene.tif", scene, crs="EPSG:32620", res=30.0, nodata=-9999, descriptions=SCENE_BANDS)
    ckpt = landsat_checkpoint(tmp_path / "ckpt", scene)
    # The scene has 6 of the sensor's bands: the others are no data.
    out = embed_scene(ckpt, path, tmp_path / "emb.tif", window_px=32, overlap_px=16, batch_size=3,
                      allow_missing_bands=True, progress=False)  # fmt: skip
    model, meta = load_checkpoint(ckpt)
    expected = dense_reference(model, meta, scene, window_cells=4, stride_cells=2, gsd_m=30.0)  # the file's pixel size
    with rasterio.open(out.outputs[0]) as src:
        got = src.read()
    assert got.shape == expected.shape == (32, 9, 12)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert np.isnan(got[:, :2, :2]).all() and np.isfinite(got[:, 2:, :]).all()


@pytest.mark.realdata
def test_landsat_scene_embeds_to_georeferenced_cog_and_zarr(shared_data: Path, tmp_path: Path) -> None:
    scene = shared_data / "landsat_s1" / "LC08_232066_20190727.tif"
    with rasterio.open(scene) as src:
        values, crs, transform, bounds, (H, W) = src.read(), src.crs, src.transform, src.bounds, src.shape
    ckpt = landsat_checkpoint(tmp_path / "ckpt", values)
    tif, zarr_path = tmp_path / "emb.tif", tmp_path / "emb.zarr"
    code = main(["embed", str(ckpt), str(scene), str(tif), "--zarr", str(zarr_path), "--bands", ",".join(SCENE_BANDS),
                 "--window-px", "64", "--overlap-px", "16", "--allow-missing-bands"])  # fmt: skip
    assert code == 0
    with rasterio.open(tif) as out:
        assert out.crs == crs
        assert out.transform == transform @ Affine.scale(PATCH)
        assert (out.height, out.width) == (math.ceil(H / PATCH), math.ceil(W / PATCH)) and out.count == 32
        # Same origin; the far edges reach past the scene by less than one patch.
        assert out.bounds.left == bounds.left and out.bounds.top == bounds.top
        assert 0 <= bounds.bottom - out.bounds.bottom < PATCH * 30 and 0 <= out.bounds.right - bounds.right < PATCH * 30
        assert out.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert out.descriptions[0] == "emb_000" and out.profile["blockxsize"] <= 512
        emb = out.read()
    assert np.isfinite(emb).mean() > 0.9
    group = zarr.open_group(str(zarr_path), mode="r")
    np.testing.assert_array_equal(np.asarray(group["embeddings"][...]), emb)
    x, y = np.asarray(group["x"][...]), np.asarray(group["y"][...])
    assert x[0] == transform.c + 0.5 * PATCH * transform.a and y[0] == transform.f + 0.5 * PATCH * transform.e
    # GDAL (and so QGIS) reads the Zarr at the same place.
    with rasterio.open(f'ZARR:"{zarr_path}":/embeddings') as z:
        assert z.crs == crs and z.transform.almost_equals(out.transform) and z.count == 32


def test_scene_without_crs_is_refused(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "nocrs.tif", np.ones((6, 16, 16), np.float32), crs=None, descriptions=SCENE_BANDS)
    ckpt = landsat_checkpoint(tmp_path / "ckpt", np.ones((6, 4, 4), np.float32))
    with pytest.raises(EmbedError, match="no CRS"):
        embed_scene(ckpt, path, tmp_path / "x.tif", progress=False)
