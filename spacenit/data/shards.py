"""Shard storage: write a shard atomically, read samples back, from Zarr v3 or HDF5.

A shard holds a group of samples. Inside it, each sensor is one float32 array
`(N, T, C, H, W)` (spatial) or `(N, T, C)` (non-spatial), chunked one sample
per chunk so a sample is one read, plus JSON attributes (the shard's records,
failures and input fingerprint). Two storages hold the same content
(docs/format.md):

* ``zarr`` (default): a Zarr v3 group per shard; the sharding codec packs the
  chunks of an array into one file, so a dataset is a handful of files.
* ``hdf5``: one HDF5 file per shard, the same blosc filter (hdf5plugin).

`DatasetReader` serves both; it dispatches on `dataset.json`'s `storage`.
Single Zarr samples are read straight from the shard index (`_ZarrSampleReader`).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import h5py
import hdf5plugin
import numcodecs
import numpy as np
import zarr

from spacenit.data.format import (
    STORAGES,
    DatasetInfo,
    SampleRecord,
    load_dataset_info,
    readable_json,
)
from spacenit.sensors import SENTINEL

#: File-name suffix of a shard, per storage.
SHARD_SUFFIX = {"zarr": ".zarr", "hdf5": ".h5"}
#: HDF5 attribute holding the shard's JSON attributes.
HDF5_ATTRS = "spacenit"
#: The chunk codec of every array SpaceNit writes (zarr's BloscCodec settles typesize 4 for float32):
#: LZ4 after a bit shuffle. On the real chips in ../shared/data it stores within 6% of zstd-1 after
#: a byte shuffle (the codec of the first format-2 writers, which readers still decode) and
#: encodes 2-3.3x and decodes 1.1-2.6x faster (benchmarks/bench_codecs.py): conversion, stats and
#: the training loader all encode or decode every sample on CPUs that are busy anyway.
CHUNK_BLOSC = {"cname": "lz4", "clevel": 5, "shuffle": "bitshuffle", "typesize": 4, "blocksize": 0}
#: Blosc's own shuffle codes, as numcodecs and hdf5plugin both take them, by their Zarr v3 names.
_BLOSC_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


@dataclass
class EncodedRows:
    """Rows of one sensor's array already compressed as shard chunks (Zarr or HDF5), one per row.

    Conversion workers compress their samples themselves (`encode_rows`), so the
    process that writes the shard only concatenates bytes: with several workers,
    compressing in the one writer had become the bottleneck.
    """

    shape: tuple[int, ...]  # of the whole array, (N, ...)
    chunks: list[bytes]

    @classmethod
    def concat(cls, parts: Sequence[EncodedRows]) -> EncodedRows:
        shape = (sum(p.shape[0] for p in parts), *parts[0].shape[1:])
        return cls(shape, [c for p in parts for c in p.chunks])


def encode_rows(data: np.ndarray) -> EncodedRows:
    """Compress `data` (N, ...) row by row, as a shard stores it."""
    data = np.ascontiguousarray(data, dtype=np.float32)
    blosc = blosc_codec(CHUNK_BLOSC)
    return EncodedRows(tuple(data.shape), [blosc.encode(row) for row in data])


def blosc_codec(config: dict) -> numcodecs.Blosc:
    """numcodecs' Blosc from a Zarr v3 blosc configuration: the codec zarr itself would use."""
    return numcodecs.Blosc(
        cname=config["cname"], clevel=config["clevel"], shuffle=_BLOSC_SHUFFLE[config["shuffle"]],
        blocksize=config.get("blocksize", 0), typesize=config.get("typesize", 4),
    )  # fmt: skip


def write_shard(
    path: Path, arrays: dict[str, np.ndarray | EncodedRows], attrs: dict | None = None, storage: str = "zarr"
) -> None:
    """Write `arrays` (sensor -> (N, ...), or its `EncodedRows`) and `attrs` as one shard, atomically.

    The shard is built under a temporary name beside `path` and renamed into
    place, so an interrupted write never leaves a half shard under `path`.
    """
    path = Path(path)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        if storage == "zarr":
            _write_zarr(tmp, arrays, attrs or {})
        elif storage == "hdf5":
            _write_hdf5(tmp, arrays, attrs or {})
        else:
            raise ValueError(f"unknown storage {storage!r}; use one of {STORAGES}")
        remove_shard(path)  # a stale shard from an older run: replace it whole
        os.replace(tmp, path)
    except BaseException:
        remove_shard(tmp)
        raise


