"""Embedding extraction: per-patch maps, band binding by name, loader workers, the pyfunc's maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spacenit.data.loader import GeoTileDataset, collate
from spacenit.data.shards import DatasetReader
from spacenit.evaluation.embed import embed, embed_arrays, load_embeddings
from spacenit.evaluation.inputs import InputBindingError, bind_sensors
from spacenit.evaluation.patch_maps import embed_with_maps
from spacenit.sensors import SENTINEL, SENTINEL2_L1C, SENTINEL2_L2A, Grid
from spacenit.train.checkpoint import load_checkpoint


def brute_force_maps(encoded, keep, positions):
    """Loop over tokens: mean of the kept tokens at each distinct (row, col)."""
    rows, cols = sorted(set(positions[:, 0].tolist())), sorted(set(positions[:, 1].tolist()))
    B, N, D = encoded.shape
    out = np.full((B, len(rows), len(cols), D), np.nan)
    for b in range(B):
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                members = [n for n in range(N) if positions[n, 0] == r and positions[n, 1] == c and keep[b, n]]
                if members:
                    out[b, i, j] = encoded[b, members].mean(axis=0)
    return out


def test_patch_maps_match_a_token_loop_and_pool_like_embed(pretrained, synthetic_dataset: Path) -> None:
    result, _ = pretrained
    model, meta = load_checkpoint(result.checkpoint_dir)
    batch = collate([GeoTileDataset(synthetic_dataset, meta.stats)[i] for i in range(3)])
    images = dict(batch["images"])
    images["sentinel2_l2a"] = {g: x.clone() for g, x in images["sentinel2_l2a"].items()}
    for grid, x in images["sentinel2_l2a"].items():  # one 80 m cell without optical data, on every grid
        x[0, :, :, : -(-80 // int(grid.gsd_m)), : -(-80 // int(grid.gsd_m))] = SENTINEL
    pooled, maps, valid = embed_with_maps(model, images, batch["months"], meta.patch_size)
    with torch.no_grad():
        encoded, keep, tokens = model.encoder(images, batch["months"], meta.patch_size)
    positions = tokens.layout.positions
    positions = positions(torch.device("cpu")) if callable(positions) else positions  # (N, 3): row, col, t
    expected = brute_force_maps(encoded.numpy(), keep.numpy(), positions.numpy())
    assert maps.shape == expected.shape and valid.numpy().all() == np.isfinite(expected).all()
    np.testing.assert_allclose(maps.numpy()[valid.numpy()], expected[valid.numpy()], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pooled.numpy(), model.embed(images, batch["months"], meta.patch_size).numpy(), rtol=1e-5, atol=1e-6)


def test_embed_writes_maps_and_workers_do_not_change_results(pretrained, synthetic_dataset: Path, tmp_path: Path) -> None:
    result, _ = pretrained
    a = load_embeddings(embed(result.checkpoint_dir, synthetic_dataset, tmp_path / "a.zarr", progress=False, patch_maps=True, num_workers=0))
    b = load_embeddings(embed(result.checkpoint_dir, synthetic_dataset, tmp_path / "b.zarr", progress=False, num_workers=2, batch_size=5))
    np.testing.assert_allclose(a.vectors, b.vectors, rtol=1e-5, atol=1e-6)
    assert b.patch_maps is None
    assert a.patch_maps.shape == (24, 3, 3, 128) and a.patch_valid.shape == (24, 3, 3) and a.patch_valid.all()
    # The pooled vector is the token mean; with every cell full, that is the count-weighted map mean.
    assert np.isfinite(a.patch_maps).all()


def test_pyfunc_arrays_give_maps_too(pretrained, synthetic_dataset: Path) -> None:
    result, _ = pretrained
    model, meta = load_checkpoint(result.checkpoint_dir)
    sample = DatasetReader(synthetic_dataset)[0]
    arrays = {k: {g: v[None] for g, v in grids.items()} for k, grids in sample.data.items()}  # native grids
    maps = embed_arrays(model, meta, arrays, patch_maps=True)
    assert maps.shape == (1, 3, 3, 128) and np.isfinite(maps).all()
    assert embed_arrays(model, meta, arrays).shape == (1, 128)


def test_band_binding_by_name() -> None:
    (binding,) = bind_sensors([SENTINEL2_L1C], {"sentinel2_l2a": SENTINEL2_L2A.bands},
                              sensor_map={"sentinel2_l1c": "sentinel2_l2a"}, allow_missing_bands=True)  # fmt: skip
    assert binding.missing_bands == ["B10"]
    data = np.arange(12, dtype=np.float32)[None, :, None, None] * np.ones((1, 12, 2, 2), np.float32)  # band i has value i
    selected = binding.select(data)  # (1, 13, 2, 2) in L1C order
    expected = [SENTINEL2_L2A.bands.index(b) if b != "B10" else SENTINEL for b in SENTINEL2_L1C.bands]
    np.testing.assert_array_equal(selected[0, :, 0, 0], expected)
    with pytest.raises(InputBindingError, match="B10"):
        bind_sensors([SENTINEL2_L1C], {"sentinel2_l2a": SENTINEL2_L2A.bands}, sensor_map={"sentinel2_l1c": "sentinel2_l2a"})
    with pytest.raises(InputBindingError, match="does not have"):
        bind_sensors([SENTINEL2_L1C], {"sentinel2_l2a": SENTINEL2_L2A.bands})


def test_the_grids_pixel_size_reaches_the_encoder(pretrained, synthetic_dataset: Path, tmp_path: Path) -> None:
    """Positions scale with the grids' pixel sizes: the same pixels said to be 3x coarser embed like a direct call
    with 3x coarser grids."""
    import json
    import shutil

    result, _ = pretrained
    model, meta = load_checkpoint(result.checkpoint_dir)
    assert meta.extra["gsd_m"] == 10.0  # recorded from the training data, used by the pyfunc
    coarse = tmp_path / "coarse"
    shutil.copytree(synthetic_dataset, coarse)
    info = json.loads((coarse / "dataset.json").read_text())
    info["gsd_m"] = 30.0
    for grids in info["grids"].values():
        for grid in grids:
            grid["gsd_m"] *= 3
    (coarse / "dataset.json").write_text(json.dumps(info))

    at_10 = load_embeddings(embed(result.checkpoint_dir, synthetic_dataset, tmp_path / "a.zarr", progress=False, num_workers=0))
    at_30 = load_embeddings(embed(result.checkpoint_dir, coarse, tmp_path / "b.zarr", progress=False, num_workers=0))
    assert not np.allclose(at_10.vectors, at_30.vectors, atol=1e-4)
    batch = collate([GeoTileDataset(synthetic_dataset, meta.stats)[i] for i in range(2)])
    coarser = {s: {Grid(g.name, g.bands, 3 * g.gsd_m): x for g, x in grids.items()} for s, grids in batch["images"].items()}
    with torch.no_grad():
        direct = model.embed(coarser, batch["months"], meta.patch_size, gsd_m=30.0).numpy()
    np.testing.assert_allclose(at_30.vectors[:2], direct, rtol=1e-4, atol=1e-5)
