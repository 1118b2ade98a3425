"""convert: GeoTIFFs -> dataset, checked against direct rasterio reads; bad inputs give clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio

from spacenit.conversion.convert import ConversionError, convert
from spacenit.conversion.discover import InputLayoutError
from spacenit.data.format import FORMAT_VERSION, DatasetFormatError, load_dataset_info
from spacenit.data.shards import DatasetReader
from spacenit.sensors import SENTINEL, SENTINEL2_L1C
from tests.rasters import write_tif


def test_synthetic_dataset_matches_rasterio(synthetic_dir: Path, synthetic_dataset: Path) -> None:
    info = load_dataset_info(synthetic_dataset)
    assert info.format_version == FORMAT_VERSION
    assert len(info.samples) == 24
    assert set(info.sensors) == {"sentinel2_l2a", "sentinel1", "srtm"}
    assert info.num_timesteps == {"sentinel2_l2a": 2, "sentinel1": 2, "srtm": 1}
    reader = DatasetReader(synthetic_dataset)
    for i in (0, 5, 23):
        sample = reader[i]
        s2_files = sorted((synthetic_dir / sample.id / "sentinel2_l2a").glob("*.tif"))
        with rasterio.open(s2_files[0]) as src:
            raw = src.read().astype(np.float32)
            nodata = src.nodata
            assert sample.record.crs == src.crs.to_string()
        expected = np.where(raw == nodata, SENTINEL, raw)
        np.testing.assert_array_equal(sample.data["sentinel2_l2a"][0], expected)
        assert sample.data["srtm"].shape == (1, 1, 32, 32)
        assert sample.record.dates["sentinel2_l2a"][0] == s2_files[0].stem
        assert sample.record.label is not None


def test_missing_timestep_is_sentinel(synthetic_dataset: Path) -> None:
    reader = DatasetReader(synthetic_dataset)
    short = [r for r in reader.records if "" in r.dates["sentinel1"]]
    assert short, "the synthetic set has samples with a missing Sentinel-1 date"
    sample = reader[reader.records.index(short[0])]
    t = short[0].dates["sentinel1"].index("")
    assert (sample.data["sentinel1"][t] == SENTINEL).all()


def test_dem_is_resampled_onto_the_10m_grid(synthetic_dir: Path, synthetic_dataset: Path) -> None:
    reader = DatasetReader(synthetic_dataset)
    sample = reader[0]
    with rasterio.open(synthetic_dir / sample.id / "srtm" / "dem.tif") as src:
        assert src.res == (30.0, 30.0)
        dem = src.read(1)
    converted = sample.data["srtm"][0, 0]
    # Bilinear resampling stays within the source's value range and varies smoothly.
    assert converted.min() >= dem.min() - 1e-3 and converted.max() <= dem.max() + 1e-3
    assert not (converted == SENTINEL).any()


def test_rerun_skips_finished_shards_and_redoes_missing_ones(synthetic_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    first = convert(synthetic_dir, out, tile_size_px=32, samples_per_shard=10, progress=False)
    assert first.shards_skipped == 0 and first.num_shards == 3
    before = (out / "dataset.json").read_text()
    shutil.rmtree(out / "shards" / "shard-00001.zarr")  # as if killed before this shard landed
    second = convert(synthetic_dir, out, tile_size_px=32, samples_per_shard=10, progress=False)
    assert second.shards_skipped == 2
    assert (out / "dataset.json").read_text() == before


def test_class_folder_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for cls in ("Forest", "River"):
        for i in range(3):
            write_tif(tmp_path / "in" / "train" / cls / f"{cls}_{i}.tif", rng.integers(1, 3000, (13, 64, 64), dtype=np.uint16))
    report = convert(tmp_path / "in", tmp_path / "out", layout="auto", sensor="sentinel2_l1c", progress=False)
    assert report.ok and report.num_samples == 6
    info = load_dataset_info(tmp_path / "out")
    assert {s.label for s in info.samples} == {"Forest", "River"}
    assert {s.split for s in info.samples} == {"train"}
    assert list(info.sensors["sentinel2_l1c"].bands) == list(SENTINEL2_L1C.bands)


def test_bands_named_in_the_file_are_selected_by_name(tmp_path: Path) -> None:
    bands = list(SENTINEL2_L1C.bands)
    data = np.stack([np.full((64, 64), i + 1, dtype=np.uint16) for i in range(13)])
    # Write the bands in reverse order, each described by its name.
    write_tif(tmp_path / "in" / "A" / "x.tif", data[::-1].copy(), descriptions=bands[::-1])
    write_tif(tmp_path / "in" / "B" / "y.tif", data)
    convert(tmp_path / "in", tmp_path / "out", progress=False)
    sample = DatasetReader(tmp_path / "out")[0]
    assert sample.data["sentinel2_l1c"][0, :, 0, 0].tolist() == list(range(1, 14))


# --- bad inputs: each is reported with the file's name while good inputs are converted ---


def _good_and_bad(tmp_path: Path, bad_name: str, bad_bytes: bytes | None = None, **bad_tif) -> Path:
    rng = np.random.default_rng(1)
    for i in range(2):
        write_tif(tmp_path / "in" / "Forest" / f"good_{i}.tif", rng.integers(1, 3000, (13, 64, 64), dtype=np.uint16))
    bad = tmp_path / "in" / "Forest" / bad_name
    if bad_bytes is not None:
        bad.write_bytes(bad_bytes)
    else:
        write_tif(bad, **bad_tif)
    return bad


@pytest.mark.parametrize(
    ("name", "payload", "tif", "reason"),
    [
        ("notes.tif", b"this is not a raster", None, "not a readable GeoTIFF"),
        ("empty.tif", b"", None, "zero-byte"),
        ("four_bands.tif", None, {"data": np.ones((4, 64, 64), np.uint16)}, "has 4 bands"),
        ("nocrs.tif", None, {"data": np.ones((13, 64, 64), np.uint16), "crs": None}, "no CRS"),
        ("allnodata.tif", None, {"data": np.zeros((13, 64, 64), np.uint16), "nodata": 0}, "nodata"),
    ],
)
def test_bad_input_is_reported_and_good_ones_converted(tmp_path: Path, name, payload, tif, reason) -> None:
    bad = _good_and_bad(tmp_path, name, payload, **(tif or {}))
    report = convert(tmp_path / "in", tmp_path / "out", progress=False)
    assert report.num_samples == 2
    assert len(report.failures) == 1
    failure = report.failures[0]
    assert failure.path == str(bad)
    assert reason in failure.reason and str(bad) in failure.reason
    on_disk = json.loads((tmp_path / "out" / "convert_report.json").read_text())
    assert on_disk["failures"][0]["path"] == str(bad)


def test_truncated_geotiff_is_reported(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    full = write_tif(tmp_path / "full.tif", rng.integers(1, 3000, (13, 64, 64), dtype=np.uint16))
    payload = full.read_bytes()
    bad = _good_and_bad(tmp_path, "truncated.tif", payload[: len(payload) // 2])
    report = convert(tmp_path / "in", tmp_path / "out", progress=False)
    assert report.num_samples == 2 and [f.path for f in report.failures] == [str(bad)]


def test_assume_crs_rescues_rasters_without_crs(tmp_path: Path) -> None:
    write_tif(tmp_path / "in" / "A" / "x.tif", np.ones((13, 64, 64), np.uint16), crs=None)
    write_tif(tmp_path / "in" / "A" / "y.tif", np.ones((13, 64, 64), np.uint16), crs=None)
    report = convert(tmp_path / "in", tmp_path / "out", assume_crs="EPSG:32633", progress=False)
    assert report.ok
    assert load_dataset_info(tmp_path / "out").samples[0].crs == "EPSG:32633"


def test_nothing_convertible_raises_with_reasons(tmp_path: Path) -> None:
    (tmp_path / "in" / "A").mkdir(parents=True)
    (tmp_path / "in" / "A" / "a.tif").write_bytes(b"junk")
    with pytest.raises(ConversionError, match="a.tif"):
        convert(tmp_path / "in", tmp_path / "out", progress=False)


def test_empty_directory_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputLayoutError, match="is empty"):
        convert(tmp_path / "empty", tmp_path / "out", progress=False)


def test_directory_without_tiffs_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "in" / "A").mkdir(parents=True)
    (tmp_path / "in" / "A" / "readme.txt").write_text("hello")
    with pytest.raises(InputLayoutError, match="no GeoTIFFs"):
        convert(tmp_path / "in", tmp_path / "out", progress=False)


def test_unknown_sensor_folder_is_a_clear_error(tmp_path: Path) -> None:
    write_tif(tmp_path / "in" / "s1" / "sentinel2_l2a" / "2021-01-01.tif", np.ones((12, 32, 32), np.uint16))
    write_tif(tmp_path / "in" / "s1" / "hyperspectral9000" / "2021-01-01.tif", np.ones((3, 32, 32), np.uint16))
    with pytest.raises(KeyError, match="hyperspectral9000"):
        convert(tmp_path / "in", tmp_path / "out", tile_size_px=32, progress=False)


def test_readers_check_the_format_version(synthetic_dataset: Path, tmp_path: Path) -> None:
    copy = tmp_path / "ds"
    shutil.copytree(synthetic_dataset, copy)
    payload = json.loads((copy / "dataset.json").read_text())
    payload["format_version"] = FORMAT_VERSION + 1
    (copy / "dataset.json").write_text(json.dumps(payload))
    with pytest.raises(DatasetFormatError, match="format version"):
        DatasetReader(copy)
