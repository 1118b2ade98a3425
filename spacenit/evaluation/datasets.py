"""Benchmark tasks: a converted dataset plus the truth a probe is scored against.

- `eurosat`: EuroSAT MS chips (Sentinel-2 L1C, 10 classes), converted through a
  manifest naming the files' band order (B8A last, as EuroSAT ships them). The
  folder holds one split only, so the task is scored by 5-fold cross-fitting
  (see `splits.py`).
- `bigearthnet`: BigEarthNet v1 patches, Sentinel-2 L2A (12 bands, 120 px)
  + Sentinel-1 (VV, VH), multi-label with the 19-class nomenclature; the
  train/val/test split comes with the data. The source has no georeferencing,
  so the dataset is written directly (no CRS, no bounds) instead of through
  `convert`, which needs a CRS.
- any directory written by `convert` whose samples carry labels: `label`, or `labels`
  for multi-label samples (a manifest's `labels` column).

Prepared datasets are cached under a work directory and reused.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio

from spacenit.data.format import (
    DATASET_JSON,
    DatasetInfo,
    SampleRecord,
    load_dataset_info,
    save_dataset_info,
)
from spacenit.data.shards import write_zarr_shard
from spacenit.data.stats import STATS_JSON, compute_stats
from spacenit.evaluation.errors import ProbeError
from spacenit.sensors import SENTINEL1, SENTINEL2_L2A

HOLDOUT = "holdout"
CROSSFIT = "crossfit"


@dataclass
class Task:
    """What a benchmark scores: samples of a dataset and their truth."""

    name: str
    dataset_dir: Path
    ids: list[str]
    #: (N,) class index, or (N, C) 0/1 for multi-label tasks.
    targets: np.ndarray
    class_names: list[str]
    #: Per sample "train" / "val" / "test" / None, as the data provides it.
    splits: list[str | None]
    #: HOLDOUT (the data's split, else a stratified one) or CROSSFIT (k folds).
    protocol: str = HOLDOUT
    num_folds: int = 5

    @property
    def multilabel(self) -> bool:
        return self.targets.ndim == 2

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _ensure_stats(dataset_dir: Path) -> None:
    if not (dataset_dir / STATS_JSON).is_file():
        compute_stats(dataset_dir, progress=False)


def task_from_dataset(dataset_dir: str | Path, *, name: str | None = None, protocol: str = HOLDOUT) -> Task:
    """A task from a converted dataset's own labels (and splits): single-label from `label`,
    multi-label when the samples carry `labels` instead."""
    dataset_dir = Path(dataset_dir)
    info = load_dataset_info(dataset_dir)
    single = sum(s.label is not None for s in info.samples)
    multi = sum(s.labels is not None for s in info.samples)
    if single + multi != len(info.samples) or (single and multi):
        raise ProbeError(
            f"{dataset_dir}: {single} samples have a `label`, {multi} have `labels` (multi-label) and "
            f"{len(info.samples) - single - multi} have neither; a task needs every sample labelled, one way"
        )
    classes = info.classes
    if len(classes) < 2:
        raise ProbeError(f"{dataset_dir}: a task needs at least two classes, found {classes}")
    _ensure_stats(dataset_dir)
    if multi:
        targets = np.zeros((len(info.samples), len(classes)), dtype=np.int64)
        for i, s in enumerate(info.samples):
            targets[i, [classes.index(lbl) for lbl in s.labels]] = 1
    else:
        targets = np.array([classes.index(s.label) for s in info.samples])
    return Task(name or dataset_dir.name, dataset_dir, [s.id for s in info.samples], targets, classes,
                [s.split for s in info.samples], protocol)  # fmt: skip


#: Band order of the EuroSAT MS GeoTIFFs (B8A last), unlike Sentinel-2 L1C's (B8A after B08): the per-band
#: means of the chips show it (B09 ~730, B10 ~12, B11 ~1860, B12 ~1160, B8A ~2590 reflectance x 10000).
EUROSAT_FILE_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A")


def eurosat_task(data_root: str | Path, work_dir: str | Path) -> Task:
    """EuroSAT MS from `data_root/eurosat_ms/<split>/<class>/<file>.tif`, converted once into `work_dir/eurosat_ms`
    through a manifest that names each file's bands (`EUROSAT_FILE_BANDS`)."""
    from spacenit.conversion.convert import convert

    source, out = Path(data_root) / "eurosat_ms", Path(work_dir) / "eurosat_ms"
    if not (out / DATASET_JSON).is_file():
        manifest = Path(work_dir) / "eurosat_ms_manifest.csv"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        with manifest.open("w", newline="") as f:
            rows = csv.writer(f)
            rows.writerow(["sample_id", "sensor", "path", "label", "split", "bands"])
            for tif in sorted(source.rglob("*.tif")):
                parts = tif.relative_to(source).parts  # [<split>/]<class>/<file>.tif
                split = parts[-3] if len(parts) > 2 else ""
                rows.writerow([tif.stem, "sentinel2_l1c", "/".join(parts), parts[-2], split, " ".join(EUROSAT_FILE_BANDS)])
        report = convert(source, out, layout="manifest", manifest=manifest, progress=False)
        if report.failures:
            raise ProbeError(f"EuroSAT conversion failed for {len(report.failures)} files, e.g. {report.failures[0]}")
    return task_from_dataset(out, name="eurosat", protocol=CROSSFIT)


