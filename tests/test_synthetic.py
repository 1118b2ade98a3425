"""The synthetic GeoTIFF generator: deterministic, well-formed, discoverable, with learnable classes."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import rasterio
from sklearn.neighbors import KNeighborsClassifier

from spacenit.conversion.discover import date_from_name, discover
from spacenit.conversion.synthetic import (
    CLASS_NAMES,
    DEM_FILE_NAME,
    DEM_GSD_M,
    OPTICAL_GSD_M,
    UTM_EPSG_CODES,
    main,
    make_synthetic,
)
from spacenit.sensors import SENTINEL1, SENTINEL2_L2A, SRTM

NUM_SAMPLES = 24  # what the `synthetic_dir` fixture writes
NUM_DATES = 2
TILE_SIZE_PX = 24


def _file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _read_labels(root: Path) -> list[dict[str, str]]:
    with (root / "labels.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _s2_band_means(sample_dir: Path) -> np.ndarray:
    """Per-band mean reflectance (x 10000) over valid pixels of every date of a sample (each band's own file)."""
    means = []
    for band in SENTINEL2_L2A.bands:
        values = []
        for path in sorted((sample_dir / SENTINEL2_L2A.name).glob(f"*/{band}.tif")):
            with rasterio.open(path) as src:
                values.append(src.read(1, masked=True).astype(np.float64).ravel())
        means.append(np.ma.concatenate(values).mean())
    return np.array(means)


def _s2_dates(sample_dir: Path) -> list[Path]:
    return sorted(p for p in (sample_dir / SENTINEL2_L2A.name).iterdir() if p.is_dir())


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    kwargs = {"num_samples": 6, "tile_size_px": 12, "num_dates": 2}
    first = _file_hashes(make_synthetic(tmp_path / "a", seed=7, **kwargs))
    second = _file_hashes(make_synthetic(tmp_path / "b", seed=7, **kwargs))
    other = _file_hashes(make_synthetic(tmp_path / "c", seed=8, **kwargs))

    assert first == second
    assert any(name.endswith(".tif") for name in first)
    tifs_in_both = [name for name in first if name.endswith(".tif") and name in other]
    assert tifs_in_both, "runs with other seeds should share file names for most tiles"
    assert all(first[name] != other[name] for name in tifs_in_both)


def test_rasters_have_the_sensor_bands_types_crs_and_native_resolution(synthetic_dir: Path) -> None:
    s1_paths = sorted(synthetic_dir.glob(f"sample_*/{SENTINEL1.name}/*.tif"))
    dem_paths = sorted(synthetic_dir.glob(f"sample_*/{SRTM.name}/{DEM_FILE_NAME}"))
    assert NUM_SAMPLES * NUM_DATES - 2 <= len(s1_paths) < NUM_SAMPLES * NUM_DATES
    assert len(dem_paths) == NUM_SAMPLES

    epsg_seen = set()
    checks = [(s1_paths, SENTINEL1.bands, "float32", OPTICAL_GSD_M), (dem_paths, SRTM.bands, "float32", DEM_GSD_M)]
    for grid in SENTINEL2_L2A.native_grids():  # one file per band, at the band's own resolution
        for band in grid.bands:
            paths = sorted(synthetic_dir.glob(f"sample_*/{SENTINEL2_L2A.name}/*/{band}.tif"))
            assert len(paths) == NUM_SAMPLES * NUM_DATES
            checks.append((paths, (band,), "uint16", grid.gsd_m))
    for paths, bands, dtype, gsd_m in checks:
        for path in paths:
            with rasterio.open(path) as src:
                assert src.count == len(bands), path
                assert set(src.dtypes) == {dtype}, path
                assert src.crs.to_epsg() in UTM_EPSG_CODES, path
                assert src.res == pytest.approx((gsd_m, gsd_m)), path
                assert src.descriptions == bands, path
                epsg_seen.add(src.crs.to_epsg())
                side = TILE_SIZE_PX * OPTICAL_GSD_M / gsd_m  # every file covers the same footprint
                assert (src.width, src.height) == (side, side), path
    assert len(epsg_seen) >= 2


def test_every_band_and_the_dem_cover_the_same_footprint(synthetic_dir: Path) -> None:
    for sample_dir in sorted(synthetic_dir.glob("sample_*")):
        date_dir = _s2_dates(sample_dir)[0]
        with rasterio.open(date_dir / "B02.tif") as s2:
            for other in (date_dir / "B05.tif", date_dir / "B01.tif", sample_dir / SRTM.name / DEM_FILE_NAME):
                with rasterio.open(other) as src:
                    assert src.crs == s2.crs and tuple(src.bounds) == tuple(s2.bounds), other


def test_every_sample_has_its_own_footprint(synthetic_dir: Path) -> None:
    footprints = set()
    for sample_dir in sorted(synthetic_dir.glob("sample_*")):
        with rasterio.open(_s2_dates(sample_dir)[0] / "B02.tif") as src:
            footprints.add((src.crs.to_epsg(), tuple(src.bounds)))
    assert len(footprints) == NUM_SAMPLES


def test_nodata_is_zero_in_s2_and_nan_in_s1_and_some_samples_have_a_patch(
    synthetic_dir: Path,
) -> None:
    s2_patches = s1_patches = 0
    for path in sorted(synthetic_dir.glob(f"sample_*/{SENTINEL2_L2A.name}/*/B02.tif")):
        with rasterio.open(path) as src:
            assert src.nodata == 0
            s2_patches += bool((src.read() == 0).any())
    for path in sorted(synthetic_dir.glob(f"sample_*/{SENTINEL1.name}/*.tif")):
        with rasterio.open(path) as src:
            assert np.isnan(src.nodata)
            data = src.read()
            s1_patches += bool(np.isnan(data).any())
            valid = data[np.isfinite(data)]
            assert -40 < valid.mean() < 0
    assert 1 <= s2_patches < NUM_SAMPLES * NUM_DATES
    assert 1 <= s1_patches < NUM_SAMPLES * NUM_DATES


def test_dates_fall_in_different_months_of_one_year(synthetic_dir: Path) -> None:
    for sample_dir in sorted(synthetic_dir.glob("sample_*")):
        dates = [date_from_name(p.name) for p in _s2_dates(sample_dir)]
        assert len({d[:4] for d in dates}) == 1
        assert len({d[5:7] for d in dates}) == NUM_DATES


def test_labels_cover_every_sample_with_four_balanced_classes_and_both_splits(
    synthetic_dir: Path,
) -> None:
    rows = _read_labels(synthetic_dir)
    assert [r["sample_id"] for r in rows] == [f"sample_{i:04d}" for i in range(NUM_SAMPLES)]
    assert Counter(r["label"] for r in rows) == {name: NUM_SAMPLES // 4 for name in CLASS_NAMES}
    splits_per_class = defaultdict(Counter)
    for r in rows:
        splits_per_class[r["label"]][r["split"]] += 1
    for name in CLASS_NAMES:
        assert set(splits_per_class[name]) == {"train", "test"}
    num_train = sum(r["split"] == "train" for r in rows)
    assert 0.6 <= num_train / NUM_SAMPLES <= 0.8


def test_discover_finds_every_sample_with_all_sensors_and_labels(synthetic_dir: Path) -> None:
    samples = discover(synthetic_dir)
    assert len(samples) == NUM_SAMPLES
    for sample in samples:
        assert set(sample.files) == {SENTINEL2_L2A.name, SENTINEL1.name, SRTM.name}
        assert len(sample.files[SENTINEL2_L2A.name]) == NUM_DATES
        assert sample.label in CLASS_NAMES
        assert sample.split in {"train", "test"}
    # One or two samples miss a Sentinel-1 date, so conversion meets a missing timestep.
    short = [s for s in samples if len(s.files[SENTINEL1.name]) < NUM_DATES]
    assert 1 <= len(short) <= 2


def test_classes_differ_as_designed_and_are_learnable(synthetic_dir: Path) -> None:
    rows = _read_labels(synthetic_dir)
    features = np.stack([_s2_band_means(synthetic_dir / r["sample_id"]) for r in rows])
    labels = np.array([r["label"] for r in rows])
    is_train = np.array([r["split"] == "train" for r in rows])

    nir = features[:, SENTINEL2_L2A.band_index(["B08"])[0]]
    assert nir[labels == "water"].mean() < nir[labels == "forest"].mean()

    # Per-band means carry the class: a kNN is clearly above chance (0.25).
    knn = KNeighborsClassifier(n_neighbors=3).fit(features[is_train], labels[is_train])
    assert knn.score(features[~is_train], labels[~is_train]) > 0.5


def test_command_line_writes_the_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main([str(tmp_path), "--num-samples", "4", "--tile-size-px", "12", "--num-dates", "1"]) == 0
    )
    assert len(discover(tmp_path)) == 4
    assert "wrote 4" in capsys.readouterr().out


def test_command_line_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--num-dates", "13"])
    with pytest.raises(SystemExit):  # 60 m bands need a tile of whole 60 m pixels
        main([str(tmp_path), "--tile-size-px", "32"])
