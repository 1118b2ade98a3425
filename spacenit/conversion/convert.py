"""The `convert` stage: GeoTIFFs -> a SpaceNit dataset (shards + dataset.json).

Samples are converted in parallel by a process pool (each band read onto the
sample's footprint at its own resolution, see `geotiff.py`) and gathered, in
order, into shards of `samples_per_shard`, each written atomically (Zarr v3 or
HDF5). An interrupted run leaves only whole shards; a re-run skips every shard
whose inputs are unchanged and redoes the rest. A sample that fails
(unreadable file, wrong band count, no CRS, duplicate id...) is listed in
`convert_report.json` with its reason while every good sample is converted.
The output directory is locked while a run writes it.

Grids: each sensor's bands are stored at the resolution their files have
(`_probe_grids`: the first file that gives a band decides, snapped to the
registry's GSD within 2%), so Sentinel-2 band files come out as 10, 20 and
60 m grids and EuroSAT's all-10 m chips as one 10 m grid. The footprint is
`tile_size_px` pixels of the reference GSD (`gsd_m`, default: the finest
grid's) and must be a whole number of pixels of every grid. `one_grid=True`
resamples every band onto the reference grid instead (the layout of format
version 2, for comparison).

A sample is one tile, anchored at the top-left of its first raster. With
`tile_scenes`, a raster larger than one tile becomes one sample per tile of a
grid that covers it all (ids `<id>_r<row>_c<col>`); tiles without a single
valid pixel (a scene's nodata border) are skipped and counted, not failed.

`partition=(index, count)` converts only the samples whose position in the
sorted sample list is `index` modulo `count`, into a partial dataset that
`spacenit.conversion.merge.merge_datasets` combines with the others: the unit
a Kubeflow ParallelFor fans out.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import logging
import math
import os
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import TypeVar

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import CRSError, RasterioError
from tqdm import tqdm

from spacenit.conversion.discover import (
    Acquisition,
    RasterFile,
    SampleInput,
    discover,
    mark_duplicates,
)
from spacenit.conversion.geotiff import (
    GDAL_OPTIONS,
    GRID_TOLERANCE,
    MAX_RASTER_PIXELS,
    OpenRasters,
    PixelGrid,
    RasterReadError,
    StorageGrid,
    georeference,
    open_raster,
    pixel_size_m,
    read_acquisition,
    read_on_grid,
    reference_grid,
    scene_tiles,
    sparse_under,
)  # fmt: skip
from spacenit.data.format import (
    DATASET_JSON,
    LABEL_RASTER,
    STORAGES,
    DatasetInfo,
    LabelRasterSpec,
    SampleRecord,
    dataset_lock,
    save_dataset_info,
    write_json_atomic,
)
from spacenit.data.shards import (
    SHARD_SUFFIX,
    EncodedRows,
    array_key,
    encode_rows,
    read_shard_attrs,
    remove_shard,
    write_shard,
)
from spacenit.sensors import REGISTRY, SENTINEL, BandGroup, Grid, SensorSpec, grids_of, metres

log = logging.getLogger(__name__)

REPORT_JSON = "convert_report.json"
SHARDS_DIR = "shards"
#: Samples per task handed to a worker: amortizes the task's overhead (IPC, GDAL environment).
SAMPLES_PER_TASK = 8
#: Tasks a worker may run ahead of the shard writer, bounding memory.
TASKS_IN_FLIGHT_PER_WORKER = 2
#: Default cap on the tiles one scene may become with `tile_scenes` (`--max-tiles-per-scene`).
MAX_TILES_PER_SCENE = 20_000
#: The automatic tile side is at least this many reference pixels, rounded up to a multiple of
#: every grid's pixel and of PATCH_MULTIPLE_PX (Sentinel-2 at 10/20/60 m: 72 px).
AUTO_TILE_PX = 64
PATCH_MULTIPLE_PX = 8

T = TypeVar("T")
R = TypeVar("R")


class ConversionError(RuntimeError):
    """Nothing could be converted, or the options are invalid; the message says why."""


class EmptyTileError(RasterReadError):
    """Every pixel of a sample's tile is nodata: a failure for a chip, a skip for a scene's tile."""


@dataclass(frozen=True)
class ConvertOptions:
    #: Tile side in reference pixels; None: AUTO_TILE_PX rounded up to whole pixels of every grid and patches.
    tile_size_px: int | None = None
    #: Pixel size `tile_size_px` counts in; None: the finest grid of the dataset.
    gsd_m: float | None = None
    samples_per_shard: int = 64
    assume_crs: str | None = None
    storage: str = "zarr"
    tile_scenes: bool = False
    #: Resample every band onto the reference grid (format 2's layout) instead of its own.
    one_grid: bool = False
    max_raster_pixels: int = MAX_RASTER_PIXELS
    max_tiles_per_scene: int = MAX_TILES_PER_SCENE
    #: The value of label rasters that means "no label".
    label_ignore_value: float = 255.0


@dataclass
class Failure:
    sample_id: str
    path: str
    reason: str


@dataclass
class AbsentTimestep:
    """A date whose raster has no valid pixel under the sample's footprint: stored as missing."""

    sample_id: str
    sensor: str
    date: str
    path: str


