"""Real Sentinel-2 chips from ../shared/data: EuroSAT converts, trains briefly, embeds and probes.

Skipped cleanly when ../shared/data is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from spacenit.config import apply_overrides
from spacenit.conversion.convert import convert
from spacenit.data.format import load_dataset_info
from spacenit.data.shards import DatasetReader
from spacenit.data.stats import compute_stats
from spacenit.evaluation.embed import embed
from spacenit.evaluation.probe import probe
from spacenit.train.pretrain import PretrainConfig, pretrain

pytestmark = pytest.mark.realdata


@pytest.mark.slow
def test_eurosat_converts_and_probes(shared_data: Path, tmp_path: Path) -> None:
    eurosat = shared_data / "eurosat_ms"
    report = convert(eurosat, tmp_path / "ds", layout="class_folders", sensor="sentinel2_l1c", progress=False)
    assert report.ok and report.num_samples == 216
    info = load_dataset_info(tmp_path / "ds")
    assert len(info.classes) == 10 and info.samples[0].crs.startswith("EPSG:326")

    # Converted pixels are the file's pixels, band for band.
    reader = DatasetReader(tmp_path / "ds")
    sample = reader[7]
    path = next(eurosat.rglob(f"{sample.id}.tif"))
    (grid,) = info.grids["sentinel2_l1c"]  # 13 bands all at 10 m in the file: one 10 m grid, as they are
    assert grid.gsd_m == 10.0
    with rasterio.open(path) as src:
        np.testing.assert_array_equal(sample.data["sentinel2_l1c"][grid][0], src.read().astype(np.float32))

    compute_stats(tmp_path / "ds", progress=False)
    cfg = apply_overrides(PretrainConfig(), ["train.steps=5", "train.global_batch_size=16", "model.depth=2", "model.decoder_depth=1"])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = pretrain(tmp_path / "ds", tmp_path / "ds" / "stats.json", tmp_path / "out", cfg, tracking_uri=uri, register_as=None)
    emb = embed(result.checkpoint_dir, tmp_path / "ds", tmp_path / "emb.zarr", progress=False)
    metrics = probe(emb, tmp_path / "probe.json", tracking_uri=uri)
    assert metrics["num_classes"] == 10 and metrics["num_train"] + metrics["num_test"] == 216
    # 10 balanced-ish classes: chance is about 0.1. Even a barely trained encoder's pooled
    # features carry the spectra, so both probes must clear chance by a wide margin.
    assert metrics["knn_accuracy"] > 0.3 and metrics["linear_accuracy"] > 0.3, metrics


def test_a_landsat_scene_with_a_nodata_border_becomes_tiles(shared_data: Path, tmp_path: Path) -> None:
    # RGB.byte.tif: Landsat-7 resampled to 300 m, 3 bands, 791 x 718 px, a tilted footprint in a 0 (nodata) border.
    scene = shared_data / "landsat_s1" / "RGB.byte.tif"
    manifest = tmp_path / "scenes.csv"
    manifest.write_text(f"sample_id,sensor,path,bands\nrgb,landsat,{scene.name},B4 B3 B2\n")
    report = convert(scene.parent, tmp_path / "ds", manifest=manifest, tile_size_px=128, gsd_m=300.0,
                     tile_scenes=True, progress=False)  # fmt: skip
    with rasterio.open(scene) as src:
        rows, cols = -(-src.height // 128), -(-src.width // 128)  # its own ~300 m pixels are kept
        valid = src.read() != src.nodata
    assert report.ok and report.empty_tiles > 0  # the border corners hold no valid pixel
    assert report.num_samples + report.empty_tiles == rows * cols
    reader = DatasetReader(tmp_path / "ds")
    red = reader.info.sensors["landsat"].bands.index("B4")
    # Every valid pixel lands in exactly one tile: the tiles share the scene's own pixel grid.
    (grid,) = reader.info.grids["landsat"]
    red = grid.bands.index("B4")
    assert sum(int((s.data["landsat"][grid][0, red] != -99999).sum()) for s in reader) == int(valid[0].sum())
