"""The `convert` stage: GeoTIFFs -> a SpaceNit dataset (shards + dataset.json).

Samples are grouped into shards of `samples_per_shard`; each shard is
converted by one worker and written atomically, so an interrupted run leaves
only whole shards and a re-run skips them. A sample that fails (unreadable
file, wrong band count, no CRS...) is listed in `convert_report.json` with
its reason while every good sample is converted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import zarr
from tqdm import tqdm

from spacenit.conversion.discover import SampleInput, discover
from spacenit.conversion.geotiff import RasterReadError, read_on_grid, reference_grid
from spacenit.data.format import DatasetInfo, SampleRecord, save_dataset_info, write_json_atomic
from spacenit.data.shards import write_zarr_shard
from spacenit.sensors import REGISTRY, SENTINEL, SensorSpec

log = logging.getLogger(__name__)

REPORT_JSON = "convert_report.json"


class ConversionError(RuntimeError):
    """Nothing could be converted; the message says why."""


@dataclass
class ConvertOptions:
    tile_size_px: int = 64
    gsd_m: float = 10.0
    samples_per_shard: int = 64
    assume_crs: str | None = None


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

    @property
    def ok(self) -> bool:
        return not self.failures


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
) -> ConvertReport:
    """Convert the GeoTIFFs under `input_dir` into a dataset at `output_dir`.

    Returns a report; its `failures` list every input that was skipped and why.
    Raises ConversionError when no sample at all could be converted.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    options = ConvertOptions(tile_size_px, gsd_m, samples_per_shard, assume_crs)
    samples = discover(input_dir, layout=layout, sensor=sensor)
    samples, failures = _drop_duplicate_ids(samples)

    sensor_names = sorted({s for sample in samples for s in sample.files})
    sensors = {name: REGISTRY.get(name) for name in sensor_names}
    num_timesteps = {
        name: (max(len(s.files.get(name, [])) for s in samples) if spec.temporal else 1)
        for name, spec in sensors.items()
    }

    shard_dir = output_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    plans = [
        _ShardPlan(
            path=shard_dir / f"shard-{i // samples_per_shard:05d}.zarr",
            samples=samples[i : i + samples_per_shard],
            sensors=sensors,
            num_timesteps=num_timesteps,
            options=options,
        )
        for i in range(0, len(samples), samples_per_shard)
    ]

    results: list[_ShardResult] = []
    todo = []
    for plan in plans:
        done = _finished_shard(plan)
        if done is not None:
            results.append(done)
        else:
            todo.append(plan)
    skipped = len(results)

    bar = tqdm(total=len(plans), initial=skipped, desc="convert", unit="shard", disable=not progress)
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for result in pool.map(_convert_shard, todo):
                results.append(result)
                bar.update()
    else:
        for plan in todo:
            results.append(_convert_shard(plan))
            bar.update()
    bar.close()

    records: list[SampleRecord] = []
    for result in sorted(results, key=lambda r: r.shard):
        records.extend(result.records)
        failures.extend(result.failures)

    report = ConvertReport(
        output_dir=str(output_dir),
        num_samples=len(records),
        num_shards=len(plans),
        shards_skipped=skipped,
        failures=failures,
    )
    write_json_atomic(output_dir / REPORT_JSON, asdict(report))
    if not records:
        reasons = "; ".join(f"{f.path}: {f.reason}" for f in failures[:5])
        raise ConversionError(f"no sample of {input_dir} could be converted. First failures: {reasons}")
    info = DatasetInfo(
        sensors=sensors, tile_size_px=tile_size_px, gsd_m=gsd_m, num_timesteps=num_timesteps,
        samples=records, storage="zarr",
    )  # fmt: skip
    save_dataset_info(output_dir, info)
    return report


def _drop_duplicate_ids(samples: list[SampleInput]) -> tuple[list[SampleInput], list[Failure]]:
    counts = Counter(s.id for s in samples)
    kept, failures = [], []
    for s in samples:
        if counts[s.id] > 1:
            path = next(iter(s.files.values()))[0][1]
            failures.append(Failure(s.id, str(path), f"sample id {s.id!r} occurs {counts[s.id]} times; ids must be unique"))
        else:
            kept.append(s)
    return kept, failures