@dataclass
class ConvertReport:
    output_dir: str
    num_samples: int
    num_shards: int
    shards_skipped: int
    failures: list[Failure] = field(default_factory=list)
    storage: str = "zarr"
    #: (index, count) when this is a partial dataset of a partitioned conversion.
    partition: tuple[int, int] | None = None
    #: Bytes of GeoTIFF input behind the converted samples.
    input_bytes: int = 0
    #: The partial datasets a merged dataset was made from.
    merged_from: list[str] = field(default_factory=list)
    #: With `tile_scenes`: tiles skipped because every pixel of theirs is nodata.
    empty_tiles: int = 0
    #: Dates stored as missing because their raster has no valid pixel under the footprint.
    absent_timesteps: list[AbsentTimestep] = field(default_factory=list)
    #: Sensors left out of the dataset because no converted sample has them.
    dropped_sensors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}

    @classmethod
    def from_dict(cls, d: dict) -> ConvertReport:
        d = {k: v for k, v in d.items() if k != "ok"}
        partition = tuple(d.pop("partition")) if d.get("partition") else None
        failures = [Failure(**f) for f in d.pop("failures", [])]
        absent = [AbsentTimestep(**a) for a in d.pop("absent_timesteps", [])]
        return cls(**d, failures=failures, partition=partition, absent_timesteps=absent)


