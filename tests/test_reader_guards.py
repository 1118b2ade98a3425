"""Reads that used to go wrong silently (issue 20, cases 4 and 9): shard paths escaping the dataset
root, rows outside a shard, damaged array metadata and truncated HDF5 files, rasters that are not
north-up or have a zero pixel size. Each is an error naming the file."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from spacenit.conversion.convert import convert
from spacenit.data.format import load_dataset_info, save_dataset_info
from spacenit.data.shards import DatasetReader, ShardError
from spacenit.data.stats import compute_stats
from tests.rasters import write_tif


@pytest.fixture
def dataset(synthetic_dataset: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic dataset, free to damage."""
    return Path(shutil.copytree(synthetic_dataset, tmp_path / "dataset"))


def _edit_first_record(root: Path, **changes) -> None:
    info = load_dataset_info(root)
    info.samples[0] = dataclasses.replace(info.samples[0], **changes)
    save_dataset_info(root, info)


def test_a_shard_path_escaping_the_root_is_refused_by_every_reader(dataset: Path, tmp_path: Path) -> None:
    # What used to happen: stats joined root / shard itself, so ../other/... (or /etc/passwd) was opened.
    outside = tmp_path / "other.zarr"
    shutil.copytree(dataset / "shards" / load_dataset_info(dataset).samples[0].shard.split("/")[-1], outside)
    for shard in ("../other.zarr", "/etc/passwd"):
        _edit_first_record(dataset, shard=shard)
        with pytest.raises(ShardError, match="escapes the dataset root"):
            DatasetReader(dataset)[0]
        with pytest.raises(ShardError, match="escapes the dataset root"):
            compute_stats(dataset, progress=False)


def test_a_row_outside_its_shard_is_refused_not_read_as_the_last_row(dataset: Path) -> None:
    _edit_first_record(dataset, row=-1)
    with pytest.raises(ShardError, match="row -1 is outside shard"):
        DatasetReader(dataset)[0]
    with pytest.raises(ShardError, match=r"rows \[-1\] of shard .*shard-00000.zarr"):
        compute_stats(dataset, progress=False)


def test_a_damaged_array_metadata_file_names_itself(dataset: Path) -> None:
    zarr_json = next((dataset / "shards").rglob("sentinel2_l2a/10m/zarr.json"))
    zarr_json.write_text("{ not json")
    with pytest.raises(ShardError, match=r"sentinel2_l2a/10m/zarr.json.*JSONDecodeError"):
        for i in range(len(DatasetReader(dataset))):
            DatasetReader(dataset)[i]


def test_a_truncated_hdf5_shard_names_its_file(synthetic_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "h5"
    assert convert(synthetic_dir, out, tile_size_px=24, samples_per_shard=12, storage="hdf5", progress=False).ok
    shard = next((out / "shards").glob("*.h5"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    reader = DatasetReader(out)
    index = next(i for i, r in enumerate(reader.records) if shard.name in r.shard)
    with pytest.raises(ShardError, match=shard.name):
        reader[index]


@pytest.mark.parametrize(("transform", "reason"), [
    (Affine(10.0, 0.0, 500_000.0, 0.0, 10.0, 5_000_000.0), "south-up"),
    (Affine(10.0, 0.0, 500_000.0, 0.0, 0.0, 5_000_000.0), "zero pixel size"),
])  # fmt: skip
def test_a_raster_not_north_up_or_with_a_zero_pixel_is_reported_as_such(tmp_path: Path, transform: Affine, reason: str) -> None:
    # These used to be reported as "looks truncated" (south-up) and "no CRS" (zero pixel size).
    data = np.full((13, 12, 12), 1000, dtype=np.uint16)
    write_tif(tmp_path / "in" / "Forest" / "good.tif", data)
    bad = tmp_path / "in" / "Forest" / "bad.tif"
    with rasterio.open(bad, "w", driver="GTiff", width=12, height=12, count=13, dtype="uint16", crs="EPSG:32632",
                       transform=transform) as dst:  # fmt: skip
        dst.write(data)
    report = convert(tmp_path / "in", tmp_path / "out", layout="class_folders", sensor="sentinel2_l1c",
                     tile_size_px=12, progress=False)  # fmt: skip
    assert report.num_samples == 1 and len(report.failures) == 1
    failure = report.failures[0]
    assert "bad.tif" in failure.reason and reason in failure.reason and "looks truncated" not in failure.reason
