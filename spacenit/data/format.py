"""The SpaceNit dataset on disk: `dataset.json` plus shards (see docs/format.md).

`dataset.json` is the index: format version, shard storage (Zarr or HDF5),
sensors (bands, groups, GSD), the grids each sensor is stored on, the
footprint (tile size at the reference GSD), and one record per sample (id,
shard, row, CRS, bounds, dates, presence mask, label, split). Every reader
calls `load_dataset_info`, which checks the format version before anything
else is read.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

from spacenit.sensors import Grid, SensorSpec, metres

FORMAT_NAME = "spacenit-dataset"
#: Version 3: every band group on its own grid at its own GSD (one array per sensor and grid),
#: a checksum on every chunk, optional per-sample label rasters. Version 2 held every band on
#: one grid; its datasets are refused with a message saying how to convert them again.
FORMAT_VERSION = 3
DATASET_JSON = "dataset.json"
#: Shard storages a dataset may use (`storage` in dataset.json).
STORAGES = ("zarr", "hdf5")
#: How bands are laid out: each at its native GSD, or all resampled onto the reference grid.
LAYOUTS = ("native", "one_grid")
#: The shard array holding per-sample label rasters (dense tasks); not a sensor.
LABEL_RASTER = "label_raster"


class DatasetFormatError(ValueError):
    """A dataset directory that is missing, unreadable or of another format version."""


@dataclass
class SampleRecord:
    """Where one sample lives and what is known about it."""

    id: str
    shard: str  # shard path relative to the dataset root
    row: int  # position of the sample inside its shard
    crs: str | None = None  # e.g. "EPSG:32632"
    bounds: tuple[float, float, float, float] | None = None  # left, bottom, right, top in `crs`
    #: sensor -> one ISO date per timestep; "" where the date is unknown or the timestep missing.
    dates: dict[str, list[str]] = field(default_factory=dict)
    #: sensor -> one flag per timestep: True where an input file was read, False where the
    #: timestep (or the whole sensor) is missing and its values are all sentinel.
    present: dict[str, list[bool]] = field(default_factory=dict)
    label: str | None = None
    split: str | None = None
    #: Multi-label samples (BigEarthNet-style): every class that applies, possibly none; `label` is then None.
    labels: list[str] | None = None
    #: Whether the sample has a label raster (dense tasks); without one its labels read as ignored.
    label_raster: bool = False

    def to_dict(self) -> dict:
        """The record as dataset.json holds it (`asdict` without its deep copy: 10x faster)."""
        return {f: getattr(self, f) for f in _RECORD_FIELDS}

    @classmethod
    def from_dict(cls, d: dict) -> SampleRecord:
        bounds = tuple(d["bounds"]) if d.get("bounds") is not None else None
        return cls(
            id=d["id"], shard=d["shard"], row=int(d["row"]), crs=d.get("crs"), bounds=bounds,
            dates={k: list(v) for k, v in (d.get("dates") or {}).items()},
            present={k: [bool(x) for x in v] for k, v in (d.get("present") or {}).items()},
            label=d.get("label"), split=d.get("split"),
            labels=list(d["labels"]) if d.get("labels") is not None else None,
            label_raster=bool(d.get("label_raster", False)),
        )  # fmt: skip


_RECORD_FIELDS = tuple(f.name for f in fields(SampleRecord))


@dataclass(frozen=True)
class LabelRasterSpec:
    """Per-pixel labels of a dense task, stored per sample on their own grid over the footprint."""

    gsd_m: float
    #: The value in the input rasters that means "no label"; stored as the sentinel, read as IGNORE.
    ignore_value: float = 255.0
    #: Class names by class value (index), when known.
    classes: list[str] | None = None

    def to_dict(self) -> dict:
        return {"gsd_m": self.gsd_m, "ignore_value": self.ignore_value, "classes": self.classes}

    @classmethod
    def from_dict(cls, d: dict) -> LabelRasterSpec:
        return cls(float(d["gsd_m"]), float(d.get("ignore_value", 255.0)), d.get("classes"))


@dataclass
class DatasetInfo:
    """The parsed `dataset.json`.

    A sample's footprint is a square of `tile_size_px` pixels of `gsd_m` metres (the
    reference grid); each sensor is stored on its `grids`, every grid over the whole
    footprint at its own pixel size, so a grid has footprint / grid.gsd_m pixels per side
    (always whole: `convert` picks footprints that make it so).
    """

    sensors: dict[str, SensorSpec]
    tile_size_px: int
    gsd_m: float
    #: sensor -> T, the number of timesteps stored per sample (missing ones are sentinel).
    num_timesteps: dict[str, int]
    samples: list[SampleRecord]
    #: sensor -> the grids its bands are stored on (default: the sensor's native grids).
    grids: dict[str, tuple[Grid, ...]] = field(default_factory=dict)
    storage: str = "zarr"
    layout: str = "native"
    label_raster: LabelRasterSpec | None = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        for name, spec in self.sensors.items():
            if name not in self.grids:
                self.grids[name] = spec.native_grids()
        for name, grids in self.grids.items():
            for grid in grids:
                if self.sensors[name].spatial:
                    self.grid_size_px(grid)  # whole pixels, or a clear error

    @property
    def footprint_m(self) -> float:
        """Side of every sample's square footprint, in metres of its CRS."""
        return self.tile_size_px * self.gsd_m

    def grid_size_px(self, grid: Grid | float) -> int:
        """Pixels per side of a grid (or of a pixel size) over the footprint."""
        gsd = grid.gsd_m if isinstance(grid, Grid) else float(grid)
        size = metres(self.footprint_m) / metres(gsd)
        if size.denominator != 1:
            raise DatasetFormatError(
                f"a {self.footprint_m:g} m footprint is not a whole number of {gsd:g} m pixels; "
                "dataset.json is inconsistent (re-run `spacenit convert`)"
            )
        return int(size)

    def grid(self, sensor: str, name: str) -> Grid:
        for grid in self.grids[sensor]:
            if grid.name == name:
                return grid
        raise KeyError(f"sensor {sensor!r} has no grid {name!r}; its grids are {[g.name for g in self.grids[sensor]]}")

    def array_names(self) -> list[tuple[str, str]]:
        """(sensor, grid) of every array a shard holds, in dataset order."""
        return [(sensor, grid.name) for sensor in self.sensors for grid in self.grids[sensor]]

    @property
    def classes(self) -> list[str]:
        single = {s.label for s in self.samples if s.label is not None}
        return sorted(single.union(*(s.labels for s in self.samples if s.labels is not None)))

    def to_dict(self) -> dict:
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "storage": self.storage,
            "layout": self.layout,
            "tile_size_px": self.tile_size_px,
            "gsd_m": self.gsd_m,
            "num_timesteps": self.num_timesteps,
            "sensors": {name: spec.to_dict() for name, spec in self.sensors.items()},
            "grids": {name: [g.to_dict() for g in grids] for name, grids in self.grids.items()},
            "label_raster": self.label_raster.to_dict() if self.label_raster else None,
            "num_samples": len(self.samples),
            "classes": self.classes,
            "samples": [s.to_dict() for s in self.samples],
        }

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "dataset.json") -> DatasetInfo:
        if d.get("format") != FORMAT_NAME:
            raise DatasetFormatError(f"{source} is not a SpaceNit dataset index (format={d.get('format')!r})")
        version = d.get("format_version")
        if version == 2:
            raise DatasetFormatError(
                f"{source} is format version 2 (every band upsampled onto one grid, chunks without "
                f"checksums); this SpaceNit reads version {FORMAT_VERSION}. Convert the GeoTIFFs again "
                "with `spacenit convert INPUT_DIR OUTPUT_DIR` (add `--one-grid` for the old one-grid layout)"
            )
        if version != FORMAT_VERSION:
            raise DatasetFormatError(
                f"{source} has format version {version}, this SpaceNit reads version {FORMAT_VERSION}; "
                "re-run `spacenit convert` with this version, or install the SpaceNit that wrote it"
            )
        storage = d.get("storage")
        if storage not in STORAGES:
            raise DatasetFormatError(f"{source} names the shard storage {storage!r}; readers know {STORAGES}")
        try:
            sensors = {name: SensorSpec.from_dict(s) for name, s in d["sensors"].items()}
            grids = {name: tuple(Grid.from_dict(g) for g in gs) for name, gs in d["grids"].items()}
            for name, spec in sensors.items():
                stored = sorted(b for g in grids[name] for b in g.bands)
                if stored != sorted(spec.bands):
                    raise ValueError(f"the grids of {name!r} hold bands {stored}, the sensor has {sorted(spec.bands)}")
            label_raster = d.get("label_raster")
            return cls(
                sensors=sensors,
                tile_size_px=int(d["tile_size_px"]),
                gsd_m=float(d["gsd_m"]),
                num_timesteps={k: int(v) for k, v in d["num_timesteps"].items()},
                samples=[SampleRecord.from_dict(s) for s in d["samples"]],
                grids=grids,
                storage=storage,
                layout=d.get("layout", "native"),
                label_raster=LabelRasterSpec.from_dict(label_raster) if label_raster else None,
                format_version=version,
            )
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, DatasetFormatError):
                raise DatasetFormatError(f"{source}: {e}") from None
            raise DatasetFormatError(f"{source} is incomplete or malformed ({e!r}); re-run `spacenit convert`") from None


