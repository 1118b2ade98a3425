"""Shard storage: HDF5 holds what Zarr holds, through one reader; blosc-lz4, one chunk per sample; fast Zarr reads."""

from __future__ import annotations

import json
import multiprocessing
import shutil
from pathlib import Path

import google_crc32c
import h5py
import hdf5plugin
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from spacenit.conversion.convert import convert
from spacenit.data.format import load_dataset_info
from spacenit.data.shards import CHUNK_BLOSC, DatasetReader, Shard, blosc_codec, write_shard
from spacenit.data.stats import compute_stats
from spacenit.sensors import SENTINEL
from tests.rasters import damage_zarr_shard_index

#: HDF5 filter id of blosc, as registered by hdf5plugin, and its parameters (clevel, shuffle, compressor) for
#: level 5, bit shuffle (2), lz4 (1).
BLOSC_FILTER_ID = 32001
BLOSC_LZ4_BITSHUFFLE = (5, 2, 1)


@pytest.fixture(scope="module")
def hdf5_dataset(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hdf5") / "dataset"
    report = convert(synthetic_dir, out, tile_size_px=32, samples_per_shard=10, storage="hdf5", progress=False)
    assert report.ok and report.storage == "hdf5"
    return out


def test_hdf5_holds_what_zarr_holds(hdf5_dataset: Path, synthetic_dataset: Path) -> None:
    h5, zr = DatasetReader(hdf5_dataset), DatasetReader(synthetic_dataset)
    assert h5.storage == "hdf5" and zr.storage == "zarr"
    assert [r.shard for r in h5.records][:1] == ["shards/shard-00000.h5"]
    for i in range(len(zr)):
        a, b = h5[i], zr[i]
        assert a.id == b.id and a.record.dates == b.record.dates and a.record.present == b.record.present
        for sensor, array in b.data.items():
            np.testing.assert_array_equal(a.data[sensor], array)


def test_hdf5_chunks_compressed_by_two_workers_read_as_those_of_one(hdf5_dataset: Path, synthetic_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "two"
    assert convert(synthetic_dir, out, tile_size_px=32, samples_per_shard=10, storage="hdf5", workers=2, progress=False).ok
    one, two = DatasetReader(hdf5_dataset), DatasetReader(out)
    for i in range(len(one)):
        for sensor, array in one[i].data.items():
            np.testing.assert_array_equal(two[i].data[sensor], array)
    with h5py.File(out / "shards" / "shard-00000.h5", "r") as f, h5py.File(hdf5_dataset / "shards" / "shard-00000.h5", "r") as g:
        for sensor in one.info.sensors:  # HDF5's own filter decodes them too
            np.testing.assert_array_equal(f[sensor][...], g[sensor][...])


def test_hdf5_shards_are_lz4_bitshuffle_compressed_one_chunk_per_sample(hdf5_dataset: Path) -> None:
    info = load_dataset_info(hdf5_dataset)
    with h5py.File(hdf5_dataset / "shards" / "shard-00000.h5", "r") as f:
        for sensor in info.sensors:
            dset = f[sensor]
            assert dset.dtype == np.float32 and dset.chunks == (1, *dset.shape[1:])
            plist = dset.id.get_create_plist()
            filters = {plist.get_filter(i)[0]: plist.get_filter(i)[2] for i in range(plist.get_nfilters())}
            assert list(filters) == [BLOSC_FILTER_ID] and tuple(filters[BLOSC_FILTER_ID][4:7]) == BLOSC_LZ4_BITSHUFFLE
        assert json.loads(f.attrs["spacenit"])["fingerprint"]


def test_stats_are_the_same_from_either_storage(hdf5_dataset: Path, synthetic_dataset: Path, tmp_path: Path) -> None:
    from_h5 = json.loads(compute_stats(hdf5_dataset, tmp_path / "h5.json", progress=False).read_text())
    from_zarr = json.loads((synthetic_dataset / "stats.json").read_text())
    assert from_h5["sensors"] == from_zarr["sensors"]


def test_hdf5_resumes_and_replaces_other_storage(synthetic_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    convert(synthetic_dir, out, tile_size_px=32, samples_per_shard=10, progress=False)
    first = convert(synthetic_dir, out, tile_size_px=32, samples_per_shard=10, storage="hdf5", progress=False)
    assert first.shards_skipped == 0
    assert sorted(p.name for p in (out / "shards").iterdir()) == [f"shard-0000{i}.h5" for i in range(3)]
    (out / "shards" / "shard-00001.h5").write_bytes(b"half a shard")  # as if torn by a crash
    again = convert(synthetic_dir, out, tile_size_px=32, samples_per_shard=10, storage="hdf5", progress=False)
    assert again.shards_skipped == 2 and len(DatasetReader(out)) == 24


def _first_sample_sum(reader: DatasetReader, queue) -> None:
    queue.put(float(reader[0].data["sentinel2_l2a"].sum()))


def test_reader_opened_before_fork_reads_in_the_child(hdf5_dataset: Path) -> None:
    reader = DatasetReader(hdf5_dataset)
    expected = float(reader[0].data["sentinel2_l2a"].sum())  # the parent holds the file open
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_first_sample_sum, args=(reader, queue))
    child.start()
    assert queue.get(timeout=60) == expected
    child.join(timeout=60)
    assert child.exitcode == 0


def test_direct_zarr_sample_reads_equal_zarr_python(synthetic_dataset: Path, tmp_path: Path) -> None:
    reader = DatasetReader(synthetic_dataset)
    for name in reader.shards():
        shard = Shard(synthetic_dataset / name, "zarr")
        for sensor in reader.info.sensors:
            assert shard._sample_reader(sensor) is not None  # the fast path is taken
            whole = np.asarray(zarr.open_group(store=str(synthetic_dataset / name), mode="r")[sensor][...])
            for row in range(whole.shape[0]):
                np.testing.assert_array_equal(shard.read(sensor, row), whole[row])
            np.testing.assert_array_equal(shard.read(sensor), whole)  # slices and row lists too
            np.testing.assert_array_equal(shard.read(sensor, slice(1, 3)), whole[1:3])
            np.testing.assert_array_equal(shard.read(sensor, [0, 2]), whole[[0, 2]])
        shard.close()

    # An array laid out otherwise (no sharding) is read by zarr itself.
    group = zarr.open_group(store=str(tmp_path / "plain.zarr"), mode="w", zarr_format=3)
    group.create_array("srtm", data=np.arange(24, dtype=np.float32).reshape(2, 1, 1, 3, 4), chunks=(1, 1, 1, 3, 4))
    plain = Shard(tmp_path / "plain.zarr", "zarr")
    assert plain._sample_reader("srtm") is None
    np.testing.assert_array_equal(plain.read("srtm", 1), np.arange(12, 24, dtype=np.float32).reshape(1, 1, 3, 4))


def test_shards_of_the_first_format_2_codec_still_read(tmp_path: Path) -> None:
    # The first format-2 writers compressed chunks with zstd-1 after a byte shuffle, in Zarr
    # (through zarr-python) and in HDF5 (hdf5plugin): those shards read as before, Zarr ones
    # through the direct path, whose blosc settings come from the array's metadata.
    data = np.random.default_rng(8).normal(1000, 300, size=(3, 1, 4, 8, 8)).astype(np.float32)
    group = zarr.open_group(store=str(tmp_path / "old.zarr"), mode="w", zarr_format=3)
    group.create_array("sentinel2_l2a", shape=data.shape, chunks=(1, *data.shape[1:]), shards=data.shape, dtype="float32",
                       compressors=BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"), fill_value=SENTINEL)[...] = data  # fmt: skip
    old = Shard(tmp_path / "old.zarr", "zarr")
    assert old._sample_reader("sentinel2_l2a") is not None
    np.testing.assert_array_equal(old.read("sentinel2_l2a", 2), data[2])
    np.testing.assert_array_equal(old.read("sentinel2_l2a"), data)
    with h5py.File(tmp_path / "old.h5", "w") as f:
        f.attrs["spacenit"] = "{}"
        f.create_dataset("sentinel2_l2a", data=data, chunks=(1, *data.shape[1:]), shuffle=True, **hdf5plugin.Zstd(clevel=1))
    old = Shard(tmp_path / "old.h5", "hdf5")
    assert old._sample_reader("sentinel2_l2a") is None  # not blosc: h5py decodes it
    np.testing.assert_array_equal(old.read("sentinel2_l2a", [0, 2]), data[[0, 2]])
    old.close()


def test_direct_hdf5_sample_reads_equal_h5py_and_refuse_a_chunk_of_the_wrong_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    data = {"sentinel2_l2a": rng.normal(1000, 300, size=(4, 2, 3, 8, 8)).astype(np.float32),
            "era5": rng.normal(280, 5, size=(4, 3, 4)).astype(np.float32)}  # fmt: skip
    write_shard(tmp_path / "s.h5", data, {"records": []}, "hdf5")
    with h5py.File(tmp_path / "s.h5", "r") as f:  # chunks written compressed decode through HDF5's blosc filter
        for sensor, whole in data.items():
            np.testing.assert_array_equal(f[sensor][...], whole)
    shard = Shard(tmp_path / "s.h5", "hdf5")
    for sensor, whole in data.items():
        assert shard._sample_reader(sensor) is not None  # the direct path is taken
        for row in range(4):
            np.testing.assert_array_equal(shard.read(sensor, row), whole[row])
        np.testing.assert_array_equal(shard.read(sensor), whole)
        np.testing.assert_array_equal(shard.read(sensor, [1, 3]), whole[[1, 3]])
    shard.close()
    with h5py.File(tmp_path / "s.h5", "r+") as f:  # row 2 of era5 replaced by a chunk of half the values
        f["era5"].id.write_direct_chunk((2, 0, 0), blosc_codec(CHUNK_BLOSC).encode(data["era5"][2, :, :2].copy()))
    shard = Shard(tmp_path / "s.h5", "hdf5")
    np.testing.assert_array_equal(shard.read("era5", 1), data["era5"][1])
    with pytest.raises(ValueError, match=r"sample 2 of .*s\.h5:/era5 is damaged"):
        shard.read("era5", 2)
    shard.close()


def test_damaged_zarr_shard_index_is_an_error(synthetic_dataset: Path, tmp_path: Path) -> None:
    shutil.copytree(synthetic_dataset, tmp_path / "ds")
    damage_zarr_shard_index(tmp_path / "ds", "shard-00000.zarr", "srtm")
    with pytest.raises(ValueError, match="shard index .* is damaged"):
        DatasetReader(tmp_path / "ds")[0]


def test_a_zarr_chunk_of_the_wrong_size_is_an_error_not_a_partial_sample(tmp_path: Path) -> None:
    # The direct reader decodes into the sample's array: a chunk that decodes to fewer
    # bytes (an index pointing at another array's chunk) must not leave part of it unset.
    data = np.random.default_rng(9).normal(1000, 300, size=(2, 1, 4, 8, 8)).astype(np.float32)
    write_shard(tmp_path / "s.zarr", {"sentinel2_l2a": data}, {"records": []}, "zarr")
    shard_file = next(p for p in (tmp_path / "s.zarr" / "sentinel2_l2a").rglob("*") if p.is_file() and p.name != "zarr.json")
    small = blosc_codec(CHUNK_BLOSC).encode(data[0, :, :2])  # half the bands
    index = np.array([[0, len(small)], [0, len(small)]], dtype="<u8").tobytes()
    shard_file.write_bytes(small + index + google_crc32c.value(index).to_bytes(4, "little"))
    shard = Shard(tmp_path / "s.zarr", "zarr")
    with pytest.raises(ValueError, match=r"sample 1 of .*s\.zarr/sentinel2_l2a.* is damaged"):
        shard.read("sentinel2_l2a", 1)
    shard.close()


def test_zarr_shards_we_write_read_back_through_zarr_python(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    arrays = {
        "sentinel2_l2a": rng.normal(1000, 300, size=(5, 2, 12, 16, 16)).astype(np.float32),
        "era5": rng.normal(280, 5, size=(5, 3, 4)).astype(np.float32),
    }
    arrays["sentinel2_l2a"][1, 0] = SENTINEL
    write_shard(tmp_path / "s.zarr", arrays, {"records": []}, "zarr")
    group = zarr.open_group(store=str(tmp_path / "s.zarr"), mode="r")
    for name, data in arrays.items():
        np.testing.assert_array_equal(np.asarray(group[name][...]), data)
        assert group[name].metadata.to_dict()["codecs"][0]["name"] == "sharding_indexed"
    assert sorted(p.name for p in (tmp_path / "s.zarr" / "era5").rglob("*") if p.is_file()) == ["0", "zarr.json"]
    # The metadata is what zarr-python itself writes for such an array.
    for name, data in arrays.items():
        zarr.create_array(
            store=str(tmp_path / f"ref-{name}"), shape=data.shape, chunks=(1, *data.shape[1:]), shards=data.shape,
            dtype="float32", fill_value=SENTINEL,
            compressors=BloscCodec(cname=CHUNK_BLOSC["cname"], clevel=CHUNK_BLOSC["clevel"], shuffle=CHUNK_BLOSC["shuffle"]),
        )  # fmt: skip
        ours = json.loads((tmp_path / "s.zarr" / name / "zarr.json").read_text())
        assert ours == json.loads((tmp_path / f"ref-{name}" / "zarr.json").read_text())
    assert group.attrs.asdict() == {"records": []}
