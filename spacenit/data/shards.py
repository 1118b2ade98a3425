"""Shard storage: write a shard atomically, read samples back, from Zarr v3 or HDF5.

A shard holds a group of samples. Inside it, each (sensor, grid) is one float32
array named `<sensor>/<grid>`: `(N, T, C_g, H_g, W_g)` for a spatial sensor's
grid (its bands at one pixel size), `(N, T, C)` for a non-spatial sensor;
`label_raster` `(N, H, W)` holds dense labels. Arrays are chunked one sample per
chunk so a sample is one read, and every chunk carries a checksum of its
compressed bytes (CRC32C in Zarr, Fletcher-32 in HDF5). JSON attributes hold the
shard's records, failures and input fingerprint. Two storages hold the same
content (docs/format.md):

* ``zarr`` (default): a Zarr v3 group per shard; the sharding codec packs the
  chunks of an array into one file, so a dataset is a handful of files.
* ``hdf5``: one HDF5 file per shard, the same blosc filter (hdf5plugin), then
  HDF5's Fletcher-32 filter.

`DatasetReader` serves both; it dispatches on `dataset.json`'s `storage`. Every
read goes through it (`DatasetReader.shard` refuses paths outside the dataset
and rows outside the shard), and every damaged chunk is a `ShardError` naming
the file, the shard and the sample.
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

from spacenit.data.checksums import crc32c, fletcher32
from spacenit.data.format import (
    LABEL_RASTER,
    STORAGES,
    DatasetFormatError,
    DatasetInfo,
    SampleRecord,
    load_dataset_info,
    readable_json,
)
from spacenit.sensors import SENTINEL, Grid

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
#: Label rasters read back as integers; pixels without a label (the sentinel on disk) read as this.
IGNORE = -1


class ShardError(DatasetFormatError):
    """A shard, or one of its chunks, that cannot be read; the message names the file and sample."""


def array_key(sensor: str, grid: str) -> str:
    """The name of a (sensor, grid) array inside a shard: "sentinel2_l2a/20m"."""
    return f"{sensor}/{grid}"


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
        for group in reversed(array_dir.relative_to(path).parents[:-1]):  # "sentinel2_l2a" of "sentinel2_l2a/10m"
            if not (path / group).is_dir():
                (path / group).mkdir()
                (path / group / "zarr.json").write_text(json.dumps(_ZARR_GROUP, indent=2))
        array_dir.mkdir()
        (array_dir / "zarr.json").write_text(json.dumps(zarr_array_metadata(encoded.shape), indent=2))
        _write_shard_file(array_dir / "c" / "/".join("0" * len(encoded.shape)), encoded)


#: The zarr.json of a group without attributes (a sensor's group of grids), as zarr-python writes it.
_ZARR_GROUP = {"attributes": {}, "zarr_format": 3, "node_type": "group"}


def zarr_array_metadata(shape: tuple[int, ...]) -> dict:
    """The zarr.json of a SpaceNit array of `shape` (N, ...): float32, one sample per chunk
    (a sample is one read), all chunks in one shard file, CHUNK_BLOSC then a CRC32C of
    every chunk, sentinel fill."""
    little_endian = {"name": "bytes", "configuration": {"endian": "little"}}
    sharding = {
        "chunk_shape": [1, *shape[1:]],
        "codecs": [little_endian, {"name": "blosc", "configuration": dict(CHUNK_BLOSC)}, {"name": "crc32c"}],
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

    The layout is the spec's: the chunks back to back, each its blosc bytes then
    their CRC32C, then one little-endian (offset, nbytes) uint64 pair per chunk and
    the CRC32C of those pairs.
    """
    sizes = np.array([len(c) + 4 for c in encoded.chunks], dtype="<u8")
    index = np.stack([np.cumsum(sizes) - sizes, sizes], axis=1).astype("<u8").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for chunk in encoded.chunks:
            f.write(chunk)
            f.write(crc32c(chunk))
        f.write(index)
        f.write(crc32c(index))