def write_json_atomic(path: Path, payload: dict | list) -> None:
    """Write JSON so that readers see either the old file or the whole new one.

    The file gets the mode any new file gets (0o666 less the umask), not mkstemp's 0600:
    other users of a shared volume read datasets and stats.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(readable_json(payload))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def readable_json(value, depth: int = 3, indent: str = "") -> str:
    """JSON laid out for people, written fast: objects nested `depth` deep get a line per
    key, lists of objects or lists a line per element, and everything below that is
    one line from json's C encoder. (`json.dump(indent=...)` runs the pure-Python
    encoder: 30 ms for a 216-sample dataset.json, minutes for a million samples.)
    """
    inner = indent + " "
    if isinstance(value, dict) and value and depth > 0:
        lines = [f"{inner}{_json_key(k)}: {readable_json(v, depth - 1, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(lines) + f"\n{indent}}}"
    if isinstance(value, list) and value and depth > 0 and all(isinstance(v, dict | list) for v in value):
        return "[\n" + ",\n".join(inner + json.dumps(v) for v in value) + f"\n{indent}]"
    return json.dumps(value)


def _json_key(key) -> str:
    """An object key as json.dumps writes it: a string as is, 1 as "1", True as "true"."""
    return json.dumps(key if isinstance(key, str) else json.dumps(key))


@contextlib.contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; on success it replaces `path` whole.

    Readers see the old directory or the complete new one, never a half-written one;
    on any error the temporary directory is removed and `path` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


#: The lock file a writer of a dataset directory holds (convert, merge, stats).
LOCK_FILE = ".spacenit.lock"


class DatasetLockedError(RuntimeError):
    """Another process is writing the dataset directory."""


@contextlib.contextmanager
def dataset_lock(root: Path, what: str, *, required: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on the dataset directory `root` while `what` writes it.

    A POSIX record lock (`fcntl.lockf`) on `root/.spacenit.lock`: the kernel drops it
    when the process ends however it ends, so a killed writer never leaves a stale
    lock, and NFS (v4, or v3 with lockd) carries it between machines sharing the
    volume. A second writer fails at once, naming the directory. With `required`
    false, a directory where the lock file cannot be made (read-only: nothing can be
    writing it) is used without one.
    """
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        if required or e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        yield
        return
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise DatasetLockedError(
                f"{root} is being written by {holder}; wait for it to finish (or stop it) before running {what} "
                "on the same directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{what} (pid {os.getpid()} on {os.uname().nodename})".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def save_dataset_info(root: Path, info: DatasetInfo) -> Path:
    path = Path(root) / DATASET_JSON
    write_json_atomic(path, info.to_dict())
    return path


def load_dataset_info(root: str | Path) -> DatasetInfo:
    root = Path(root)
    path = root / DATASET_JSON
    if not root.is_dir():
        raise DatasetFormatError(f"dataset directory {root} does not exist; create it with `spacenit convert`")
    if not path.is_file():
        raise DatasetFormatError(
            f"{root} has no {DATASET_JSON}: it is not a SpaceNit dataset, or its conversion "
            "did not finish (re-run `spacenit convert`, which resumes)"
        )
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{path} is not valid JSON ({e}); re-run `spacenit convert`") from None
    return DatasetInfo.from_dict(payload, source=str(path))
