"""Shard storage: HDF5 holds what Zarr holds, through one reader; blosc-lz4, one checksummed chunk per sample;
fast direct reads; every damaged chunk is an error naming the file and the sample."""

from __future__ import annotations

import json
import multiprocessing
import shutil
from pathlib import Path

import google_crc32c
import h5py
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from spacenit.conversion.convert import convert
from spacenit.data.checksums import crc32c, fletcher32
from spacenit.data.format import load_dataset_info
from spacenit.data.shards import (
    CHUNK_BLOSC,
    DatasetReader,
    Shard,
    ShardError,
    array_key,
    blosc_codec,
    write_shard,
)
from spacenit.data.stats import compute_stats
from spacenit.sensors import SENTINEL
from tests.rasters import damage_zarr_shard_index

#: HDF5 filter id of blosc, as registered by hdf5plugin, and its parameters (clevel, shuffle, compressor) for
#: level 5, bit shuffle (2), lz4 (1).
BLOSC_FILTER_ID = 32001
BLOSC_LZ4_BITSHUFFLE = (5, 2, 1)
#: HDF5's own id of the Fletcher-32 checksum filter (H5Z_FILTER_FLETCHER32).
FLETCHER32_FILTER_ID = 3


@pytest.fixture(scope="module")
def hdf5_dataset(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hdf5") / "dataset"
    report = convert(synthetic_dir, out, tile_size_px=24, samples_per_shard=10, storage="hdf5", progress=False)
    assert report.ok and report.storage == "hdf5"
    return out


def test_hdf5_holds_what_zarr_holds(hdf5_dataset: Path, synthetic_dataset: Path) -> None:
    h5, zr = DatasetReader(hdf5_dataset), DatasetReader(synthetic_dataset)
    assert h5.storage == "hdf5" and zr.storage == "zarr"
    assert [r.shard for r in h5.records][:1] == ["shards/shard-00000.h5"]
    for i in range(len(zr)):
        a, b = h5[i], zr[i]
        assert a.id == b.id and a.record.dates == b.record.dates and a.record.present == b.record.present
        for sensor, grids in b.data.items():
            for grid, array in grids.items():
                np.testing.assert_array_equal(a.data[sensor][grid], array)


def test_hdf5_chunks_compressed_by_two_workers_read_as_those_of_one(hdf5_dataset: Path, synthetic_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "two"
    assert convert(synthetic_dir, out, tile_size_px=24, samples_per_shard=10, storage="hdf5", workers=2, progress=False).ok
    one, two = DatasetReader(hdf5_dataset), DatasetReader(out)
    for i in range(len(one)):
        for sensor, grids in one[i].data.items():
            for grid, array in grids.items():
                np.testing.assert_array_equal(two[i].data[sensor][grid], array)
    with h5py.File(out / "shards" / "shard-00000.h5", "r") as f, h5py.File(hdf5_dataset / "shards" / "shard-00000.h5", "r") as g:
        for sensor, grid in one.info.array_names():  # HDF5's own filters decode and verify them too
            np.testing.assert_array_equal(f[array_key(sensor, grid)][...], g[array_key(sensor, grid)][...])


def test_hdf5_shards_are_lz4_bitshuffle_compressed_and_fletcher32_checked_one_chunk_per_sample(hdf5_dataset: Path) -> None:
    info = load_dataset_info(hdf5_dataset)
    with h5py.File(hdf5_dataset / "shards" / "shard-00000.h5", "r") as f:
        for sensor, grid in info.array_names():
            dset = f[array_key(sensor, grid)]
            assert dset.dtype == np.float32 and dset.chunks == (1, *dset.shape[1:])
            plist = dset.id.get_create_plist()
            filters = {plist.get_filter(i)[0]: plist.get_filter(i)[2] for i in range(plist.get_nfilters())}
            assert list(filters) == [BLOSC_FILTER_ID, FLETCHER32_FILTER_ID]
            assert tuple(filters[BLOSC_FILTER_ID][4:7]) == BLOSC_LZ4_BITSHUFFLE
        assert json.loads(f.attrs["spacenit"])["fingerprint"]


def test_stats_are_the_same_from_either_storage(hdf5_dataset: Path, synthetic_dataset: Path, tmp_path: Path) -> None:
    from_h5 = json.loads(compute_stats(hdf5_dataset, tmp_path / "h5.json", progress=False).read_text())
    from_zarr = json.loads((synthetic_dataset / "stats.json").read_text())
    assert from_h5["sensors"] == from_zarr["sensors"]


def test_hdf5_resumes_and_replaces_other_storage(synthetic_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    convert(synthetic_dir, out, tile_size_px=24, samples_per_shard=10, progress=False)
    first = convert(synthetic_dir, out, tile_size_px=24, samples_per_shard=10, storage="hdf5", progress=False)
    assert first.shards_skipped == 0
    assert sorted(p.name for p in (out / "shards").iterdir()) == [f"shard-0000{i}.h5" for i in range(3)]
    (out / "shards" / "shard-00001.h5").write_bytes(b"half a shard")  # as if torn by a crash
    again = convert(synthetic_dir, out, tile_size_px=24, samples_per_shard=10, storage="hdf5", progress=False)
    assert again.shards_skipped == 2 and len(DatasetReader(out)) == 24


def _s2_sum(sample) -> float:
    return float(sum(x.sum() for x in sample.data["sentinel2_l2a"].values()))


def _first_sample_sum(reader: DatasetReader, queue) -> None:
    queue.put(_s2_sum(reader[0]))


def test_reader_opened_before_fork_reads_in_the_child(hdf5_dataset: Path) -> None:
    reader = DatasetReader(hdf5_dataset)
    expected = _s2_sum(reader[0])  # the parent holds the file open
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
        group = zarr.open_group(store=str(synthetic_dataset / name), mode="r")
        for sensor, grid in reader.info.array_names():
            key = array_key(sensor, grid)
            assert shard._sample_reader(key) is not None  # the fast path is taken
            whole = np.asarray(group[key][...])
            for row in range(whole.shape[0]):
                np.testing.assert_array_equal(shard.read(key, row), whole[row])
            np.testing.assert_array_equal(shard.read(key), whole)  # slices and row lists too
            np.testing.assert_array_equal(shard.read(key, slice(1, 3)), whole[1:3])
            np.testing.assert_array_equal(shard.read(key, [0, 2]), whole[[0, 2]])
        shard.close()

    # An array laid out otherwise (no sharding) is read by zarr itself.
    group = zarr.open_group(store=str(tmp_path / "plain.zarr"), mode="w", zarr_format=3)
    group.create_array("srtm", data=np.arange(24, dtype=np.float32).reshape(2, 1, 1, 3, 4), chunks=(1, 1, 1, 3, 4))
    plain = Shard(tmp_path / "plain.zarr", "zarr")
    assert plain._sample_reader("srtm") is None
    np.testing.assert_array_equal(plain.read("srtm", 1), np.arange(12, 24, dtype=np.float32).reshape(1, 1, 3, 4))


def test_direct_hdf5_sample_reads_equal_h5py_and_refuse_a_chunk_of_the_wrong_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    data = {"sentinel2_l2a/10m": rng.normal(1000, 300, size=(4, 2, 3, 8, 8)).astype(np.float32),
            "era5/27750m": rng.normal(280, 5, size=(4, 3, 4)).astype(np.float32)}  # fmt: skip
    write_shard(tmp_path / "s.h5", data, {"records": []}, "hdf5")
    with h5py.File(tmp_path / "s.h5", "r") as f:  # chunks written compressed decode through HDF5's filters
        for key, whole in data.items():
            np.testing.assert_array_equal(f[key][...], whole)
    shard = Shard(tmp_path / "s.h5", "hdf5")
    for key, whole in data.items():
        assert shard._sample_reader(key) is not None  # the direct path is taken
        for row in range(4):
            np.testing.assert_array_equal(shard.read(key, row), whole[row])
        np.testing.assert_array_equal(shard.read(key), whole)
        np.testing.assert_array_equal(shard.read(key, [1, 3]), whole[[1, 3]])
    shard.close()
    with h5py.File(tmp_path / "s.h5", "r+") as f:  # row 2 of era5 replaced by a (checksummed) chunk of half the values
        half = blosc_codec(CHUNK_BLOSC).encode(data["era5/27750m"][2, :, :2].copy())
        f["era5/27750m"].id.write_direct_chunk((2, 0, 0), half + fletcher32(half))
    shard = Shard(tmp_path / "s.h5", "hdf5")
    np.testing.assert_array_equal(shard.read("era5/27750m", 1), data["era5/27750m"][1])
    with pytest.raises(ShardError, match=r"row 2 of .*s\.h5:/era5/27750m is damaged"):
        shard.read("era5/27750m", 2)
    with pytest.raises(ShardError, match=r"row 4 is outside shard .*s\.h5, which holds 4 samples"):
        shard.read("era5/27750m", 4)
    with pytest.raises(ShardError, match=r"row -1 is outside"):
        shard.read("era5/27750m", -1)
    shard.close()


def test_damaged_zarr_shard_index_is_an_error(synthetic_dataset: Path, tmp_path: Path) -> None:
    shutil.copytree(synthetic_dataset, tmp_path / "ds")
    damage_zarr_shard_index(tmp_path / "ds", "shard-00000.zarr", "srtm/30m")
    with pytest.raises(ShardError, match=r"sample .* \(shard shards/shard-00000.zarr\): the shard index of .* is damaged"):
        DatasetReader(tmp_path / "ds")[0]


def test_a_zarr_chunk_of_the_wrong_size_is_an_error_not_a_partial_sample(tmp_path: Path) -> None:
    # The direct reader decodes into the sample's array: a chunk that decodes to fewer
    # bytes (an index pointing at another array's chunk) must not leave part of it unset.
    data = np.random.default_rng(9).normal(1000, 300, size=(2, 1, 4, 8, 8)).astype(np.float32)
    write_shard(tmp_path / "s.zarr", {"sentinel2_l2a/10m": data}, {"records": []}, "zarr")
    shard_file = next(p for p in (tmp_path / "s.zarr" / "sentinel2_l2a" / "10m").rglob("*") if p.is_file() and p.name != "zarr.json")
    small = blosc_codec(CHUNK_BLOSC).encode(data[0, :, :2])  # half the bands, with a valid CRC32C
    chunk = small + crc32c(small)
    index = np.array([[0, len(chunk)], [0, len(chunk)]], dtype="<u8").tobytes()
    shard_file.write_bytes(chunk + index + google_crc32c.value(index).to_bytes(4, "little"))
    shard = Shard(tmp_path / "s.zarr", "zarr")
    with pytest.raises(ShardError, match=r"row 1 of .*s\.zarr/sentinel2_l2a/10m.* is damaged"):
        shard.read("sentinel2_l2a/10m", 1)
    shard.close()


def test_zarr_shards_we_write_read_back_through_zarr_python(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    arrays = {
        "sentinel2_l2a/10m": rng.normal(1000, 300, size=(5, 2, 4, 16, 16)).astype(np.float32),
        "sentinel2_l2a/20m": rng.normal(1000, 300, size=(5, 2, 6, 8, 8)).astype(np.float32),
        "era5/27750m": rng.normal(280, 5, size=(5, 3, 4)).astype(np.float32),
    }
    arrays["sentinel2_l2a/10m"][1, 0] = SENTINEL
    write_shard(tmp_path / "s.zarr", arrays, {"records": []}, "zarr")
    group = zarr.open_group(store=str(tmp_path / "s.zarr"), mode="r")
    for name, data in arrays.items():
        np.testing.assert_array_equal(np.asarray(group[name][...]), data)  # zarr checks each chunk's CRC32C
        assert group[name].metadata.to_dict()["codecs"][0]["name"] == "sharding_indexed"
    assert sorted(p.name for p in (tmp_path / "s.zarr" / "era5").rglob("*") if p.is_file()) == ["0", "zarr.json", "zarr.json"]
    # The metadata is what zarr-python itself writes for such arrays and groups.
    for name, data in arrays.items():
        zarr.create_array(
            store=str(tmp_path / "ref" / name), shape=data.shape, chunks=(1, *data.shape[1:]), shards=data.shape,
            dtype="float32", fill_value=SENTINEL,
            compressors=[BloscCodec(cname=CHUNK_BLOSC["cname"], clevel=CHUNK_BLOSC["clevel"], shuffle=CHUNK_BLOSC["shuffle"]),
                         Crc32cCodec()],
        )  # fmt: skip
        ours = json.loads((tmp_path / "s.zarr" / name / "zarr.json").read_text())
        assert ours == json.loads((tmp_path / "ref" / name / "zarr.json").read_text())
    zarr.open_group(store=str(tmp_path / "refgroup"), mode="w", zarr_format=3).create_group("era5")
    assert json.loads((tmp_path / "s.zarr" / "era5" / "zarr.json").read_text()) == json.loads(
        (tmp_path / "refgroup" / "era5" / "zarr.json").read_text())
    assert group.attrs.asdict() == {"records": []}


def _chunk_span(shard_file: Path, row: int, num_rows: int) -> tuple[int, int]:
    """(offset, nbytes) of a row's chunk in a Zarr shard file, from its index."""
    tail = shard_file.read_bytes()[-(num_rows * 16 + 4) :]
    offset, nbytes = np.frombuffer(tail[:-4], dtype="<u8").reshape(num_rows, 2)[row]
    return int(offset), int(nbytes)


@pytest.mark.parametrize("storage", ["zarr", "hdf5"])
def test_every_flipped_byte_of_a_real_chip_is_an_error_naming_file_sample_and_shard(storage: str, shared_data: Path,
                                                                                     tmp_path: Path) -> None:  # fmt: skip
    # Issue 20, case 2: before checksums, flipping one byte inside a chunk changed values silently in
    # 1458 of 1537 trials. Now every flip of every byte of a real EuroSAT chip's chunk is caught.
    chips = shared_data / "eurosat_ms" / "train" / "Forest"
    source = tmp_path / "in" / "Forest"
    source.mkdir(parents=True)
    shutil.copy(sorted(chips.glob("*.tif"))[0], source)
    out = tmp_path / "ds"
    assert convert(tmp_path / "in", out, layout="class_folders", storage=storage, progress=False).ok
    reader = DatasetReader(out)
    sample_id, shard_name = reader.records[0].id, reader.records[0].shard
    key = array_key("sentinel2_l1c", reader.info.grids["sentinel2_l1c"][0].name)
    if storage == "zarr":
        path = next(p for p in (out / shard_name / key).rglob("*") if p.is_file() and p.name != "zarr.json")
        offset, nbytes = _chunk_span(path, 0, 1)
    else:
        path = out / shard_name
        with h5py.File(path, "r") as f:
            offset, nbytes = f[key].id.get_chunk_info(0).byte_offset, f[key].id.get_chunk_info(0).size
    original = path.read_bytes()
    reader.close()
    for position in range(offset, offset + nbytes, max(1, nbytes // 97)):  # ~100 positions over the whole chunk
        damaged = bytearray(original)
        damaged[position] ^= 0x01
        path.write_bytes(bytes(damaged))
        with pytest.raises(ShardError) as caught:
            DatasetReader(out)[0]
        message = str(caught.value)
        assert sample_id in message and shard_name in message and str(path.name) in message, message
    path.write_bytes(original)
    DatasetReader(out)[0]  # undamaged again: reads