def _write_hdf5(path: Path, arrays: dict[str, np.ndarray | EncodedRows], attrs: dict) -> None:
    """One HDF5 file: a dataset per (sensor, grid), declared with the blosc filter and then
    HDF5's Fletcher-32, whose chunks (one sample each) are written already compressed and
    checksummed (`write_direct_chunk`): the blosc bytes are Zarr's, compressed wherever
    the Zarr ones are, and any HDF5 reader with the blosc filter (hdf5plugin) decodes and
    verifies them."""
    blosc = hdf5plugin.Blosc(cname=CHUNK_BLOSC["cname"], clevel=CHUNK_BLOSC["clevel"],
                             shuffle=_BLOSC_SHUFFLE[CHUNK_BLOSC["shuffle"]])  # fmt: skip
    with h5py.File(path, "w") as f:
        f.attrs[HDF5_ATTRS] = json.dumps(attrs)
        for name, data in arrays.items():
            encoded = data if isinstance(data, EncodedRows) else encode_rows(data)
            dataset = f.create_dataset(
                name, shape=encoded.shape, dtype="<f4", chunks=(1, *encoded.shape[1:]), fillvalue=SENTINEL,
                fletcher32=True, **blosc,
            )  # fmt: skip
            origin = (0,) * (len(encoded.shape) - 1)
            for row, chunk in enumerate(encoded.chunks):
                dataset.id.write_direct_chunk((row, *origin), chunk + fletcher32(chunk))


@dataclass(frozen=True)
class _ShardLayout:
    """Where the one shard file of an array lies and how its chunks are compressed.

    Only for arrays exactly as `_write_zarr` lays them out: one shard holding the
    whole array, one chunk per sample, bytes (little endian) then blosc then
    crc32c, the index at the end with a CRC32C. `of` checks the metadata and
    returns None for anything else, which zarr-python then reads itself.
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
            or [c["name"] for c in codec["configuration"]["codecs"]] != ["bytes", "blosc", "crc32c"]
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
    once, then reads a chunk with one `pread`, checks its CRC32C and decodes it
    with one blosc call.
    """

    def __init__(self, layout: _ShardLayout) -> None:
        path, shape = layout.path, layout.shape
        self._path, self._shape, self._fill_value = path, shape, layout.fill_value
        self._fd = os.open(path, os.O_RDONLY)
        index_size = shape[0] * 16 + 4
        tail = os.pread(self._fd, index_size, max(os.fstat(self._fd).st_size - index_size, 0))
        if len(tail) != index_size or google_crc32c.value(tail[:-4]) != int.from_bytes(tail[-4:], "little"):
            os.close(self._fd)
            raise ShardError(f"the shard index of {path} is damaged (CRC32C mismatch)")
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
        what = f"row {row} of {self._path}"
        raw = os.pread(self._fd, nbytes, offset)
        if len(raw) != nbytes or nbytes < 4:
            raise ShardError(f"{what} is damaged (its chunk is cut short)")
        body = raw[:-4]
        if crc32c(body) != raw[-4:]:
            raise ShardError(f"{what} is damaged (CRC32C mismatch: the chunk's bytes changed since it was written)")
        return _decode_sample(self._blosc, body, out, what)

    def close(self) -> None:
        os.close(self._fd)


def _decode_sample(blosc: numcodecs.Blosc, raw: bytes, out: np.ndarray, what: str) -> np.ndarray:
    """Decode one blosc chunk into `out`, refusing one that would not fill it exactly."""
    # Bytes 4-8 of a blosc chunk's header: its decoded size.
    if len(raw) < 16 or int.from_bytes(raw[4:8], "little") != out.nbytes:
        raise ShardError(f"{what} is damaged (its chunk does not decode to {out.shape})")
    try:
        blosc.decode(raw, out=out)
    except (RuntimeError, ValueError) as e:
        raise ShardError(f"{what} is damaged (blosc cannot decode it: {e})") from None
    return out


#: HDF5's registered ids of the blosc filter (hdf5plugin.Blosc) and of Fletcher-32.
HDF5_BLOSC_FILTER = 32001
HDF5_FLETCHER32_FILTER = 3


