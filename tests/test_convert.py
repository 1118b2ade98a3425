"""convert: GeoTIFFs -> dataset, checked against direct rasterio reads; bad inputs give clear errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import reproject, transform

from spacenit.cli import main
from spacenit.conversion.convert import ConversionError, convert
from spacenit.conversion.discover import InputLayoutError
from spacenit.conversion.merge import MergeError, merge_datasets
from spacenit.data.format import (
    FORMAT_VERSION,
    DatasetFormatError,
    load_dataset_info,
    readable_json,
)
from spacenit.data.shards import DatasetReader
from spacenit.sensors import SENTINEL, SENTINEL2_L1C, SENTINEL2_L2A
from tests.rasters import bands_of, write_tif


def test_synthetic_dataset_matches_rasterio_band_by_band_at_native_resolution(synthetic_dir: Path, synthetic_dataset: Path) -> None:
    info = load_dataset_info(synthetic_dataset)
    assert info.format_version == FORMAT_VERSION
    assert len(info.samples) == 24
    assert set(info.sensors) == {"sentinel2_l2a", "sentinel1", "srtm"}
    assert info.num_timesteps == {"sentinel2_l2a": 2, "sentinel1": 2, "srtm": 1}
    assert info.grids["sentinel2_l2a"] == SENTINEL2_L2A.native_grids()  # every band at the resolution of its file
    assert [g.gsd_m for g in info.grids["srtm"]] == [30.0]
    reader = DatasetReader(synthetic_dataset)
    for i in (0, 5, 23):
        sample = reader[i]
        date_dir = sorted(p for p in (synthetic_dir / sample.id / "sentinel2_l2a").iterdir() if p.is_dir())[0]
        for grid, stored in sample.data["sentinel2_l2a"].items():
            side = 24 * 10 // int(grid.gsd_m)
            assert stored.shape == (2, len(grid.bands), side, side)  # nothing upsampled: 24, 12 and 4 px
            for c, band in enumerate(grid.bands):
                with rasterio.open(date_dir / f"{band}.tif") as src:
                    raw = src.read(1).astype(np.float32)
                    assert src.res == (grid.gsd_m, grid.gsd_m)
                    assert sample.record.crs == src.crs.to_string()
                    expected = np.where(raw == src.nodata, SENTINEL, raw)
                np.testing.assert_array_equal(stored[0, c], expected)
        assert sample.data["srtm"][info.grids["srtm"][0]].shape == (1, 1, 8, 8)
        assert sample.record.dates["sentinel2_l2a"][0] == date_dir.name
        assert sample.record.label is not None


def test_missing_timestep_is_sentinel(synthetic_dataset: Path) -> None:
    reader = DatasetReader(synthetic_dataset)
    short = [r for r in reader.records if "" in r.dates["sentinel1"]]
    assert short, "the synthetic set has samples with a missing Sentinel-1 date"
    sample = reader[reader.records.index(short[0])]
    t = short[0].dates["sentinel1"].index("")
    assert all((x[t] == SENTINEL).all() for x in sample.data["sentinel1"].values())
    assert short[0].present["sentinel1"][t] is False


def test_dem_is_stored_at_its_own_30m_pixels(synthetic_dir: Path, synthetic_dataset: Path) -> None:
    reader = DatasetReader(synthetic_dataset)
    sample = reader[0]
    with rasterio.open(synthetic_dir / sample.id / "srtm" / "dem.tif") as src:
        assert src.res == (30.0, 30.0)
        dem = src.read(1)
    (converted,) = sample.data["srtm"].values()
    np.testing.assert_array_equal(converted[0, 0], dem)  # on its own grid: read as it is


def test_one_grid_layout_resamples_every_band_onto_the_reference_grid(synthetic_dir: Path, tmp_path: Path) -> None:
    report = convert(synthetic_dir, tmp_path / "one", tile_size_px=24, one_grid=True, progress=False)
    assert report.ok
    info = load_dataset_info(tmp_path / "one")
    assert info.layout == "one_grid"
    assert info.grids["sentinel2_l2a"] == SENTINEL2_L2A.one_grid(10.0)
    sample = DatasetReader(tmp_path / "one")[0]
    (s2,) = sample.data["sentinel2_l2a"].values()
    assert s2.shape == (2, 12, 24, 24)
    (dem,) = sample.data["srtm"].values()
    assert dem.shape == (1, 1, 24, 24)


def test_rerun_skips_finished_shards_and_redoes_missing_ones(synthetic_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    first = convert(synthetic_dir, out, tile_size_px=24, samples_per_shard=10, progress=False)
    assert first.shards_skipped == 0 and first.num_shards == 3
    before = (out / "dataset.json").read_text()
    shutil.rmtree(out / "shards" / "shard-00001.zarr")  # as if killed before this shard landed
    second = convert(synthetic_dir, out, tile_size_px=24, samples_per_shard=10, progress=False)
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
    assert bands_of(sample, "sentinel2_l1c")[0, :, 0, 0].tolist() == list(range(1, 14))


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


def test_unknown_sensor_folder_fails_its_sample_only(tmp_path: Path) -> None:
    write_tif(tmp_path / "in" / "s1" / "sentinel2_l2a" / "2021-01-01.tif", np.ones((12, 32, 32), np.uint16))
    write_tif(tmp_path / "in" / "s1" / "hyperspectral9000" / "2021-01-01.tif", np.ones((3, 32, 32), np.uint16))
    write_tif(tmp_path / "in" / "s2" / "sentinel2_l2a" / "2021-01-01.tif", np.ones((12, 32, 32), np.uint16))
    report = convert(tmp_path / "in", tmp_path / "out", tile_size_px=24, progress=False)
    assert report.num_samples == 1 and [f.sample_id for f in report.failures] == ["s1"]
    assert "unknown sensor folder 'hyperspectral9000'" in report.failures[0].reason
    assert report.failures[0].path.endswith("hyperspectral9000")


def test_unknown_sensor_name_lists_the_known_ones(tmp_path: Path) -> None:
    write_tif(tmp_path / "in" / "A" / "x.tif", np.ones((13, 8, 8), np.uint16))
    with pytest.raises(KeyError, match=r"unknown sensor 'sentinel3'.*sentinel2_l1c"):
        convert(tmp_path / "in", tmp_path / "out", sensor="sentinel3", progress=False)


def test_readers_check_the_format_version(synthetic_dataset: Path, tmp_path: Path) -> None:
    copy = tmp_path / "ds"
    shutil.copytree(synthetic_dataset, copy)
    payload = json.loads((copy / "dataset.json").read_text())
    payload["format_version"] = FORMAT_VERSION + 1
    (copy / "dataset.json").write_text(json.dumps(payload))
    with pytest.raises(DatasetFormatError, match="format version"):
        DatasetReader(copy)


def test_dataset_json_is_the_same_json_laid_out_a_record_per_line(synthetic_dataset: Path) -> None:
    text = (synthetic_dataset / "dataset.json").read_text()
    payload = json.loads(text)
    records = [line.strip().rstrip(",") for line in text.splitlines() if line.startswith('  {"id": ')]
    assert [json.loads(r) for r in records] == payload["samples"]  # one line each
    # Whatever the payload, the layout encodes what json.dumps does.
    odd = {"n": 1, 2: [{"a": float("inf")}, [1, 2]], "deep": {"x": {"y": {"z": [True, None]}}}, "e": [], "f": {}}
    assert json.loads(readable_json(odd)) == json.loads(json.dumps(odd))


def test_duplicate_sample_ids_are_reported_naming_each_other(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    for cls in ("Forest", "River"):
        write_tif(tmp_path / "in" / cls / "chip_7.tif", rng.integers(1, 3000, (13, 16, 16), dtype=np.uint16))
    write_tif(tmp_path / "in" / "River" / "chip_8.tif", rng.integers(1, 3000, (13, 16, 16), dtype=np.uint16))
    report = convert(tmp_path / "in", tmp_path / "out", tile_size_px=16, progress=False)
    assert report.num_samples == 1
    assert sorted(f.path for f in report.failures) == [
        str(tmp_path / "in" / "Forest" / "chip_7.tif"), str(tmp_path / "in" / "River" / "chip_7.tif")
    ]  # fmt: skip
    for failure in report.failures:  # each names the other file with its id
        other = failure.path.replace("Forest", "X").replace("River", "Forest").replace("X", "River")
        assert "occurs 2 times" in failure.reason and other in failure.reason


# --- the reference grid: warping, padding, nodata, categorical and non-spatial sensors ---

_ANCHOR_ORIGIN = (500_000.0, 5_000_000.0)  # EPSG:32632, 32 x 32 px at 10 m


def _sample_with(tmp_path: Path, sensor: str, data: np.ndarray, **tif) -> Path:
    """A samples-layout input: a 10 m Sentinel-2 anchor plus one file of `sensor`."""
    root = tmp_path / "in"
    rng = np.random.default_rng(4)
    write_tif(root / "s" / "sentinel2_l2a" / "2021-06-01.tif", rng.integers(1, 3000, (12, 32, 32), dtype=np.uint16),
              origin=_ANCHOR_ORIGIN)  # fmt: skip
    write_tif(root / "s" / sensor / "2021-06-01.tif", data, **tif)
    return root


def _reference_warp(path: Path, resampling: Resampling, res: float) -> np.ndarray:
    """rasterio.warp.reproject of the whole file onto the 240 m footprint of a 24 px tile anchored at the
    Sentinel-2 file, at `res` metres: the independent reference."""
    side = round(240 / res)
    out = np.full((1, side, side), SENTINEL, np.float32)
    with rasterio.open(path) as src:
        reproject(
            source=src.read(out_dtype=np.float32), destination=out, src_transform=src.transform, src_crs=src.crs,
            src_nodata=src.nodata, dst_transform=Affine(res, 0, _ANCHOR_ORIGIN[0], 0, -res, _ANCHOR_ORIGIN[1]),
            dst_crs="EPSG:32632", dst_nodata=SENTINEL, resampling=resampling,
        )  # fmt: skip
    return out


def _origin_in_32633() -> tuple[float, float]:
    """A point north-west of the anchor, in the next UTM zone, so the DEM covers the tile."""
    xs, ys = transform(CRS.from_epsg(32632), CRS.from_epsg(32633), [_ANCHOR_ORIGIN[0]], [_ANCHOR_ORIGIN[1]])
    return xs[0] - 200.0, ys[0] + 200.0


def test_other_crs_is_warped_bilinear_like_rasterio_keeping_its_resolution(tmp_path: Path) -> None:
    y, x = np.mgrid[0:30, 0:30]
    dem = (100 + 3 * x + 2 * y + 5 * np.sin(x / 3.0)).astype(np.float32)[None]
    dem[0, 0, :] = -32768  # a nodata row at the top
    root = _sample_with(tmp_path, "srtm", dem, crs="EPSG:32633", res=30.0, origin=_origin_in_32633(), nodata=-32768)
    convert(root, tmp_path / "out", tile_size_px=24, progress=False)
    (got,) = DatasetReader(tmp_path / "out")[0].data["srtm"].values()
    got = got[0]
    assert got.shape == (1, 8, 8)  # reprojected into the anchor's CRS at its own 30 m
    expected = _reference_warp(root / "s" / "srtm" / "2021-06-01.tif", Resampling.bilinear, 30.0)
    assert (got == SENTINEL).sum() == (expected == SENTINEL).sum()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    valid = got != SENTINEL
    assert got[valid].min() >= 100 - 1e-3  # the nodata value never leaks into the interpolation


def test_categorical_sensor_is_warped_nearest(tmp_path: Path) -> None:
    classes = np.random.default_rng(5).choice(np.array([10, 20, 30, 80], np.uint8), size=(1, 20, 20))
    root = _sample_with(tmp_path, "worldcover", classes, crs="EPSG:32633", res=20.0, origin=_origin_in_32633())
    convert(root, tmp_path / "out", tile_size_px=24, progress=False)
    (grid,) = load_dataset_info(tmp_path / "out").grids["worldcover"]
    assert grid.gsd_m == 20.0  # the registry says 10 m; the file has 20 m, and that is what is stored
    got = DatasetReader(tmp_path / "out")[0].data["worldcover"][grid][0]
    assert set(np.unique(got)) <= {10.0, 20.0, 30.0, 80.0, SENTINEL}
    expected = _reference_warp(root / "s" / "worldcover" / "2021-06-01.tif", Resampling.nearest, 20.0)
    np.testing.assert_array_equal(got, expected)


def test_small_raster_is_padded_and_nan_becomes_sentinel(tmp_path: Path) -> None:
    vv_vh = np.random.default_rng(6).normal(-15, 3, (2, 20, 20)).astype(np.float32)
    vv_vh[1, 3, 4] = np.nan
    root = _sample_with(tmp_path, "sentinel1", vv_vh, origin=_ANCHOR_ORIGIN)
    convert(root, tmp_path / "out", tile_size_px=24, progress=False)
    got = bands_of(DatasetReader(tmp_path / "out")[0], "sentinel1")[0]
    assert got.shape == (2, 24, 24)
    assert got[1, 3, 4] == SENTINEL
    expected = np.where(np.isnan(vv_vh), SENTINEL, vv_vh)
    np.testing.assert_array_equal(got[:, :20, :20], expected)
    assert (got[:, 20:, :] == SENTINEL).all() and (got[:, :, 20:] == SENTINEL).all()


def test_integer_nodata_on_the_grid_becomes_sentinel_and_a_partial_raster_lands_in_place(tmp_path: Path) -> None:
    # A Landsat file on the anchor's 10 m grid, offset by (3 rows, 5 columns) and smaller than
    # the tile: its pixels land at their place on the tile, its nodata (0) becomes the sentinel.
    rng = np.random.default_rng(7)
    landsat = rng.integers(1, 30000, (11, 20, 24), dtype=np.uint16)
    landsat[4, 2, 6] = 0
    origin = (_ANCHOR_ORIGIN[0] + 50.0, _ANCHOR_ORIGIN[1] - 30.0)
    root = _sample_with(tmp_path, "landsat", landsat, origin=origin, nodata=0)
    convert(root, tmp_path / "out", tile_size_px=24, progress=False)
    (grid,) = load_dataset_info(tmp_path / "out").grids["landsat"]
    assert grid.gsd_m == 10.0  # finer than the registry's 30 m: stored at the 10 m it has
    got = DatasetReader(tmp_path / "out")[0].data["landsat"][grid][0]
    expected = np.full((11, 24, 24), SENTINEL, np.float32)
    expected[:, 3:23, 5:24] = np.where(landsat == 0, SENTINEL, landsat)[:, :, :19]
    np.testing.assert_array_equal(got, expected)


def test_non_spatial_sensor_is_the_footprint_mean(tmp_path: Path) -> None:
    weather = np.stack([np.full((4, 4), v, np.float32) for v in (290.0, 280.0, 101325.0, 3.0, -1.0, 0.002)])
    root = _sample_with(tmp_path, "era5", weather, crs="EPSG:4326", res=0.25, origin=(8.5, 45.5))
    convert(root, tmp_path / "out", tile_size_px=24, progress=False)
    sample = DatasetReader(tmp_path / "out")[0]
    assert bands_of(sample, "era5").shape == (1, 6)
    np.testing.assert_allclose(bands_of(sample, "era5")[0], weather[:, 0, 0], rtol=1e-6)


def test_presence_mask_marks_missing_timesteps(synthetic_dataset: Path) -> None:
    reader = DatasetReader(synthetic_dataset)
    for i, record in enumerate(reader.records):
        sample = reader[i]
        assert sample.present["srtm"].tolist() == [True]
        for t, present in enumerate(sample.present["sentinel1"]):
            assert present == (record.dates["sentinel1"][t] != "")
            assert present or (bands_of(sample, "sentinel1")[t] == SENTINEL).all()


# --- parallel, resumable, partitioned ---


def _arrays_by_id(root: Path) -> dict[str, dict[str, np.ndarray]]:
    return {s.id: {(sensor, grid): x for sensor, grids in s.data.items() for grid, x in grids.items()} for s in DatasetReader(root)}


def test_two_workers_give_the_same_dataset(synthetic_dir: Path, synthetic_dataset: Path, tmp_path: Path) -> None:
    report = convert(synthetic_dir, tmp_path / "ds", tile_size_px=24, samples_per_shard=10, workers=2, progress=False)
    assert report.ok
    assert load_dataset_info(tmp_path / "ds").to_dict() == load_dataset_info(synthetic_dataset).to_dict()
    one, two = _arrays_by_id(synthetic_dataset), _arrays_by_id(tmp_path / "ds")
    for sample_id, data in one.items():
        for sensor, array in data.items():
            np.testing.assert_array_equal(two[sample_id][sensor], array)


def test_changed_input_redoes_its_shard_and_stale_shards_go(synthetic_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    convert(synthetic_dir, out, tile_size_px=24, samples_per_shard=10, progress=False)
    first_file = sorted(synthetic_dir.glob("*/sentinel2_l2a/*/*.tif"))[0]
    shutil.copytree(synthetic_dir, tmp_path / "in")
    (tmp_path / "in" / first_file.relative_to(synthetic_dir)).touch()
    (out / "shards" / ".tmp-0000-shard-00009.zarr").mkdir()  # left by a killed run
    report = convert(tmp_path / "in", out, tile_size_px=24, samples_per_shard=10, progress=False)
    assert report.shards_skipped == 0  # new paths: every fingerprint changed
    report = convert(tmp_path / "in", out, tile_size_px=24, samples_per_shard=24, progress=False)
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["shard-00000.zarr"]
    os.utime(tmp_path / "in" / first_file.relative_to(synthetic_dir), ns=(1, 1))
    report = convert(tmp_path / "in", out, tile_size_px=24, samples_per_shard=12, progress=False)
    again = convert(tmp_path / "in", out, tile_size_px=24, samples_per_shard=12, progress=False)
    assert report.shards_skipped == 0 and again.shards_skipped == 2
    os.utime(tmp_path / "in" / first_file.relative_to(synthetic_dir), ns=(2, 2))
    assert convert(tmp_path / "in", out, tile_size_px=24, samples_per_shard=12, progress=False).shards_skipped == 1


def test_partitions_merge_into_the_full_dataset(synthetic_dir: Path, synthetic_dataset: Path, tmp_path: Path) -> None:
    parts = [tmp_path / f"part-{i}" for i in range(3)]
    ids = []
    for i, part in enumerate(parts):
        report = convert(synthetic_dir, part, tile_size_px=24, samples_per_shard=4, partition=(i, 3), progress=False)
        assert report.partition == (i, 3)
        ids.append([r.id for r in load_dataset_info(part).samples])
    all_ids = [r.id for r in load_dataset_info(synthetic_dataset).samples]
    assert ids == [all_ids[i::3] for i in range(3)]  # position in the sorted list % count == index

    merged = merge_datasets(parts, tmp_path / "merged")
    assert sorted(r.id for r in merged.samples) == sorted(all_ids)
    assert len({r.shard for r in merged.samples}) == len(list((tmp_path / "merged" / "shards").iterdir()))
    expected, got = _arrays_by_id(synthetic_dataset), _arrays_by_id(tmp_path / "merged")
    for sample_id, data in expected.items():
        for sensor, array in data.items():
            np.testing.assert_array_equal(got[sample_id][sensor], array)
    report = json.loads((tmp_path / "merged" / "convert_report.json").read_text())
    assert report["num_samples"] == 24 and report["merged_from"] == [str(p) for p in parts]


def test_merge_refuses_duplicate_ids_and_mismatched_parts(synthetic_dir: Path, tmp_path: Path) -> None:
    convert(synthetic_dir, tmp_path / "a", tile_size_px=24, partition=(0, 2), progress=False)
    shutil.copytree(tmp_path / "a", tmp_path / "a-copy")
    with pytest.raises(MergeError, match=r"is in both .*/a and .*/a-copy"):
        merge_datasets([tmp_path / "a", tmp_path / "a-copy"], tmp_path / "merged")
    convert(synthetic_dir, tmp_path / "b", tile_size_px=12, partition=(1, 2), progress=False)
    with pytest.raises(MergeError, match=r"differs from .* in \['tile_size_px'\]"):
        merge_datasets([tmp_path / "a", tmp_path / "b"], tmp_path / "merged")


def test_cli_exit_code_says_whether_anything_failed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _good_and_bad(tmp_path, "empty.tif", b"")
    assert main(["convert", str(tmp_path / "in"), str(tmp_path / "out"), "--tile-size-px", "16"]) == 1
    assert "empty.tif" in capsys.readouterr().err
    (tmp_path / "in" / "Forest" / "empty.tif").unlink()
    assert main(["convert", str(tmp_path / "in"), str(tmp_path / "out2"), "--tile-size-px", "16"]) == 0
    assert main(["convert", str(tmp_path / "in"), str(tmp_path / "out3"), "--assume-crs", "EPSG:nope"]) == 2
    assert "is not a CRS" in capsys.readouterr().err


# --- scenes larger than one tile ---


def _scene(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A 150 x 100 px Sentinel-1 scene at 10 m whose bottom-right corner (rows 64+, columns 128+) is nodata."""
    data = np.random.default_rng(8).normal(-15, 3, (2, 100, 150)).astype(np.float32)
    data[:, 64:, 128:] = -9999.0
    root = tmp_path / "in"
    write_tif(root / "scene" / "sentinel1" / "2021-06-01.tif", data, origin=_ANCHOR_ORIGIN, nodata=-9999.0)
    return root, data


