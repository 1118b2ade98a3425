"""Benchmark tasks: a converted dataset plus the truth a probe is scored against.

- `eurosat`: EuroSAT MS chips (Sentinel-2 L1C, 10 classes), converted through a
  manifest naming the files' band order (B8A last, as EuroSAT ships them). The
  folder holds one split only, so the task is scored by 5-fold cross-fitting
  (see `splits.py`).
- `bigearthnet`: BigEarthNet patches, Sentinel-2 L2A (12 bands at 10, 20 and 60 m,
  each on its own grid) + Sentinel-1 (VV, VH), multi-label with the 19-class
  nomenclature; the train/val/test split comes with the data. v1 (bare arrays,
  no georeferencing) and v2 (reBEN) layouts: `spacenit.conversion.bigearthnet`.
- any directory written by `convert` whose samples carry labels: `label`, or `labels`
  for multi-label samples (a manifest's `labels` column).

Prepared datasets are cached under a work directory and reused.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spacenit.conversion.bigearthnet import prepare_bigearthnet
from spacenit.data.format import (
    DATASET_JSON,
    load_dataset_info,
)
from spacenit.data.stats import STATS_JSON, compute_stats
from spacenit.evaluation.errors import ProbeError

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


def bigearthnet_task(data_root: str | Path, work_dir: str | Path) -> Task:
    """BigEarthNet from `data_root/bigearthnet/v1` (or `v2`, reBEN's layout): multi-label (19 classes),
    the data's split; Sentinel-2 at its native resolutions, Sentinel-1 beside it."""
    root = Path(data_root) / "bigearthnet"
    source = next((root / v for v in ("v2", "v1") if (root / v).is_dir()), root)
    out = prepare_bigearthnet(source, Path(work_dir) / "bigearthnet")
    return task_from_dataset(out, name="bigearthnet", protocol=HOLDOUT)


BUILTIN_TASKS = {"eurosat": eurosat_task, "bigearthnet": bigearthnet_task}


def load_task(name: str, *, data_root: str | Path, work_dir: str | Path) -> Task:
    """A built-in task by name, or a converted labelled dataset by path."""
    if name in BUILTIN_TASKS:
        return BUILTIN_TASKS[name](data_root, work_dir)
    if Path(name).is_dir():
        return task_from_dataset(name)
    raise ProbeError(f"unknown task {name!r}: use one of {sorted(BUILTIN_TASKS)} or the path of a converted, labelled dataset")
