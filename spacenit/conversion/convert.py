"""The `convert` stage: GeoTIFFs -> a SpaceNit dataset (shards + dataset.json).

Samples are converted in parallel by a process pool (each sample is brought
onto its reference grid, see `geotiff.py`) and gathered, in order, into shards
of `samples_per_shard`, each written atomically (Zarr v3 or HDF5). An
interrupted run leaves only whole shards; a re-run skips every shard whose
inputs are unchanged and redoes the rest. A sample that fails (unreadable
file, wrong band count, no CRS, duplicate id...) is listed in
`convert_report.json` with its reason while every good sample is converted.

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

import functools
import hashlib
import json
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import CRSError, RasterioError
from tqdm import tqdm

from spacenit.conversion.discover import Acquisition, SampleInput, discover, mark_duplicates
from spacenit.conversion.geotiff import (
    GDAL_OPTIONS,
    OpenRasters,
    RasterReadError,
    georeference,
    open_raster,
    read_acquisition,
    reference_grid,
    scene_tiles,
)  # fmt: skip
from spacenit.data.format import (
    DATASET_JSON,
    STORAGES,
    DatasetInfo,
    SampleRecord,
    save_dataset_info,
    write_json_atomic,
)
from spacenit.data.shards import (
    SHARD_SUFFIX,
    EncodedRows,
    encode_rows,
    read_shard_attrs,
    remove_shard,
    write_shard,
)
from spacenit.sensors import REGISTRY, SENTINEL, SensorSpec

log = logging.getLogger(__name__)

REPORT_JSON = "convert_report.json"
SHARDS_DIR = "shards"
#: Samples per task handed to a worker: amortizes the task's overhead (IPC, GDAL environment).
SAMPLES_PER_TASK = 8
#: Tasks a worker may run ahead of the shard writer, bounding memory.
TASKS_IN_FLIGHT_PER_WORKER = 2

T = TypeVar("T")
R = TypeVar("R")


class ConversionError(RuntimeError):
    """Nothing could be converted, or the options are invalid; the message says why."""


class EmptyTileError(RasterReadError):
    """Every pixel of a sample's tile is nodata: a failure for a chip, a skip for a scene's tile."""


@dataclass(frozen=True)
class ConvertOptions:
    tile_size_px: int = 64
    gsd_m: float = 10.0
    samples_per_shard: int = 64
    assume_crs: str | None = None
    storage: str = "zarr"
    tile_scenes: bool = False


@dataclass
class Failure:
    sample_id: str
    path: str
    reason: str


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
        return cls(**d, failures=failures, partition=partition)


def convert(
    input_dir: str | Path,
    output_dir: str | Path,
    *,
    layout: str = "auto",
    sensor: str = "sentinel2_l1c",
    tile_size_px: int = 64,
    gsd_m: float = 10.0,
    samples_per_shard: int = 64,
    assume_crs: str | None = None,
    workers: int = 1,
    progress: bool = True,
    manifest: str | Path | None = None,
    storage: str = "zarr",
    partition: tuple[int, int] | None = None,
    tile_scenes: bool = False,
) -> ConvertReport:
    """Convert the GeoTIFFs under `input_dir` (or listed in `manifest`) into a dataset at `output_dir`.

    With `tile_scenes`, a raster larger than one tile becomes one sample per tile.
    Returns a report; its `failures` list every input that was skipped and why.
    Raises ConversionError when no sample at all could be converted.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    options = ConvertOptions(tile_size_px, gsd_m, samples_per_shard, assume_crs, storage, tile_scenes)
    _check_options(options, workers, partition)
    samples = mark_duplicates(discover(input_dir, layout=layout, sensor=sensor, manifest=manifest))
    samples.sort(key=lambda s: (s.id, s.first_path()))
    contents = _dataset_contents(samples)  # over all samples, so that every partition agrees
    # Until this run finishes, the directory is no dataset: readers say "re-run convert".
    (output_dir / DATASET_JSON).unlink(missing_ok=True)
    selected = samples if partition is None else samples[partition[0] :: partition[1]]

    failures = [Failure(s.id, s.problem_path or s.first_path(), s.problem) for s in selected if s.problem]
    good = [s for s in selected if not s.problem]
    if tile_scenes:  # after partitioning: every tile of a scene lands in the scene's partition
        good = _tile_scenes(good, contents, options)
    plans = _plan_shards(good, output_dir / SHARDS_DIR, contents, options)
    finished = {plan.path: _finished_shard(plan) for plan in plans}
    todo = [plan for plan in plans if finished[plan.path] is None]
    results = [r for r in finished.values() if r is not None]

    bar = tqdm(total=sum(len(p.samples) for p in plans), desc="convert", unit="sample", disable=not progress)
    bar.update(sum(len(r.records) + len(r.failures) + r.empty_tiles for r in results))
    results += _convert_shards(todo, workers, bar)
    bar.close()

    records: list[SampleRecord] = []
    for result in sorted(results, key=lambda r: r.shard):
        records.extend(result.records)
        failures.extend(result.failures)
    report = ConvertReport(
        output_dir=str(output_dir), num_samples=len(records), num_shards=len(plans),
        shards_skipped=len(plans) - len(todo), failures=failures, storage=storage, partition=partition,
        input_bytes=sum(plan.input_bytes for plan in plans), empty_tiles=sum(r.empty_tiles for r in results),
    )  # fmt: skip
    write_json_atomic(output_dir / REPORT_JSON, report.to_dict())
    if not records and (partition is None or not contents.sensors):
        reasons = "; ".join(f"{f.path}: {f.reason}" for f in failures[:5])
        raise ConversionError(f"no sample of {input_dir} could be converted. First failures: {reasons}")
    _remove_stale_shards(output_dir / SHARDS_DIR, {plan.path.name for plan in plans})
    info = DatasetInfo(
        sensors=contents.sensors, tile_size_px=tile_size_px, gsd_m=gsd_m,
        num_timesteps=contents.num_timesteps, samples=records, storage=storage,
    )  # fmt: skip
    save_dataset_info(output_dir, info)
    return report