def test_tile_scenes_covers_the_whole_scene_and_skips_empty_tiles(tmp_path: Path) -> None:
    root, data = _scene(tmp_path)
    report = convert(root, tmp_path / "out", tile_size_px=64, samples_per_shard=4, tile_scenes=True, progress=False)
    # 3 x 2 tiles of 64 px cover 150 x 100 px; the bottom-right one holds only nodata.
    assert report.ok and report.num_samples == 5 and report.empty_tiles == 1
    reader = DatasetReader(tmp_path / "out")
    ids = [s.id for s in reader]
    assert sorted(ids) == ["scene_r0_c0", "scene_r0_c1", "scene_r0_c2", "scene_r1_c0", "scene_r1_c1"]
    canvas = np.full((2, 128, 192), SENTINEL, np.float32)
    for sample in reader:
        left, bottom, right, top = sample.record.bounds
        col, row = round((left - _ANCHOR_ORIGIN[0]) / 640), round((_ANCHOR_ORIGIN[1] - top) / 640)
        assert sample.id == f"scene_r{row}_c{col}"
        assert (right - left, top - bottom) == (640.0, 640.0)  # tiles touch: no gap, no overlap
        canvas[:, row * 64 : (row + 1) * 64, col * 64 : (col + 1) * 64] = bands_of(sample, "sentinel1")[0]
    # Stitched back, the tiles are the scene, nodata as sentinel, padded beyond its edge.
    np.testing.assert_array_equal(canvas[:, :100, :150], np.where(data == -9999.0, SENTINEL, data))
    assert (canvas[:, 100:] == SENTINEL).all() and (canvas[:, :, 150:] == SENTINEL).all()

    again = convert(root, tmp_path / "out", tile_size_px=64, samples_per_shard=4, tile_scenes=True, progress=False)
    assert again.shards_skipped == again.num_shards == 2 and again.empty_tiles == 1 and again.num_samples == 5


