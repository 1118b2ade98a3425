"""Merge partial datasets (from `convert(..., partition=(i, n))`) into one dataset.

A Kubeflow ParallelFor converts the partitions of one input side by side;
this step joins them: the parts must agree on format version, storage, tile
size, GSD, sensors, grids and timesteps; a sample id may occur in one part only.
Sensors that no merged sample has (the parts keep every sensor of the whole
input) are dropped, as a whole conversion drops them.
Shards are copied (or moved) under `output_dir/shards` with new, unique
names, the records are rewritten to point at them, the failure reports are
concatenated into one `convert_report.json`, and `dataset.json` is written
last, so an interrupted merge leaves no dataset that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from spacenit.conversion.convert import (
    REPORT_JSON,
    SHARDS_DIR,
    AbsentTimestep,
    ConversionError,
    ConvertReport,
    Failure,
    drop_absent_sensors,
)
from spacenit.data.format import (
    DATASET_JSON,
    DatasetInfo,
    SampleRecord,
    dataset_lock,
    load_dataset_info,
    save_dataset_info,
    write_json_atomic,
)
from spacenit.data.shards import SHARD_SUFFIX, remove_shard


class MergeError(ConversionError):
    """Partial datasets that cannot be merged; the message names the parts and what differs."""


def merge_datasets(part_dirs: list[Path], output_dir: Path, *, move: bool = False) -> DatasetInfo:
    """Merge the datasets in `part_dirs` into `output_dir`; returns the merged dataset's info.

    With `move=True` shards are moved instead of copied (the parts are then spent).
    """
    part_dirs, output_dir = [Path(p) for p in part_dirs], Path(output_dir)
    if not part_dirs:
        raise MergeError("merge_datasets needs at least one partial dataset")
    if output_dir.resolve() in {p.resolve() for p in part_dirs}:
        raise MergeError(f"the merge output {output_dir} is one of the parts; write it to a new directory")
    infos = [load_dataset_info(p) for p in part_dirs]
    _check_compatible(part_dirs, infos)
    _check_unique_ids(part_dirs, infos)
    with dataset_lock(output_dir, "spacenit merge"):
        return _merge_locked(part_dirs, infos, output_dir, move)


def _merge_locked(part_dirs: list[Path], infos: list[DatasetInfo], output_dir: Path, move: bool) -> DatasetInfo:
    shard_dir = output_dir / SHARDS_DIR
    shard_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / DATASET_JSON).unlink(missing_ok=True)  # no dataset until the merge is complete
    suffix = SHARD_SUFFIX[infos[0].storage]
    records: list[SampleRecord] = []
    new_names: list[str] = []
    for part, info in zip(part_dirs, infos, strict=True):
        renamed: dict[str, str] = {}
        for record in info.samples:
            if record.shard not in renamed:
                renamed[record.shard] = f"{SHARDS_DIR}/shard-{len(new_names):05d}{suffix}"
                new_names.append(renamed[record.shard])
                _transfer(part / record.shard, output_dir / renamed[record.shard], move=move)
            record.shard = renamed[record.shard]
            records.append(record)
    _remove_other_shards(shard_dir, {Path(n).name for n in new_names})

    first = infos[0]
    merged = DatasetInfo(
        sensors=dict(first.sensors), tile_size_px=first.tile_size_px, gsd_m=first.gsd_m,
        num_timesteps=dict(first.num_timesteps), samples=records, grids=dict(first.grids), storage=first.storage,
        layout=first.layout, label_raster=first.label_raster,
    )  # fmt: skip
    report = _merged_report(part_dirs, output_dir, len(records), len(new_names), first.storage)
    report.dropped_sensors = drop_absent_sensors(merged)
    write_json_atomic(output_dir / REPORT_JSON, report.to_dict())
    save_dataset_info(output_dir, merged)
    return merged


def _check_compatible(part_dirs: list[Path], infos: list[DatasetInfo]) -> None:
    def layout(info: DatasetInfo) -> dict:
        return {
            "format_version": info.format_version, "storage": info.storage,
            "tile_size_px": info.tile_size_px, "gsd_m": info.gsd_m, "num_timesteps": info.num_timesteps,
            "sensors": {name: spec.to_dict() for name, spec in info.sensors.items()},
            "grids": {name: [g.to_dict() for g in grids] for name, grids in info.grids.items()},
            "layout": info.layout, "label_raster": info.label_raster,
        }  # fmt: skip

    reference = layout(infos[0])
    for part, info in zip(part_dirs[1:], infos[1:], strict=True):
        differing = [key for key, value in layout(info).items() if value != reference[key]]
        if differing:
            raise MergeError(
                f"{part} differs from {part_dirs[0]} in {differing}; merge only partitions of one "
                "conversion (same sensors, storage, tile size, GSD)"
            )


def _check_unique_ids(part_dirs: list[Path], infos: list[DatasetInfo]) -> None:
    owner: dict[str, Path] = {}
    for part, info in zip(part_dirs, infos, strict=True):
        for record in info.samples:
            if record.id in owner:
                raise MergeError(
                    f"sample id {record.id!r} is in both {owner[record.id]} and {part}; "
                    "partitions of one conversion never share a sample"
                )
            owner[record.id] = part


def _transfer(source: Path, target: Path, *, move: bool) -> None:
    """Copy (or move) one shard to `target` atomically, replacing what is there."""
    tmp = target.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{target.name}")
    try:
        if move:
            shutil.move(source, tmp)
        elif source.is_dir():
            shutil.copytree(source, tmp)
        else:
            shutil.copy2(source, tmp)
        remove_shard(target)
        os.replace(tmp, target)
    except BaseException:
        remove_shard(tmp)
        raise


def _remove_other_shards(shard_dir: Path, keep: set[str]) -> None:
    """Remove shards of an earlier merge into the same directory that this one does not use."""
    for path in shard_dir.iterdir():
        if path.name.startswith(("shard-", ".tmp-")) and path.name not in keep:
            remove_shard(path)


def _merged_report(part_dirs: list[Path], output_dir: Path, num_samples: int, num_shards: int, storage: str) -> ConvertReport:
    failures: list[Failure] = []
    absent: list[AbsentTimestep] = []
    input_bytes = empty_tiles = 0
    for part in part_dirs:
        path = part / REPORT_JSON
        if path.is_file():
            report = ConvertReport.from_dict(json.loads(path.read_text()))
            failures.extend(report.failures)
            absent.extend(report.absent_timesteps)
            input_bytes += report.input_bytes
            empty_tiles += report.empty_tiles
    return ConvertReport(
        output_dir=str(output_dir), num_samples=num_samples, num_shards=num_shards, shards_skipped=0,
        failures=failures, storage=storage, input_bytes=input_bytes, merged_from=[str(p) for p in part_dirs],
        empty_tiles=empty_tiles, absent_timesteps=absent,
    )  # fmt: skip