class _Hdf5SampleReader:
    """Reads one sample of an HDF5 array written by SpaceNit: its raw chunk, checked and decoded here.

    h5py serializes every call under one lock, decompression included, so threads
    reading one file wait for each other. Reading the compressed chunk through h5py
    (`read_direct_chunk`, a fraction of the work), checking its Fletcher-32 and
    decoding it with blosc here (which lets go of the GIL) lets `stats`' threads and
    a loader's decompress side by side.
    """

    def __init__(self, dataset: h5py.Dataset) -> None:
        self._dataset, self._shape = dataset, tuple(dataset.shape)
        self._name = f"{dataset.file.filename}:{dataset.name}"
        self._blosc = numcodecs.Blosc()  # decoding reads the settings from each chunk's header

    @classmethod
    def for_dataset(cls, dataset: h5py.Dataset) -> _Hdf5SampleReader | None:
        """A reader for `dataset` if it is laid out as `_write_hdf5` writes it, else None (h5py reads it)."""
        plist = dataset.id.get_create_plist()
        filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
        ours = (
            dataset.dtype == np.dtype("<f4") and dataset.chunks == (1, *dataset.shape[1:])
            and filters == [HDF5_BLOSC_FILTER, HDF5_FLETCHER32_FILTER]
        )  # fmt: skip
        return cls(dataset) if ours else None

    def read(self, row: int, out: np.ndarray | None = None) -> np.ndarray:
        """One sample; decoded straight into `out` (C-contiguous float32 of its shape) when given."""
        if out is None:
            out = np.empty(self._shape[1:], dtype=np.float32)
        what = f"row {row} of {self._name}"
        try:
            skipped_filters, raw = self._dataset.id.read_direct_chunk((row,) + (0,) * (len(self._shape) - 1))
        except (KeyError, OSError, ValueError):  # a chunk never written (or out of range): h5py knows
            out[...] = _h5py_read(self._dataset, row, what)
            return out
        if skipped_filters:  # written by another writer, which skipped a filter: let HDF5 decode it
            out[...] = _h5py_read(self._dataset, row, what)
            return out
        body = raw[:-4]
        if len(raw) < 4 or fletcher32(body) != raw[-4:]:
            raise ShardError(f"{what} is damaged (Fletcher-32 mismatch: the chunk's bytes changed since it was written)")
        return _decode_sample(self._blosc, body, out, what)

    def close(self) -> None:
        pass


def _h5py_read(dataset: h5py.Dataset, rows, what: str) -> np.ndarray:
    """`dataset[rows]` through HDF5's own filters; a failed checksum or filter names the chunk."""
    try:
        return np.asarray(dataset[rows])
    except OSError as e:
        raise ShardError(f"{what} is damaged ({e})") from None