def convert(
    input_dir: str | Path,
    output_dir: str | Path,
    *,
    layout: str = "auto",
    sensor: str = "sentinel2_l1c",
    tile_size_px: int | None = None,
    gsd_m: float | None = None,
    samples_per_shard: int = 64,
    assume_crs: str | None = None,
    workers: int = 1,
    progress: bool = True,
    manifest: str | Path | None = None,
    storage: str = "zarr",
    partition: tuple[int, int] | None = None,
    tile_scenes: bool = False,
    one_grid: bool = False,
    max_raster_pixels: int = MAX_RASTER_PIXELS,
    max_tiles_per_scene: int = MAX_TILES_PER_SCENE,
    label_ignore_value: float = 255.0,
) -> ConvertReport:
    """Convert the GeoTIFFs under `input_dir` (or listed in `manifest`) into a dataset at `output_dir`.

    Each band is stored at its own resolution (`one_grid`: all on the reference grid).
    With `tile_scenes`, a raster larger than one tile becomes one sample per tile.
    Returns a report; its `failures` list every input that was skipped and why.
    Raises ConversionError when no sample at all could be converted, and
    DatasetLockedError when another process is writing `output_dir`.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    options = ConvertOptions(tile_size_px, gsd_m, samples_per_shard, assume_crs, storage, tile_scenes, one_grid,
                             max_raster_pixels, max_tiles_per_scene, label_ignore_value)  # fmt: skip
    _check_options(options, workers, partition)
    samples = mark_duplicates(discover(input_dir, layout=layout, sensor=sensor, manifest=manifest))
    samples.sort(key=lambda s: (s.id, s.first_path()))
    if output_dir.exists() and not output_dir.is_dir():
        raise ConversionError(f"output {output_dir} is a file; give a directory for the dataset")
    with dataset_lock(output_dir, "spacenit convert"):
        return _convert_locked(samples, input_dir, output_dir, options, workers, partition, progress)


def _convert_locked(samples: list[SampleInput], input_dir: Path, output_dir: Path, options: ConvertOptions,
                    workers: int, partition: tuple[int, int] | None, progress: bool) -> ConvertReport:  # fmt: skip
    contents = _dataset_contents(samples, options)  # over all samples, so that every partition agrees
    options = replace(options, gsd_m=contents.reference_gsd_m, tile_size_px=contents.tile_size_px)
    # Until this run finishes, the directory is no dataset (readers say "re-run convert"), and
    # no report from an earlier run claims otherwise.
    (output_dir / DATASET_JSON).unlink(missing_ok=True)
    (output_dir / REPORT_JSON).unlink(missing_ok=True)
    selected = samples if partition is None else samples[partition[0] :: partition[1]]

    failures = [Failure(s.id, s.problem_path or s.first_path(), s.problem) for s in selected if s.problem]
    good = [s for s in selected if not s.problem]
    if options.tile_scenes:  # after partitioning: every tile of a scene lands in the scene's partition
        good, scene_failures = _tile_scenes(good, contents, options)
        failures += scene_failures
    plans = _plan_shards(good, output_dir / SHARDS_DIR, contents, options)
    finished = {plan.path: _finished_shard(plan) for plan in plans}
    todo = [plan for plan in plans if finished[plan.path] is None]
    results = [r for r in finished.values() if r is not None]

    bar = tqdm(total=sum(len(p.samples) for p in plans), desc="convert", unit="sample", disable=not progress)
    bar.update(sum(len(r.records) + len(r.failures) + r.empty_tiles for r in results))
    results += _convert_shards(todo, workers, bar)
    bar.close()

    records: list[SampleRecord] = []
    absent: list[AbsentTimestep] = []
    for result in sorted(results, key=lambda r: r.shard):
        records.extend(result.records)
        failures.extend(result.failures)
        absent.extend(result.absent_timesteps)
    info = DatasetInfo(
        sensors=contents.sensors, tile_size_px=contents.tile_size_px, gsd_m=contents.reference_gsd_m,
        num_timesteps=contents.num_timesteps, samples=records, grids=dict(contents.grids), storage=options.storage,
        layout="one_grid" if options.one_grid else "native", label_raster=contents.label_raster,
    )  # fmt: skip
    # A partial dataset keeps every sensor of the whole input, so that the parts merge; the
    # merge (or a whole conversion, here) drops those no converted sample has.
    dropped = drop_absent_sensors(info) if partition is None else []
    report = ConvertReport(
        output_dir=str(output_dir), num_samples=len(records), num_shards=len(plans),
        shards_skipped=len(plans) - len(todo), failures=failures, storage=options.storage, partition=partition,
        input_bytes=sum(plan.input_bytes for plan in plans), empty_tiles=sum(r.empty_tiles for r in results),
        absent_timesteps=absent, dropped_sensors=dropped,
    )  # fmt: skip
    write_json_atomic(output_dir / REPORT_JSON, report.to_dict())
    if not records and (partition is None or not contents.sensors):
        reasons = "; ".join(f"{f.path}: {f.reason}" for f in failures[:5])
        raise ConversionError(f"no sample of {input_dir} could be converted. First failures: {reasons}")
    _remove_stale_shards(output_dir / SHARDS_DIR, {plan.path.name for plan in plans})
    save_dataset_info(output_dir, info)
    return report


def drop_absent_sensors(info: DatasetInfo) -> list[str]:
    """Remove from `info` (in place) the sensors no sample has a present timestep of; returns them.

    A sensor whose only files belonged to samples that failed would otherwise stay in
    the dataset as all-missing arrays, with stats of count 0.
    """
    dropped = [name for name in info.sensors if not any(any(r.present.get(name, ())) for r in info.samples)]
    for name in dropped:
        del info.sensors[name], info.grids[name], info.num_timesteps[name]
        for record in info.samples:
            record.dates.pop(name, None)
            record.present.pop(name, None)
    return dropped


def _check_options(options: ConvertOptions, workers: int, partition: tuple[int, int] | None) -> None:
    if ((options.tile_size_px is not None and options.tile_size_px < 1) or options.samples_per_shard < 1 or workers < 1
            or (options.gsd_m is not None and not options.gsd_m > 0)):  # fmt: skip
        raise ConversionError(
            f"tile_size_px ({options.tile_size_px}), samples_per_shard ({options.samples_per_shard}), "
            f"workers ({workers}) and gsd_m ({options.gsd_m}) must all be positive"
        )
    if options.max_raster_pixels < 1 or options.max_tiles_per_scene < 1:
        raise ConversionError("--max-raster-pixels and --max-tiles-per-scene must be positive")
    if options.storage not in STORAGES:
        raise ConversionError(f"unknown storage {options.storage!r}; use one of {', '.join(STORAGES)}")
    if partition is not None and not (len(partition) == 2 and 0 <= partition[0] < partition[1]):
        raise ConversionError(f"partition {partition} must be (index, count) with 0 <= index < count")
    if options.assume_crs:
        try:
            CRS.from_user_input(options.assume_crs)
        except (CRSError, ValueError) as e:
            raise ConversionError(f"--assume-crs {options.assume_crs!r} is not a CRS ({e}); use e.g. EPSG:32632") from None


@dataclass(frozen=True)
class DatasetContents:
    """What every sample of the dataset holds: sensors, T per sensor, the grids they are stored on."""

    sensors: dict[str, SensorSpec]
    num_timesteps: dict[str, int]
    #: sensor -> its storage grids (bands sharing a pixel size), finest first.
    grids: dict[str, tuple[Grid, ...]]
    #: Pixel size `tile_size_px` counts in; the footprint is tile_size_px * reference_gsd_m.
    reference_gsd_m: float
    tile_size_px: int
    label_raster: LabelRasterSpec | None = None


def _dataset_contents(samples: list[SampleInput], options: ConvertOptions) -> DatasetContents:
    """Sensors, timesteps and grids over the good samples; marks static sensors given several dates as bad."""
    for s in samples:
        for name, acquisitions in s.files.items():
            if s.problem is None and not REGISTRY.get(name).temporal and len(acquisitions) > 1:
                s.fail(f"sensor {name!r} is static but sample {s.id!r} has {len(acquisitions)} acquisitions of it")
    good = [s for s in samples if s.problem is None]
    names = sorted({name for s in good for name in s.files})
    sensors = {name: REGISTRY.get(name) for name in names}
    num_timesteps = {
        name: max(len(s.files.get(name, [])) for s in good) if spec.temporal else 1 for name, spec in sensors.items()
    }
    with rasterio.Env(**GDAL_OPTIONS):
        probed = {name: _probe_band_gsd(good, spec, options) for name, spec in sensors.items()}
        label_gsd = _probe_label_gsd(good, options)
    spatial_sizes = [g for name, bands in probed.items() if sensors[name].spatial for g in bands.values()]
    if label_gsd is not None:
        spatial_sizes.append(label_gsd)
    reference = options.gsd_m or (min(spatial_sizes) if spatial_sizes else 10.0)
    for name, spec in sensors.items():
        # Bands no readable file gives (unreadable files fail their samples; bands a band list
        # leaves out stay missing) go with the sensor's finest found grid, or the reference.
        fallback = min(probed[name].values(), default=reference)
        probed[name] = {b: probed[name].get(b, fallback) for b in spec.bands}
    if options.one_grid:
        grids = {name: spec.one_grid(reference) for name, spec in sensors.items()}
    else:
        grids = {name: grids_of(probed[name], spec.bands) for name, spec in sensors.items()}
    for name, spec in sensors.items():
        if not spec.spatial:  # one value per band and timestep: no pixel grid to speak of
            grids[name] = (Grid(grids[name][0].name, spec.bands, grids[name][0].gsd_m),)
    label_raster = None
    if label_gsd is not None:
        label_raster = LabelRasterSpec(reference if options.one_grid else label_gsd, options.label_ignore_value)
    sizes = [g.gsd_m for name in sensors if sensors[name].spatial for g in grids[name]]
    sizes += [label_raster.gsd_m] if label_raster is not None else []
    tile = options.tile_size_px or _auto_tile_px(reference, sizes)
    _check_footprint(tile, reference, sensors, grids, label_raster)
    return DatasetContents(sensors, num_timesteps, grids, reference, tile, label_raster)


def _auto_tile_px(reference_gsd_m: float, grid_sizes: list[float]) -> int:
    """The smallest tile side of at least AUTO_TILE_PX reference pixels that is whole pixels of every
    grid and whole patches of PATCH_MULTIPLE_PX."""
    unit = math.lcm(PATCH_MULTIPLE_PX, *((metres(g) / metres(reference_gsd_m)).numerator for g in grid_sizes))
    return -(-AUTO_TILE_PX // unit) * unit


def _probe_band_gsd(samples: list[SampleInput], spec: SensorSpec, options: ConvertOptions) -> dict[str, float]:
    """Band -> the pixel size it is stored at: that of the first readable file giving it, snapped to
    one of the sensor's registry GSDs or the requested reference GSD when within 2% (chips
    reprojected upstream come at 10.016 m);
    bands no readable file gives are left out. Files are opened for their header only."""
    registry = sorted({g.gsd_m for g in spec.groups} | ({options.gsd_m} if options.gsd_m else set()))
    found: dict[str, float] = {}
    for sample in samples:
        for acquisition in sample.files.get(spec.name, []):
            for raster in acquisition.rasters:
                bands = [b for b in raster.bands or spec.bands if b in spec.bands]
                if all(b in found for b in bands):
                    continue
                size = _file_pixel_size(raster, spec, options)
                if size is None:
                    continue
                near = [g for g in registry if abs(size - g) <= GRID_TOLERANCE * g]
                size = near[0] if near else float(round(size, 3))
                for band in bands:
                    found.setdefault(band, size)
            if len(found) == spec.num_bands:
                return found
    return found


def _file_pixel_size(raster: RasterFile, spec: SensorSpec, options: ConvertOptions) -> float | None:
    """A raster's pixel size in metres from its header; None when unreadable or in degrees."""
    try:
        with open_raster(raster.path, options.max_raster_pixels) as src:
            return pixel_size_m(src, georeference(src, raster.path, spec, options.assume_crs))
    except (RasterReadError, RasterioError, OSError):
        return None  # converting the sample reports why