def _check_options(options: ConvertOptions, workers: int, partition: tuple[int, int] | None) -> None:
    if options.tile_size_px < 1 or options.samples_per_shard < 1 or workers < 1 or not options.gsd_m > 0:
        raise ConversionError(
            f"tile_size_px ({options.tile_size_px}), samples_per_shard ({options.samples_per_shard}), "
            f"workers ({workers}) and gsd_m ({options.gsd_m}) must all be positive"
        )
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
    """What every sample of the dataset holds: its sensors and T per sensor."""

    sensors: dict[str, SensorSpec]
    num_timesteps: dict[str, int]


def _dataset_contents(samples: list[SampleInput]) -> DatasetContents:
    """Sensors and timesteps over the good samples; marks static sensors given several dates as bad."""
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
    return DatasetContents(sensors, num_timesteps)


def _tile_scenes(samples: list[SampleInput], contents: DatasetContents, options: ConvertOptions) -> list[SampleInput]:
    """Each sample as the row-major tiles that cover its anchor raster (one tile: still renamed, for
    predictable ids). A sample whose raster cannot be opened stays whole: converting it reports why."""
    tiled = []
    with rasterio.Env(**GDAL_OPTIONS):
        for sample in samples:
            sensor, path = _anchor(sample, contents.sensors)
            try:
                with open_raster(path) as src:
                    georef = georeference(src, path, contents.sensors[sensor], options.assume_crs)
                    rows, cols = scene_tiles(src, georef, tile_size_px=options.tile_size_px, gsd_m=options.gsd_m)
            except (RasterReadError, RasterioError, OSError):
                tiled.append(sample)
                continue
            digits = len(str(max(rows, cols) - 1))
            tiled.extend(
                replace(sample, id=f"{sample.id}_r{r:0{digits}d}_c{c:0{digits}d}", tile=(r, c))
                for r in range(rows) for c in range(cols)
            )  # fmt: skip
    return tiled


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
    total = 0
    for s in plan.samples:
        h.update(f"{s.id}|{s.label}|{s.labels}|{s.split}".encode())
        for sensor, acquisitions in sorted(s.files.items()):
            for a in acquisitions:
                for r in a.rasters:
                    st = r.path.stat()
                    total += st.st_size
                    h.update(f"{sensor}|{a.date}|{r.path}|{r.bands}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest(), total


@dataclass
class _ShardResult:
    shard: str
    records: list[SampleRecord]
    failures: list[Failure]
    empty_tiles: int = 0


def _finished_shard(plan: _ShardPlan) -> _ShardResult | None:
    """The result of a shard written by an earlier run with the same inputs, if any."""
    attrs = read_shard_attrs(plan.path, plan.options.storage)
    if attrs is None or attrs.get("fingerprint") != plan.fingerprint:
        return None
    records = [SampleRecord.from_dict({**r, "shard": plan.name}) for r in attrs["records"]]
    return _ShardResult(plan.name, records, [Failure(**f) for f in attrs["failures"]], attrs.get("empty_tiles", 0))


@dataclass
class _SampleOutcome:
    """A converted sample (arrays and record) or its failure."""

    arrays: dict[str, np.ndarray | EncodedRows] | None = None  # compressed when workers encode
    record: SampleRecord | None = None
    failure: Failure | None = None
    empty_tile: bool = False  # a scene's tile without one valid pixel: skipped, not failed


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
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= TASKS_IN_FLIGHT_PER_WORKER * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _write_shard(plan: _ShardPlan, outcomes: list[_SampleOutcome], encodes: list[Future] = ()) -> _ShardResult:
    for encode in encodes:
        encode.result()  # done already (same thread, earlier); raises what failed there
    converted = [o for o in outcomes if o.arrays is not None]
    failures = [o.failure for o in outcomes if o.failure is not None]
    empty_tiles = sum(o.empty_tile for o in outcomes)
    records = []
    for row, outcome in enumerate(converted):
        outcome.record.shard, outcome.record.row = plan.name, row
        records.append(outcome.record)
    if converted:
        arrays = {name: _stack([o.arrays[name] for o in converted]) for name in plan.contents.sensors}
        attrs = {
            "fingerprint": plan.fingerprint,
            "records": [{k: v for k, v in r.to_dict().items() if k != "shard"} for r in records],
            "failures": [asdict(f) for f in failures],
            "empty_tiles": empty_tiles,
        }
        write_shard(plan.path, arrays, attrs, plan.options.storage)
    return _ShardResult(plan.name, records, failures, empty_tiles)


def _stack(rows: list[np.ndarray | EncodedRows]) -> np.ndarray | EncodedRows:
    return EncodedRows.concat(rows) if isinstance(rows[0], EncodedRows) else np.stack(rows)


def _convert_samples_task(
    task: tuple[list[SampleInput], DatasetContents, ConvertOptions, bool],
) -> list[_SampleOutcome]:
    """Worker entry point: convert a few samples, each to arrays (compressed if `encode`) and a record, or to its failure."""
    samples, contents, options, encode = task
    # Files stay open for the whole task: the tiles of a scene open it once and share
    # GDAL's cache of its decoded blocks.
    with rasterio.Env(**GDAL_OPTIONS), OpenRasters() as rasters:
        outcomes = [_convert_or_fail(sample, contents, options, rasters) for sample in samples]
    if encode:
        for o in outcomes:
            _encode_outcome(o)
    return outcomes


def _encode_outcome(outcome: _SampleOutcome) -> None:
    """Compress a converted sample's arrays into Zarr chunks, in place."""
    if outcome.arrays is not None:
        outcome.arrays = {name: encode_rows(a[None]) for name, a in outcome.arrays.items()}


def _convert_or_fail(
    sample: SampleInput, contents: DatasetContents, options: ConvertOptions, rasters: OpenRasters
) -> _SampleOutcome:
    try:
        arrays, record = convert_sample(sample, contents, options, rasters)
    except (RasterReadError, RasterioError, OSError, ValueError, KeyError) as e:
        if isinstance(e, EmptyTileError) and sample.tile is not None:
            return _SampleOutcome(empty_tile=True)
        reason = str(e.args[0]) if isinstance(e, KeyError) else str(e)
        log.warning("skipping sample %s: %s", sample.id, reason)
        return _SampleOutcome(failure=Failure(sample.id, _failing_path(sample, reason), reason))
    return _SampleOutcome(arrays=arrays, record=record)


def convert_sample(
    sample: SampleInput, contents: DatasetContents, options: ConvertOptions, rasters: OpenRasters | None = None
) -> tuple[dict[str, np.ndarray], SampleRecord]:
    """Read every sensor of `sample` onto its reference grid: sensor -> (T, C, H, W) or (T, C).

    `rasters` keeps files open beyond this sample (the caller closes them); by default
    the sample opens and closes its own.
    """
    arrays: dict[str, np.ndarray] = {}
    dates: dict[str, list[str]] = {}
    present: dict[str, list[bool]] = {}
    with OpenRasters() if rasters is None else nullcontext(rasters) as rasters:
        anchor_sensor, anchor = _anchor(sample, contents.sensors)
        src = rasters[anchor]
        georef = georeference(src, anchor, contents.sensors[anchor_sensor], options.assume_crs)
        grid = reference_grid(src, georef, tile_size_px=options.tile_size_px, gsd_m=options.gsd_m, tile=sample.tile or (0, 0))
        for name, spec in contents.sensors.items():
            acquisitions = sample.files.get(name, [])
            arrays[name] = _read_sensor(acquisitions, spec, contents.num_timesteps[name], grid, rasters, options)
            missing = contents.num_timesteps[name] - len(acquisitions)
            dates[name] = [a.date for a in acquisitions] + [""] * missing
            present[name] = [True] * len(acquisitions) + [False] * missing
    if all(_all_sentinel(a) for a in arrays.values()):
        raise EmptyTileError(f"{anchor}: every pixel of sample {sample.id!r} is nodata on its tile")
    record = SampleRecord(
        id=sample.id, shard="", row=-1, crs=_crs_name(grid.crs.to_wkt()), bounds=grid.bounds,
        dates=dates, present=present, label=sample.label, split=sample.split,
        labels=list(sample.labels) if sample.labels is not None else None,
    )  # fmt: skip
    return arrays, record


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


def _read_sensor(
    acquisitions: list[Acquisition], spec: SensorSpec, num_timesteps: int, grid, rasters: OpenRasters,
    options: ConvertOptions,
) -> np.ndarray:  # fmt: skip
    """(T, C, H, W) for a spatial sensor, (T, C) footprint means otherwise; missing timesteps sentinel."""
    def read(acquisition: Acquisition) -> np.ndarray:
        image = read_acquisition(acquisition, spec, grid, rasters, assume_crs=options.assume_crs)  # (C, H, W)
        return image if spec.spatial else footprint_mean(image)

    if num_timesteps == len(acquisitions) == 1:
        return read(acquisitions[0])[None]  # one timestep (most samples): no copy
    shape = (num_timesteps, spec.num_bands) + ((grid.height, grid.width) if spec.spatial else ())
    stack = np.full(shape, SENTINEL, dtype=np.float32)
    for t, acquisition in enumerate(acquisitions):
        stack[t] = read(acquisition)
    return stack


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