class Shard:
    """One open shard: its arrays by name (`array_key`), and its attributes."""

    def __init__(self, path: Path, storage: str) -> None:
        self.path = Path(path)
        self.storage = storage
        try:
            if storage == "zarr":
                self._handle = zarr.open_group(store=str(path), mode="r")
            elif storage == "hdf5":
                self._handle = h5py.File(path, "r")
            else:
                raise ValueError(f"unknown storage {storage!r}; use one of {STORAGES}")
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
            if not self.path.exists():
                raise ShardError(f"shard {path} is missing; re-run `spacenit convert`, which rewrites it") from None
            raise ShardError(f"shard {path} cannot be opened ({type(e).__name__}: {e}); its metadata is damaged: "
                             "re-run `spacenit convert`, which rewrites it") from None  # fmt: skip
        self._arrays: dict = {}
        self._sample_readers: dict[str, _ZarrSampleReader | _Hdf5SampleReader | None] = {}
        # Threads may read one shard together (stats reads ahead): what is opened lazily
        # is opened once, under this lock.
        self._opening = threading.Lock()

    @property
    def attrs(self) -> dict:
        try:
            if self.storage == "zarr":
                return self._handle.attrs.asdict()
            return json.loads(self._handle.attrs[HDF5_ATTRS])
        except (KeyError, OSError, ValueError) as e:
            raise ShardError(f"the attributes of shard {self.path} are damaged ({e}); re-run `spacenit convert`") from None

    def _array(self, name: str):
        with self._opening:
            if name not in self._arrays:
                try:
                    self._arrays[name] = self._handle[name]
                except (KeyError, OSError, ValueError, json.JSONDecodeError) as e:
                    where = f" ({self.path / name / 'zarr.json'})" if self.storage == "zarr" else ""
                    raise ShardError(f"shard {self.path} has no readable array {name!r}{where} ({type(e).__name__}: {e}); "
                                     "re-run `spacenit convert`") from None  # fmt: skip
            return self._arrays[name]

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of one array: (N, T, C, H, W), (N, T, C) or (N, H, W)."""
        return tuple(self._array(name).shape)

    def _sample_reader(self, name: str) -> _ZarrSampleReader | _Hdf5SampleReader | None:
        array = self._array(name)
        with self._opening:
            if name not in self._sample_readers:
                if self.storage == "zarr":
                    self._sample_readers[name] = _ZarrSampleReader.for_array(array, self.path / name)
                else:
                    self._sample_readers[name] = _Hdf5SampleReader.for_dataset(array)
            return self._sample_readers[name]

    def read(self, name: str, rows: int | slice | Sequence[int] = slice(None)) -> np.ndarray:
        """Rows of one array: one sample `(T, ...)`, or `(n, T, ...)` for a slice or list."""
        n = self.shape(name)[0]
        if isinstance(rows, int) and not 0 <= rows < n:
            raise ShardError(f"row {rows} is outside shard {self.path}, which holds {n} samples")
        if reader := self._sample_reader(name):
            if isinstance(rows, int):
                return reader.read(rows)
            # Row by row into one array: faster than zarr's or h5py's own read of the same
            # rows, and it holds the GIL and h5py's lock only briefly (blosc releases both).
            rows = range(n)[rows] if isinstance(rows, slice) else rows
            out = np.empty((len(rows), *self.shape(name)[1:]), dtype=np.float32)
            for i, row in enumerate(rows):
                reader.read(row, out[i])
            return out
        array = self._array(name)
        what = f"{name} of {self.path}"
        if self.storage == "hdf5":
            return _h5py_read(array, rows if isinstance(rows, int | slice) else list(rows), what)
        try:
            if isinstance(rows, int | slice):
                return np.asarray(array[rows])
            return np.asarray(array.get_orthogonal_selection((list(rows),)))
        except Exception as e:  # zarr's codec errors (a failed crc32c check, a blosc error) name no file
            raise ShardError(f"{what} is damaged ({type(e).__name__}: {e})") from None

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
    #: sensor -> Grid -> (T, C_g, H_g, W_g) float32 for a spatial sensor's grid, (T, C) otherwise.
    data: dict[str, dict[Grid, np.ndarray]]
    #: (H, W) int64 class values on the label raster's grid, IGNORE where unlabelled; None without one.
    label_raster: np.ndarray | None = None

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def present(self) -> dict[str, np.ndarray]:
        """sensor -> (T,) bool: which timesteps hold data (the others are all sentinel)."""
        return {name: np.asarray(mask, dtype=bool) for name, mask in self.record.present.items()}


def label_values(stored: np.ndarray) -> np.ndarray:
    """A stored label raster (float32, sentinel where unlabelled) as int64 classes, IGNORE where unlabelled."""
    return np.where(stored == SENTINEL, IGNORE, stored).astype(np.int64)


class DatasetReader:
    """Random access to the samples of a converted dataset, Zarr or HDF5.

    Opens shards lazily and keeps them open; safe to use from DataLoader
    workers: a forked process opens its own handles. Every shard access goes
    through `shard`, which refuses a path that leaves the dataset directory,
    and every read checks the record's row against the shard.
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

    def shard_path(self, name: str) -> Path:
        """The file of shard `name` (relative to the root, as records give it), refused outside the root."""
        path = (self.root / name).resolve()
        if Path(name).is_absolute() or not path.is_relative_to(self.root.resolve()):
            raise ShardError(f"shard path {name!r} in {self.root / 'dataset.json'} escapes the dataset root; "
                             "the index is damaged or was edited: re-run `spacenit convert`")  # fmt: skip
        return path

    def shard(self, name: str) -> Shard:
        """The open shard `name` (a path relative to the root, as in the records)."""
        if os.getpid() != self._pid:  # forked: HDF5 handles must not be shared across processes
            self._open, self._pid = {}, os.getpid()
        shard = self._open.get(name)
        if shard is None:
            shard = self._open[name] = Shard(self.shard_path(name), self.info.storage)
        return shard

    def shards(self) -> dict[str, list[int]]:
        """Shard name -> indexes of its samples, in dataset order."""
        out: dict[str, list[int]] = {}
        for i, record in enumerate(self.info.samples):
            out.setdefault(record.shard, []).append(i)
        return out

    def read_array(self, index: int, sensor: str, grid: str) -> np.ndarray:
        """One (sensor, grid) array of sample `index`: (T, C_g, H_g, W_g) or (T, C)."""
        record = self.info.samples[index]
        return self._read(record, array_key(sensor, grid))

    def _read(self, record: SampleRecord, name: str) -> np.ndarray:
        try:
            return self.shard(record.shard).read(name, record.row)
        except ShardError as e:
            raise ShardError(f"sample {record.id!r} (shard {record.shard}): {e}") from None

    def __getitem__(self, index: int) -> Sample:
        record = self.info.samples[index]
        data = {
            sensor: {grid: self._read(record, array_key(sensor, grid.name)) for grid in grids}
            for sensor, grids in self.info.grids.items()
        }
        labels = None
        if self.info.label_raster is not None and record.label_raster:
            labels = label_values(self._read(record, LABEL_RASTER))
        return Sample(record=record, data=data, label_raster=labels)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def close(self) -> None:
        for shard in self._open.values():
            shard.close()
        self._open.clear()