def _probe_label_gsd(samples: list[SampleInput], options: ConvertOptions) -> float | None:
    """The pixel size of the first readable label raster; None when no sample has one."""
    rasters = [s.label_raster for s in samples if s.label_raster is not None]
    if not rasters:
        return None
    for raster in rasters:
        size = _file_pixel_size(raster, _LABEL_SENSOR, options)
        if size is not None:
            return float(round(size, 3))
    return options.gsd_m or 10.0


#: Label rasters are read as a one-band categorical layer (nearest); its GSD only places bare arrays.
_LABEL_SENSOR = SensorSpec("label_raster", ("label",), (BandGroup("label", ("label",), 10.0),), temporal=False, categorical=True)


def _check_footprint(tile_size_px: int, reference_gsd_m: float, sensors: dict[str, SensorSpec],
                     grids: dict[str, tuple[Grid, ...]], label_raster: LabelRasterSpec | None) -> None:  # fmt: skip
    """Every grid must hold the footprint in whole pixels; else say which tile sizes do."""
    sizes = {f"{name} {g.name} ({' '.join(g.bands)})": g.gsd_m for name in sensors if sensors[name].spatial for g in grids[name]}
    if label_raster is not None:
        sizes["label raster"] = label_raster.gsd_m
    footprint = metres(reference_gsd_m) * tile_size_px
    bad = {what: gsd for what, gsd in sizes.items() if (footprint / metres(gsd)).denominator != 1}
    if not bad:
        return
    multiple = math.lcm(*((metres(g) / metres(reference_gsd_m)).numerator for g in sizes.values()))
    suggestions = sorted({max(multiple, tile_size_px // multiple * multiple), -(-tile_size_px // multiple) * multiple})
    what, gsd = next(iter(bad.items()))
    raise ConversionError(
        f"a tile of {tile_size_px} px at {reference_gsd_m:g} m ({float(footprint):g} m) is not a whole number of "
        f"{gsd:g} m pixels ({what}): every band is stored at its own resolution over the same footprint. Use a "
        f"--tile-size-px that is a multiple of {multiple} (e.g. {' or '.join(map(str, suggestions))}), "
        "or --one-grid to resample every band onto one grid"
    )


def _tile_scenes(samples: list[SampleInput], contents: DatasetContents,
                 options: ConvertOptions) -> tuple[list[SampleInput], list[Failure]]:  # fmt: skip
    """Each sample as the row-major tiles that cover its anchor raster (one tile: still renamed, for
    predictable ids). A sample whose raster cannot be opened stays whole: converting it reports why.
    A scene of more than `max_tiles_per_scene` tiles fails, naming the cap."""
    tiled, failures = [], []
    with rasterio.Env(**GDAL_OPTIONS):
        for sample in samples:
            sensor, path = _anchor(sample, contents.sensors)
            try:
                with open_raster(path, options.max_raster_pixels) as src:
                    georef = georeference(src, path, contents.sensors[sensor], options.assume_crs)
                    rows, cols = scene_tiles(src, georef, tile_size_px=options.tile_size_px, gsd_m=options.gsd_m)
            except (RasterReadError, RasterioError, OSError):
                tiled.append(sample)
                continue
            if rows * cols > options.max_tiles_per_scene:
                failures.append(Failure(sample.id, str(path), (
                    f"{path} would become {rows} x {cols} = {rows * cols} tiles of {options.tile_size_px} px, over the "
                    f"cap of {options.max_tiles_per_scene} tiles per scene; raise it with --max-tiles-per-scene, "
                    "or use a larger --tile-size-px"
                )))  # fmt: skip
                continue
            digits = len(str(max(rows, cols) - 1))
            tiled.extend(
                replace(sample, id=f"{sample.id}_r{r:0{digits}d}_c{c:0{digits}d}", tile=(r, c))
                for r in range(rows) for c in range(cols)
            )  # fmt: skip
    return tiled, failures


@dataclass
class _ShardPlan:
    path: Path
    samples: list[SampleInput]
    contents: DatasetContents
    options: ConvertOptions
    fingerprint: str = ""
    input_bytes: int = 0

    @property
    def name(self) -> str:
        return f"{SHARDS_DIR}/{self.path.name}"


def _plan_shards(
    samples: list[SampleInput], shard_dir: Path, contents: DatasetContents, options: ConvertOptions
) -> list[_ShardPlan]:
    size, suffix = options.samples_per_shard, SHARD_SUFFIX[options.storage]
    plans = []
    for k, start in enumerate(range(0, len(samples), size)):
        plan = _ShardPlan(shard_dir / f"shard-{k:05d}{suffix}", samples[start : start + size], contents, options)
        plan.fingerprint, plan.input_bytes = _fingerprint(plan)
        plans.append(plan)
    return plans


def _fingerprint(plan: _ShardPlan) -> tuple[str, int]:
    """A hash that changes whenever the inputs or options of the shard change, and the input bytes."""
    h = hashlib.sha256()
    h.update(json.dumps(asdict(plan.options), sort_keys=True).encode())
    h.update(json.dumps(plan.contents.num_timesteps, sort_keys=True).encode())
    h.update(json.dumps({n: s.to_dict() for n, s in plan.contents.sensors.items()}, sort_keys=True).encode())
    h.update(json.dumps({n: [g.to_dict() for g in gs] for n, gs in plan.contents.grids.items()}, sort_keys=True).encode())
    label = plan.contents.label_raster
    h.update(json.dumps(label.to_dict() if label else None).encode())
    total = 0
    for s in plan.samples:
        h.update(f"{s.id}|{s.label}|{s.labels}|{s.split}|{s.tile}".encode())
        files = [(sensor, a.date, r) for sensor, acquisitions in sorted(s.files.items()) for a in acquisitions for r in a.rasters]
        if s.label_raster is not None:
            files.append((LABEL_RASTER, "", s.label_raster))
        for sensor, date, r in files:
            st = r.path.stat()
            total += st.st_size
            h.update(f"{sensor}|{date}|{r.path}|{r.bands}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest(), total


@dataclass
class _ShardResult:
    shard: str
    records: list[SampleRecord]
    failures: list[Failure]
    empty_tiles: int = 0
    absent_timesteps: list[AbsentTimestep] = field(default_factory=list)


def _finished_shard(plan: _ShardPlan) -> _ShardResult | None:
    """The result of a shard written by an earlier run with the same inputs, if any."""
    attrs = read_shard_attrs(plan.path, plan.options.storage)
    if attrs is None or attrs.get("fingerprint") != plan.fingerprint:
        return None
    records = [SampleRecord.from_dict({**r, "shard": plan.name}) for r in attrs["records"]]
    return _ShardResult(plan.name, records, [Failure(**f) for f in attrs["failures"]], attrs.get("empty_tiles", 0),
                        [AbsentTimestep(**a) for a in attrs.get("absent_timesteps", [])])  # fmt: skip


@dataclass
class _SampleOutcome:
    """A converted sample (arrays and record) or its failure."""

    arrays: dict[str, np.ndarray | EncodedRows] | None = None  # by array key; compressed when workers encode
    record: SampleRecord | None = None
    failure: Failure | None = None
    empty_tile: bool = False  # a scene's tile without one valid pixel: skipped, not failed
    absent_timesteps: list[AbsentTimestep] = field(default_factory=list)


def _convert_shards(plans: list[_ShardPlan], workers: int, bar: tqdm) -> list[_ShardResult]:
    """Convert the samples of `plans` in parallel and write each shard as soon as it is complete.

    A writer thread writes shard k while the samples of shard k+1 are converted;
    at most one shard waits for it, which bounds memory. Samples are compressed
    as they come (Zarr and HDF5 store the same chunks): by the workers when there
    are several, else by the writer thread, sample by sample on the second core,
    so that even a dataset of one shard overlaps reading and compressing.
    """
    if not plans:
        return []
    plans[0].path.parent.mkdir(parents=True, exist_ok=True)
    contents, options = plans[0].contents, plans[0].options  # the same for every shard
    samples = [sample for plan in plans for sample in plan.samples]
    encode_in_workers = workers > 1
    tasks = [
        (samples[i : i + SAMPLES_PER_TASK], contents, options, encode_in_workers)
        for i in range(0, len(samples), SAMPLES_PER_TASK)
    ]  # fmt: skip
    outcomes = (outcome for chunk in _in_order(_convert_samples_task, tasks, workers) for outcome in chunk)
    writes: list[Future[_ShardResult]] = []
    with ThreadPoolExecutor(max_workers=1) as writer:  # one thread: its jobs run in order
        for plan in plans:
            shard_outcomes, encodes = [], []
            for _ in plan.samples:
                outcome = next(outcomes)
                if not encode_in_workers:  # runs before the shard's write, queued after it
                    encodes.append(writer.submit(_encode_outcome, outcome))
                shard_outcomes.append(outcome)
                bar.update()
            if writes:
                writes[-1].result()  # surfaces a failed write at once
            writes.append(writer.submit(_write_shard, plan, shard_outcomes, encodes))
        return [w.result() for w in writes]


def _in_order(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """`map(fn, items)` over a process pool, in order, with a bounded number of results in flight."""
    if workers == 1:
        yield from map(fn, items)
        return
    with ProcessPoolExecutor(max_workers=workers, initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= TASKS_IN_FLIGHT_PER_WORKER * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


#: prctl(2) option: the signal a process gets when its parent dies.
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """Pool worker initializer: end this worker when the process that started it dies.

    A `kill -9` of `convert` would otherwise leave its workers running on (PPID 1,
    hundreds of MB each). Linux delivers SIGKILL to the worker through
    PR_SET_PDEATHSIG; a parent that died before the call is caught by the check after it.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: workers end when the pool's pipe closes
        return
    if os.getppid() != parent_pid:
        os._exit(1)


def _write_shard(plan: _ShardPlan, outcomes: list[_SampleOutcome], encodes: list[Future] = ()) -> _ShardResult:
    for encode in encodes:
        encode.result()  # done already (same thread, earlier); raises what failed there
    converted = [o for o in outcomes if o.arrays is not None]
    failures = [o.failure for o in outcomes if o.failure is not None]
    absent = [a for o in converted for a in o.absent_timesteps]
    empty_tiles = sum(o.empty_tile for o in outcomes)
    records = []
    for row, outcome in enumerate(converted):
        outcome.record.shard, outcome.record.row = plan.name, row
        records.append(outcome.record)
    if converted:
        arrays = {key: _stack([o.arrays[key] for o in converted]) for key in _array_keys(plan.contents)}
        attrs = {
            "fingerprint": plan.fingerprint,
            "records": [{k: v for k, v in r.to_dict().items() if k != "shard"} for r in records],
            "failures": [asdict(f) for f in failures],
            "empty_tiles": empty_tiles,
            "absent_timesteps": [asdict(a) for a in absent],
        }
        write_shard(plan.path, arrays, attrs, plan.options.storage)
    return _ShardResult(plan.name, records, failures, empty_tiles, absent)


def _array_keys(contents: DatasetContents) -> list[str]:
    keys = [array_key(name, g.name) for name in contents.sensors for g in contents.grids[name]]
    return keys + ([LABEL_RASTER] if contents.label_raster is not None else [])


def _stack(rows: list[np.ndarray | EncodedRows]) -> np.ndarray | EncodedRows:
    return EncodedRows.concat(rows) if isinstance(rows[0], EncodedRows) else np.stack(rows)


def _convert_samples_task(
    task: tuple[list[SampleInput], DatasetContents, ConvertOptions, bool],
) -> list[_SampleOutcome]:
    """Worker entry point: convert a few samples, each to arrays (compressed if `encode`) and a record, or to its failure."""
    samples, contents, options, encode = task
    # Files stay open for the whole task: the tiles of a scene open it once and share
    # GDAL's cache of its decoded blocks.
    with rasterio.Env(**GDAL_OPTIONS), OpenRasters(options.max_raster_pixels) as rasters:
        outcomes = [_convert_or_fail(sample, contents, options, rasters) for sample in samples]
    if encode:
        for o in outcomes:
            _encode_outcome(o)
    return outcomes


def _encode_outcome(outcome: _SampleOutcome) -> None:
    """Compress a converted sample's arrays into shard chunks, in place."""
    if outcome.arrays is not None:
        outcome.arrays = {key: encode_rows(a[None]) for key, a in outcome.arrays.items()}


def _convert_or_fail(
    sample: SampleInput, contents: DatasetContents, options: ConvertOptions, rasters: OpenRasters
) -> _SampleOutcome:
    try:
        arrays, record, absent = convert_sample(sample, contents, options, rasters)
    except (RasterReadError, RasterioError, OSError, ValueError, KeyError) as e:
        if isinstance(e, EmptyTileError) and sample.tile is not None:
            return _SampleOutcome(empty_tile=True)
        reason = str(e.args[0]) if isinstance(e, KeyError) else str(e)
        log.warning("skipping sample %s: %s", sample.id, reason)
        return _SampleOutcome(failure=Failure(sample.id, _failing_path(sample, reason), reason))
    return _SampleOutcome(arrays=arrays, record=record, absent_timesteps=absent)


def convert_sample(
    sample: SampleInput, contents: DatasetContents, options: ConvertOptions, rasters: OpenRasters | None = None
) -> tuple[dict[str, np.ndarray], SampleRecord, list[AbsentTimestep]]:
    """Read every sensor of `sample` onto its grids over the sample's footprint.

    Returns the arrays by array key (`sensor/grid`: (T, C_g, H_g, W_g), or (T, C) for a
    non-spatial sensor; `label_raster`: (H, W)), the record, and the dates found to
    have no valid pixel under the footprint (stored as missing). `rasters` keeps files
    open beyond this sample (the caller closes them); by default the sample opens and
    closes its own.
    """
    arrays: dict[str, np.ndarray] = {}
    dates: dict[str, list[str]] = {}
    present: dict[str, list[bool]] = {}
    absent: list[AbsentTimestep] = []
    with OpenRasters(options.max_raster_pixels) if rasters is None else nullcontext(rasters) as rasters:
        anchor_sensor, anchor = _anchor(sample, contents.sensors)
        src = rasters[anchor]
        georef = georeference(src, anchor, contents.sensors[anchor_sensor], options.assume_crs)
        footprint = reference_grid(src, georef, tile_size_px=options.tile_size_px, gsd_m=contents.reference_gsd_m,
                                   tile=sample.tile or (0, 0))  # fmt: skip
        if sparse_under(src, footprint, georef):
            raise RasterReadError(
                f"{anchor}: every block of the file under sample {sample.id!r} is sparse (declared but never "
                "written, so it reads as zeros): the file holds no data there; re-export it"
            )
        for name, spec in contents.sensors.items():
            acquisitions = sample.files.get(name, [])
            stack, kept = _read_sensor(acquisitions, spec, contents, footprint, rasters, options)
            for grid_name, array in stack.items():
                arrays[array_key(name, grid_name)] = array
            missing = contents.num_timesteps[name] - len(acquisitions)
            dates[name] = [a.date if ok else "" for a, ok in zip(acquisitions, kept, strict=True)] + [""] * missing
            present[name] = list(kept) + [False] * missing
            absent += [AbsentTimestep(sample.id, name, a.date, str(a.rasters[0].path))
                       for a, ok in zip(acquisitions, kept, strict=True) if not ok]  # fmt: skip
        if not any(any(p) for p in present.values()):
            raise EmptyTileError(f"{anchor}: every pixel of sample {sample.id!r} is nodata on its tile")
        if contents.label_raster is not None:
            arrays[LABEL_RASTER] = _read_label_raster(sample, contents, footprint, rasters, options)
    record = SampleRecord(
        id=sample.id, shard="", row=-1, crs=_crs_name(footprint.crs.to_wkt()), bounds=footprint.bounds,
        dates=dates, present=present, label=sample.label, split=sample.split,
        labels=list(sample.labels) if sample.labels is not None else None,
        label_raster=sample.label_raster is not None,
    )  # fmt: skip
    return arrays, record, absent


@functools.lru_cache(maxsize=64)
def _crs_name(wkt: str) -> str:
    """The name of a CRS, e.g. EPSG:32629 (or its WKT). A dataset's samples share a few CRSs,
    and naming one searches PROJ's database: 47 us a EuroSAT chip, 22 us with this cache."""
    return CRS.from_wkt(wkt).to_string()


def _all_sentinel(array: np.ndarray) -> bool:
    """Whether no value of `array` is real; a first real value (most tiles) answers without a pass."""
    return array.size == 0 or (array.flat[0] == SENTINEL and bool((array == SENTINEL).all()))


def _anchor(sample: SampleInput, sensors: dict[str, SensorSpec]) -> tuple[str, Path]:
    """The sensor and file the sample's grid is anchored on: the first file of its finest spatial sensor."""
    name = min(sample.files, key=lambda n: (not sensors[n].spatial, sensors[n].min_gsd_m, n))
    return name, sample.files[name][0].rasters[0].path


def storage_grids(spec: SensorSpec, grids: tuple[Grid, ...], footprint: PixelGrid, reference_gsd_m: float) -> list[StorageGrid]:
    """The sensor's grids placed on a sample's footprint (a non-spatial sensor: the reference grid,
    whose valid pixels are then averaged)."""
    out = []
    for grid in grids:
        factor = Fraction(1) if not spec.spatial else metres(grid.gsd_m) / metres(reference_gsd_m)
        out.append(StorageGrid(grid, tuple(spec.band_index(grid.bands)), footprint.scaled(factor)))
    return out


def _read_sensor(
    acquisitions: list[Acquisition], spec: SensorSpec, contents: DatasetContents, footprint: PixelGrid,
    rasters: OpenRasters, options: ConvertOptions,
) -> tuple[dict[str, np.ndarray], list[bool]]:  # fmt: skip
    """{grid: (T, C_g, H_g, W_g)} for a spatial sensor ({grid: (T, C)} footprint means otherwise),
    missing timesteps sentinel; and per acquisition whether it holds a valid value under the
    footprint (a date of another scene, or all nodata, is stored as missing)."""
    grids = storage_grids(spec, contents.grids[spec.name], footprint, contents.reference_gsd_m)
    T = contents.num_timesteps[spec.name]
    out = {
        sg.grid.name: np.full((T, len(sg.positions)) + ((sg.pixels.height, sg.pixels.width) if spec.spatial else ()),
                              SENTINEL, dtype=np.float32)
        for sg in grids
    }  # fmt: skip
    kept = []
    for t, acquisition in enumerate(acquisitions):
        images = read_acquisition(acquisition, spec, grids, rasters, assume_crs=options.assume_crs,
                                  upsample=options.one_grid or not spec.spatial)  # fmt: skip
        valid = not all(_all_sentinel(image) for image in images.values())
        kept.append(valid)
        if valid:
            for name, image in images.items():
                out[name][t] = image if spec.spatial else footprint_mean(image)
    return out, kept


def _read_label_raster(sample: SampleInput, contents: DatasetContents, footprint: PixelGrid, rasters: OpenRasters,
                       options: ConvertOptions) -> np.ndarray:  # fmt: skip
    """The sample's label raster (H, W) on its grid, nearest; the ignore value, nodata and no file: sentinel."""
    spec = contents.label_raster
    pixels = footprint.scaled(metres(spec.gsd_m) / metres(contents.reference_gsd_m))
    if sample.label_raster is None:
        return np.full((pixels.height, pixels.width), SENTINEL, np.float32)
    path = sample.label_raster.path
    src = rasters[path]
    if src.count != 1:
        raise RasterReadError(f"label raster {path} has {src.count} bands; it must have one (the class of each pixel)")
    georef = georeference(src, path, _LABEL_SENSOR, options.assume_crs)
    labels = read_on_grid(src, path, georef, [1], pixels, categorical=True)[0]
    labels[labels == np.float32(spec.ignore_value)] = SENTINEL
    return labels


def footprint_mean(image: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (C,): each band's mean over its valid pixels; sentinel where none is valid."""
    valid = image != SENTINEL
    count = valid.sum(axis=(1, 2))
    total = np.where(valid, image, 0.0).sum(axis=(1, 2), dtype=np.float64)
    return np.where(count > 0, total / np.maximum(count, 1), SENTINEL).astype(np.float32)


def _failing_path(sample: SampleInput, message: str) -> str:
    for path in sample.paths():
        if str(path) in message:
            return str(path)
    return sample.first_path()


def _remove_stale_shards(shard_dir: Path, keep: set[str]) -> None:
    """Remove shards (and temporary leftovers) of earlier runs that this dataset no longer uses."""
    if not shard_dir.is_dir():
        return
    for path in shard_dir.iterdir():
        ours = path.name.startswith(("shard-", ".tmp-")) and path.suffix in SHARD_SUFFIX.values()
        if ours and path.name not in keep:
            log.info("removing stale shard %s", path)
            remove_shard(path)