def _s2_date(patch_id: str) -> str:
    stamp = patch_id.split("_")[2]  # S2A_MSIL2A_20170613T101031_39_24 -> 20170613T101031
    return f"{stamp[0:4]}-{stamp[4:6]}-{stamp[6:8]}"


def _read_named(path: Path, bands: tuple[str, ...]) -> np.ndarray:
    """Read the bands of `path` by their descriptions, in the order of `bands` -> (C, H, W) float32."""
    with rasterio.open(path) as src:
        names = list(src.descriptions)
        missing = [b for b in bands if b not in names]
        if missing:
            raise ProbeError(f"{path} lacks bands {missing} (it has {names})")
        return np.stack([src.read(names.index(b) + 1) for b in bands]).astype(np.float32)


def prepare_bigearthnet(source: str | Path, out: str | Path) -> Path:
    """Write BigEarthNet v1 (s2/*_12band_120px.tif + s1/*_S1.tif + labels.json) as a SpaceNit dataset."""
    source, out = Path(source), Path(out)
    if (out / DATASET_JSON).is_file() and all(s.labels is not None for s in load_dataset_info(out).samples):
        return out  # prepared before (without `labels`: by an older SpaceNit, so prepared again)
    entries = json.loads((source / "labels.json").read_text())
    s2, s1, records = [], [], []
    for row, e in enumerate(entries):
        pid = e["patch_id"]
        s2.append(_read_named(source / "s2" / f"{pid}_12band_120px.tif", SENTINEL2_L2A.bands)[None])  # (1, 12, H, W)
        s1.append(_read_named(source / "s1" / f"{pid}_S1.tif", SENTINEL1.bands)[None])  # (1, 2, H, W)
        # The S1 acquisition date is not in the source: unknown ("").
        dates = {SENTINEL2_L2A.name: [_s2_date(pid)], SENTINEL1.name: [""]}
        records.append(SampleRecord(id=pid, shard="shards/shard-00000.zarr", row=row, dates=dates, split=e.get("split"),
                                    labels=sorted(e["labels_19"])))  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "shards").mkdir(exist_ok=True)
    write_zarr_shard(out / "shards" / "shard-00000.zarr", {SENTINEL2_L2A.name: np.stack(s2), SENTINEL1.name: np.stack(s1)})
    info = DatasetInfo(
        sensors={SENTINEL2_L2A.name: SENTINEL2_L2A, SENTINEL1.name: SENTINEL1},
        tile_size_px=int(s2[0].shape[-1]), gsd_m=10.0,
        num_timesteps={SENTINEL2_L2A.name: 1, SENTINEL1.name: 1}, samples=records,
    )  # fmt: skip
    save_dataset_info(out, info)
    return out


def bigearthnet_task(data_root: str | Path, work_dir: str | Path) -> Task:
    """BigEarthNet v1 from `data_root/bigearthnet/v1`: multi-label (19 classes), the data's split."""
    out = prepare_bigearthnet(Path(data_root) / "bigearthnet" / "v1", Path(work_dir) / "bigearthnet")
    return task_from_dataset(out, name="bigearthnet", protocol=HOLDOUT)


BUILTIN_TASKS = {"eurosat": eurosat_task, "bigearthnet": bigearthnet_task}


def load_task(name: str, *, data_root: str | Path, work_dir: str | Path) -> Task:
    """A built-in task by name, or a converted labelled dataset by path."""
    if name in BUILTIN_TASKS:
        return BUILTIN_TASKS[name](data_root, work_dir)
    if Path(name).is_dir():
        return task_from_dataset(name)
    raise ProbeError(f"unknown task {name!r}: use one of {sorted(BUILTIN_TASKS)} or the path of a converted, labelled dataset")