def write_zarr_shard(path: Path, arrays: dict[str, np.ndarray], attrs: dict | None = None) -> None:
    """`write_shard` with the default storage, Zarr."""
    write_shard(path, arrays, attrs, "zarr")


def remove_shard(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _write_zarr(path: Path, arrays: dict[str, np.ndarray | EncodedRows], attrs: dict) -> None:
    """A Zarr v3 group of sharded arrays, written without zarr-python.

    Its metadata and shard files are what zarr-python writes (tests create the
    same arrays with zarr-python and compare, and read ours back with it), at a
    fraction of the cost: zarr-python goes through asyncio and re-encodes the
    records with the pure-Python JSON encoder, 14 ms of every 64-sample shard.
    """
    path.mkdir(parents=True)
    (path / "zarr.json").write_text(readable_json({"attributes": attrs, "zarr_format": 3, "node_type": "group"}))
    for name, data in arrays.items():
        encoded = data if isinstance(data, EncodedRows) else encode_rows(data)
        array_dir = path / name
        array_dir.mkdir()
        (array_dir / "zarr.json").write_text(json.dumps(zarr_array_metadata(encoded.shape), indent=2))
        _write_shard_file(array_dir / "c" / "/".join("0" * len(encoded.shape)), encoded)


def zarr_array_metadata(shape: tuple[int, ...]) -> dict:
    """The zarr.json of a SpaceNit array of `shape` (N, ...): float32, one sample per chunk
    (a sample is one read), all chunks in one shard file, CHUNK_BLOSC, sentinel fill."""
    little_endian = {"name": "bytes", "configuration": {"endian": "little"}}
    sharding = {
        "chunk_shape": [1, *shape[1:]],
        "codecs": [little_endian, {"name": "blosc", "configuration": dict(CHUNK_BLOSC)}],
        "index_codecs": [little_endian, {"name": "crc32c"}],
        "index_location": "end",
    }
    return {
        "shape": list(shape),
        "data_type": "float32",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(shape)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": SENTINEL,
        "codecs": [{"name": "sharding_indexed", "configuration": sharding}],
        "attributes": {},
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }


def _write_shard_file(path: Path, encoded: EncodedRows) -> None:
    """Write the single shard file of an array: the mirror of `_ZarrSampleReader`.

    The layout is the spec's: the blosc-compressed chunks back to back, then one
    little-endian (offset, nbytes) uint64 pair per chunk and the CRC32C of those pairs.
    """
    sizes = np.array([len(c) for c in encoded.chunks], dtype="<u8")
    index = np.stack([np.cumsum(sizes) - sizes, sizes], axis=1).astype("<u8").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for chunk in encoded.chunks:
            f.write(chunk)
        f.write(index)
        f.write(google_crc32c.value(index).to_bytes(4, "little"))


def _write_hdf5(path: Path, arrays: dict[str, np.ndarray | EncodedRows], attrs: dict) -> None:
    """One HDF5 file: a dataset per sensor, declared with the blosc filter, whose chunks
    (one sample each) are written already compressed (`write_direct_chunk`): the same
    bytes as Zarr's, compressed wherever the Zarr ones are, and any HDF5 reader with
    the blosc filter (hdf5plugin) decodes them."""
    with h5py.File(path, "w") as f:
        f.attrs[HDF5_ATTRS] = json.dumps(attrs)
        for name, data in arrays.items():
            encoded = data if isinstance(data, EncodedRows) else encode_rows(data)
            dataset = f.create_dataset(
                name,
                shape=encoded.shape,
                dtype="<f4",
                chunks=(1, *encoded.shape[1:]),
                fillvalue=SENTINEL,
                **hdf5plugin.Blosc(cname=CHUNK_BLOSC["cname"], clevel=CHUNK_BLOSC["clevel"], shuffle=_BLOSC_SHUFFLE[CHUNK_BLOSC["shuffle"]]),
            )
            origin = (0,) * (len(encoded.shape) - 1)
            for row, chunk in enumerate(encoded.chunks):
                dataset.id.write_direct_chunk((row, *origin), chunk)


@dataclass(frozen=True)
class _ShardLayout:
    """Where the one shard file of an array lies and how its chunks are compressed.

    Only for arrays exactly as `_write_zarr` lays them out: one shard holding
    the whole array, one chunk per sample, bytes (little endian) then blosc,
    the index at the end with a CRC32C. `of` checks the metadata and returns
    None for anything else, which zarr-python then reads and writes itself.
    """

    path: Path
    shape: tuple[int, ...]
    fill_value: float
    blosc: dict

    @classmethod
    def of(cls, array: zarr.Array, array_dir: Path) -> _ShardLayout | None:
        meta = array.metadata.to_dict()
        (codec,) = meta["codecs"] if len(meta["codecs"]) == 1 else (None,)
        expected = {
            "chunk_shape": (1, *array.shape[1:]),
            "index_location": "end",
            "index_codecs": ({"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}),
        }
        if (
            codec is None or codec["name"] != "sharding_indexed" or array.dtype != np.float32
            or tuple(meta["chunk_grid"]["configuration"]["chunk_shape"]) != tuple(array.shape)
            or any(codec["configuration"].get(k) != v for k, v in expected.items())
            or [c["name"] for c in codec["configuration"]["codecs"]] != ["bytes", "blosc"]
            or codec["configuration"]["codecs"][0]["configuration"]["endian"] != "little"
        ):  # fmt: skip
            return None
        key = array.metadata.chunk_key_encoding.encode_chunk_key((0,) * array.ndim)
        blosc = codec["configuration"]["codecs"][1]["configuration"]
        return cls(array_dir / key, tuple(array.shape), float(meta["fill_value"]), dict(blosc))



class _ZarrSampleReader:
    """Reads one sample of a sharded Zarr v3 array straight from its shard file.

    zarr-python reads one chunk of a shard through several asyncio and thread
    hand-offs (shard index, chunk bytes, decoding): about 6x the CPU of HDF5 per
    sample, which a DataLoader pays on every item. The Zarr v3 sharding spec makes
    the direct read simple (`_ShardLayout`): this reader loads the shard index
    once and then reads and decodes a chunk with one `pread` and one blosc call.
    """

    def __init__(self, layout: _ShardLayout) -> None:
        path, shape = layout.path, layout.shape
        self._path, self._shape, self._fill_value = path, shape, layout.fill_value
        self._fd = os.open(path, os.O_RDONLY)
        index_size = shape[0] * 16 + 4
        tail = os.pread(self._fd, index_size, os.fstat(self._fd).st_size - index_size)
        if len(tail) != index_size or google_crc32c.value(tail[:-4]) != int.from_bytes(tail[-4:], "little"):
            os.close(self._fd)
            raise ValueError(f"the shard index of {path} is damaged (CRC32C mismatch)")
        self._index = np.frombuffer(tail[:-4], dtype="<u8").reshape(shape[0], 2)
        self._blosc = blosc_codec(layout.blosc)

    @classmethod
    def for_array(cls, array: zarr.Array, array_dir: Path) -> _ZarrSampleReader | None:
        """A reader for `array` if it is laid out as `_write_zarr` writes it, else None."""
        layout = _ShardLayout.of(array, array_dir)
        return None if layout is None else cls(layout)

    def read(self, row: int, out: np.ndarray | None = None) -> np.ndarray:
        """One sample; decoded straight into `out` (C-contiguous float32 of its shape) when given."""
        if out is None:
            out = np.empty(self._shape[1:], dtype=np.float32)
        offset, nbytes = (int(v) for v in self._index[row])
        if offset == nbytes == 2**64 - 1:  # a chunk never written: all fill value
            out.fill(self._fill_value)
            return out
        raw = os.pread(self._fd, nbytes, offset)
        if len(raw) != nbytes:
            raise ValueError(f"sample {row} of {self._path} is damaged (its chunk is cut short)")
        return _decode_sample(self._blosc, raw, out, f"sample {row} of {self._path}")

    def close(self) -> None:
        os.close(self._fd)


def _decode_sample(blosc: numcodecs.Blosc, raw: bytes, out: np.ndarray, what: str) -> np.ndarray:
    """Decode one blosc chunk into `out`, refusing one that would not fill it exactly."""
    # Bytes 4-8 of a blosc chunk's header: its decoded size.
    if len(raw) < 16 or int.from_bytes(raw[4:8], "little") != out.nbytes:
        raise ValueError(f"{what} is damaged (its chunk does not decode to {out.shape})")
    blosc.decode(raw, out=out)
    return out


#: HDF5's registered id of the blosc filter (hdf5plugin.Blosc).
HDF5_BLOSC_FILTER = 32001


class _Hdf5SampleReader:
    """Reads one sample of an HDF5 array written by SpaceNit: its raw chunk, decoded here.

    h5py serializes every call under one lock, decompression included, so threads
    reading one file wait for each other. Reading the compressed chunk through h5py
    (`read_direct_chunk`, a fraction of the work) and decoding it with blosc here
    (which lets go of the GIL) lets `stats`' threads and a loader's decompress side by side.
    """

    def __init__(self, dataset: h5py.Dataset) -> None:
        self._dataset, self._shape = dataset, tuple(dataset.shape)
        self._name = f"{dataset.file.filename}:{dataset.name}"
        self._blosc = numcodecs.Blosc()  # decoding reads the settings from each chunk's header

    @classmethod
    def for_dataset(cls, dataset: h5py.Dataset) -> _Hdf5SampleReader | None:
        """A reader for `dataset` if it is laid out as `_write_hdf5` writes it, else None (h5py reads it)."""
        plist = dataset.id.get_create_plist()
        ours = (
            dataset.dtype == np.dtype("<f4") and dataset.chunks == (1, *dataset.shape[1:])
            and plist.get_nfilters() == 1 and plist.get_filter(0)[0] == HDF5_BLOSC_FILTER
        )  # fmt: skip
        return cls(dataset) if ours else None

    def read(self, row: int, out: np.ndarray | None = None) -> np.ndarray:
        """One sample; decoded straight into `out` (C-contiguous float32 of its shape) when given."""
        if out is None:
            out = np.empty(self._shape[1:], dtype=np.float32)
        try:
            skipped_filters, raw = self._dataset.id.read_direct_chunk((row,) + (0,) * (len(self._shape) - 1))
        except (KeyError, OSError, ValueError):  # a chunk never written (or out of range): h5py knows
            out[...] = self._dataset[row]
            return out
        if skipped_filters:  # HDF5 stored this chunk uncompressed
            out[...] = np.frombuffer(raw, dtype="<f4").reshape(out.shape)
            return out
        return _decode_sample(self._blosc, raw, out, f"sample {row} of {self._name}")

    def close(self) -> None:
        pass


class Shard:
    """One open shard: its arrays by sensor, and its attributes."""

    def __init__(self, path: Path, storage: str) -> None:
        self.path = Path(path)
        self.storage = storage
        if storage == "zarr":
            self._handle = zarr.open_group(store=str(path), mode="r")
        elif storage == "hdf5":
            self._handle = h5py.File(path, "r")
        else:
            raise ValueError(f"unknown storage {storage!r}; use one of {STORAGES}")
        self._arrays: dict = {}
        self._sample_readers: dict[str, _ZarrSampleReader | _Hdf5SampleReader | None] = {}
        # Threads may read one shard together (stats reads ahead): what is opened lazily
        # is opened once, under this lock.
        self._opening = threading.Lock()

    @property
    def attrs(self) -> dict:
        if self.storage == "zarr":
            return self._handle.attrs.asdict()
        return json.loads(self._handle.attrs[HDF5_ATTRS])

    def _array(self, sensor: str):
        with self._opening:
            if sensor not in self._arrays:
                self._arrays[sensor] = self._handle[sensor]
            return self._arrays[sensor]

    def shape(self, sensor: str) -> tuple[int, ...]:
        """Shape of one sensor's array: (N, T, C, H, W) or (N, T, C)."""
        return tuple(self._array(sensor).shape)

    def _sample_reader(self, sensor: str) -> _ZarrSampleReader | _Hdf5SampleReader | None:
        array = self._array(sensor)
        with self._opening:
            if sensor not in self._sample_readers:
                if self.storage == "zarr":
                    self._sample_readers[sensor] = _ZarrSampleReader.for_array(array, self.path / sensor)
                else:
                    self._sample_readers[sensor] = _Hdf5SampleReader.for_dataset(array)
            return self._sample_readers[sensor]

    def read(self, sensor: str, rows: int | slice | Sequence[int] = slice(None)) -> np.ndarray:
        """Rows of one sensor's array: one sample `(T, ...)`, or `(n, T, ...)` for a slice or list."""
        if reader := self._sample_reader(sensor):
            if isinstance(rows, int):
                return reader.read(rows)
            # Row by row into one array: faster than zarr's or h5py's own read of the same
            # rows, and it holds the GIL and h5py's lock only briefly (blosc releases both).
            rows = range(self.shape(sensor)[0])[rows] if isinstance(rows, slice) else rows
            out = np.empty((len(rows), *self.shape(sensor)[1:]), dtype=np.float32)
            for i, row in enumerate(rows):
                reader.read(row, out[i])
            return out
        array = self._array(sensor)
        if isinstance(rows, int | slice):
            return np.asarray(array[rows])
        rows = list(rows)  # increasing row numbers
        if self.storage == "zarr":
            return np.asarray(array.get_orthogonal_selection((rows,)))
        return np.asarray(array[rows])

    def close(self) -> None:
        """Close the files; closing twice is harmless."""
        with self._opening:
            readers, self._sample_readers = self._sample_readers, {}
        for reader in readers.values():
            if reader is not None:
                reader.close()
        if self.storage == "hdf5":
            self._handle.close()


def read_shard_attrs(path: Path, storage: str) -> dict | None:
    """The attributes of the shard at `path`; None when there is none or it is unreadable."""
    if not Path(path).exists():
        return None
    try:
        shard = Shard(path, storage)
        try:
            return shard.attrs
        finally:
            shard.close()
    except Exception:  # leftovers of any kind are simply redone
        return None


@dataclass
class Sample:
    """One sample as stored: raw values, sentinel where missing."""

    record: SampleRecord
    #: sensor -> (T, C, H, W) float32 for spatial sensors, (T, C) otherwise.
    data: dict[str, np.ndarray]

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def present(self) -> dict[str, np.ndarray]:
        """sensor -> (T,) bool: which timesteps hold data (the others are all sentinel)."""
        return {name: np.asarray(mask, dtype=bool) for name, mask in self.record.present.items()}


class DatasetReader:
    """Random access to the samples of a converted dataset, Zarr or HDF5.

    Opens shards lazily and keeps them open; safe to use from DataLoader
    workers: a forked process opens its own handles.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.info: DatasetInfo = load_dataset_info(self.root)
        self._open: dict[str, Shard] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.info.samples)

    @property
    def records(self) -> list[SampleRecord]:
        return self.info.samples

    @property
    def storage(self) -> str:
        return self.info.storage

    def shard(self, name: str) -> Shard:
        """The open shard `name` (a path relative to the root, as in the records)."""
        if os.getpid() != self._pid:  # forked: HDF5 handles must not be shared across processes
            self._open, self._pid = {}, os.getpid()
        shard = self._open.get(name)
        if shard is None:
            path = (self.root / name).resolve()
            if not path.is_relative_to(self.root.resolve()):
                raise ValueError(f"shard path {name!r} in {self.root}/dataset.json escapes the dataset root")
            shard = self._open[name] = Shard(path, self.info.storage)
        return shard

    def shards(self) -> dict[str, list[int]]:
        """Shard name -> indexes of its samples, in dataset order."""
        out: dict[str, list[int]] = {}
        for i, record in enumerate(self.info.samples):
            out.setdefault(record.shard, []).append(i)
        return out

    def __getitem__(self, index: int) -> Sample:
        record = self.info.samples[index]
        shard = self.shard(record.shard)
        data = {name: shard.read(name, record.row) for name in self.info.sensors}
        return Sample(record=record, data=data)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def close(self) -> None:
        for shard in self._open.values():
            shard.close()
        self._open.clear()