@dataclass
class _ShardPlan:
    path: Path
    samples: list[SampleInput]
    sensors: dict[str, SensorSpec]
    num_timesteps: dict[str, int]
    options: ConvertOptions

    def fingerprint(self) -> str:
        """Changes whenever the inputs or options of this shard change."""
        h = hashlib.sha256()
        h.update(json.dumps(asdict(self.options), sort_keys=True).encode())
        h.update(json.dumps(self.num_timesteps, sort_keys=True).encode())
        for s in self.samples:
            for sensor, files in sorted(s.files.items()):
                for date, path in files:
                    st = path.stat()
                    h.update(f"{s.id}|{sensor}|{date}|{path}|{st.st_size}|{st.st_mtime_ns}".encode())
            h.update(f"{s.label}|{s.split}".encode())
        return h.hexdigest()


@dataclass
class _ShardResult:
    shard: str
    records: list[SampleRecord]
    failures: list[Failure]


def _finished_shard(plan: _ShardPlan) -> _ShardResult | None:
    """The result of a shard written by an earlier run with the same inputs, if any."""
    if not plan.path.exists():
        return None
    try:
        attrs = zarr.open_group(store=str(plan.path), mode="r").attrs.asdict()
    except Exception:  # unreadable leftovers are simply redone
        return None
    if attrs.get("fingerprint") != plan.fingerprint():
        return None
    return _ShardResult(
        shard=attrs["shard"],
        records=[SampleRecord.from_dict(r) for r in attrs["records"]],
        failures=[Failure(**f) for f in attrs["failures"]],
    )


def _convert_sample(sample: SampleInput, plan: _ShardPlan) -> tuple[dict[str, np.ndarray], SampleRecord]:
    opts = plan.options
    # Anchor the grid on the finest spatial sensor's first file.
    anchor_sensor = min(sample.files, key=lambda name: plan.sensors[name].min_gsd_m)
    anchor = sample.files[anchor_sensor][0][1]
    grid = reference_grid(anchor, tile_size_px=opts.tile_size_px, gsd_m=opts.gsd_m, assume_crs=opts.assume_crs)
    arrays: dict[str, np.ndarray] = {}
    dates: dict[str, list[str]] = {}
    for name, spec in plan.sensors.items():
        T = plan.num_timesteps[name]
        stack = np.full((T, spec.num_bands, grid.height, grid.width), SENTINEL, dtype=np.float32)
        sensor_dates = [""] * T
        for t, (date, path) in enumerate(sample.files.get(name, [])[:T]):
            stack[t] = read_on_grid(path, grid, spec, assume_crs=opts.assume_crs)
            sensor_dates[t] = date
        arrays[name] = stack
        dates[name] = sensor_dates
    if all((a == SENTINEL).all() for a in arrays.values()):
        raise RasterReadError(f"{anchor}: every pixel of sample {sample.id!r} is nodata on its tile")
    record = SampleRecord(
        id=sample.id, shard="", row=-1, crs=grid.crs.to_string(), bounds=grid.bounds,
        dates=dates, label=sample.label, split=sample.split,
    )  # fmt: skip
    return arrays, record


def _convert_shard(plan: _ShardPlan) -> _ShardResult:
    shard_rel = f"shards/{plan.path.name}"
    per_sensor: dict[str, list[np.ndarray]] = {name: [] for name in plan.sensors}
    records: list[SampleRecord] = []
    failures: list[Failure] = []
    for sample in plan.samples:
        try:
            arrays, record = _convert_sample(sample, plan)
        except (RasterReadError, OSError, ValueError) as e:
            failed = _failing_path(sample, str(e))
            failures.append(Failure(sample.id, failed, str(e)))
            log.warning("skipping sample %s: %s", sample.id, e)
            continue
        record.shard, record.row = shard_rel, len(records)
        records.append(record)
        for name, arr in arrays.items():
            per_sensor[name].append(arr)
    if records:
        arrays = {name: np.stack(stack) for name, stack in per_sensor.items()}
        attrs = {
            "shard": shard_rel,
            "fingerprint": plan.fingerprint(),
            "records": [asdict(r) for r in records],
            "failures": [asdict(f) for f in failures],
        }
        write_zarr_shard(plan.path, arrays, attrs=attrs)
    return _ShardResult(shard=shard_rel, records=records, failures=failures)


def _failing_path(sample: SampleInput, message: str) -> str:
    for files in sample.files.values():
        for _, path in files:
            if str(path) in message:
                return str(path)
    return str(next(iter(sample.files.values()))[0][1])