def test_without_tile_scenes_a_sample_is_the_top_left_tile(tmp_path: Path) -> None:
    root, data = _scene(tmp_path)
    report = convert(root, tmp_path / "out", tile_size_px=64, progress=False)
    (sample,) = DatasetReader(tmp_path / "out")
    assert report.num_samples == 1 and sample.id == "scene"
    np.testing.assert_array_equal(bands_of(sample, "sentinel1")[0], data[:, :64, :64])


def test_tile_scenes_counts_tiles_on_the_reference_grid(tmp_path: Path) -> None:
    # 40 x 30 px at 30 m = 1200 x 900 m: 48 px of 10 m make tiles of 480 m, 3 x 2 of them.
    dem = np.random.default_rng(9).uniform(100, 900, (1, 30, 40)).astype(np.float32)
    write_tif(tmp_path / "in" / "hill" / "srtm" / "dem.tif", dem, res=30.0, origin=_ANCHOR_ORIGIN)
    report = convert(tmp_path / "in", tmp_path / "out", tile_size_px=48, gsd_m=10.0, tile_scenes=True, progress=False)
    assert report.num_samples == 6 and report.empty_tiles == 0
    reader = DatasetReader(tmp_path / "out")
    tops_lefts = {(s.record.bounds[0], s.record.bounds[3]) for s in reader}
    x0, y0 = _ANCHOR_ORIGIN
    assert tops_lefts == {(x0 + 480 * c, y0 - 480 * r) for r in range(2) for c in range(3)}
    (grid,) = reader.info.grids["srtm"]
    assert grid.gsd_m == 30.0 and reader[0].data["srtm"][grid].shape == (1, 1, 16, 16)  # at its own 30 m
    # By default the reference grid is the finest the data has: here 30 m, so 48 px tiles are 1440 m.
    default = convert(tmp_path / "in", tmp_path / "out30", tile_size_px=48, tile_scenes=True, progress=False)
    assert default.num_samples == 1 and load_dataset_info(tmp_path / "out30").gsd_m == 30.0


def test_cli_tile_scenes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = _scene(tmp_path)
    assert main(["convert", str(root), str(tmp_path / "out"), "--tile-scenes"]) == 0
    out = capsys.readouterr().out
    assert "converted 5 samples" in out and "skipped 1 tile(s) without a valid pixel" in out
