"""Benchmark tasks: a converted dataset plus the truth a probe is scored against.

- `eurosat`: EuroSAT MS chips (Sentinel-2 L1C, 10 classes), converted through a
  manifest naming the files' band order (B8A last, as EuroSAT ships them). The
  folder holds one split only, so the task is scored by 5-fold cross-fitting
  (see `splits.py`).
- `bigearthnet`: BigEarthNet patches, Sentinel-2 L2A (12 bands at 10, 20 and 60 m,
  each on its own grid) + Sentinel-1 (VV, VH), multi-label with the 19-class
  nomenclature; the train/val/test split comes with the data. v1 (bare arrays,
  no georeferencing) and v2 (reBEN) layouts: `spacenit.conversion.bigearthnet`.
- the published benchmark datasets of `published.py` (So2Sat LCZ42, Sen1Floods11,
  PASTIS, MADOS, GEO-Bench tasks, CDL crop types), each read from its own
  on-disk layout under the data root.
- any directory written by `convert` whose samples carry labels: `label`, or `labels`
  for multi-label samples (a manifest's `labels` column).
- segmentation tasks: datasets whose samples carry label rasters (`kind`
  "segmentation"); they are scored by the dense task type, not by these probes.
- a transfer task (`transfer_task`): a probe trained on one dataset and tested on
  another, which neither the model nor the probe saw.

Split names are normalized (`splits.normalize_split`): `validation` is `val`, and a
name no probe knows is refused. Prepared datasets are cached under a work directory
and reused.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from spacenit.conversion.bigearthnet import prepare_bigearthnet
from spacenit.data.format import (
    DATASET_JSON,
    load_dataset_info,
)
from spacenit.data.stats import STATS_JSON, compute_stats
from spacenit.evaluation import published
from spacenit.evaluation.errors import ProbeError
from spacenit.evaluation.splits import Fold, normalize_splits

HOLDOUT = "holdout"
CROSSFIT = "crossfit"
#: A probe trained on one dataset and tested on another: one fixed fold (`Task.fold`).
TRANSFER = "transfer"
CLASSIFICATION = "classification"
SEGMENTATION = "segmentation"


@dataclass
class Task:
    """What a benchmark scores: samples of a dataset and their truth."""

    name: str
    dataset_dir: Path
    ids: list[str]
    #: (N,) class index, or (N, C) 0/1 for multi-label tasks.
    targets: np.ndarray
    class_names: list[str]
    #: Per sample "train" / "val" / "test" / None: the data's split names, normalized (`splits.normalize_split`).
    splits: list[str | None]
    #: HOLDOUT (the data's split, else a stratified one), CROSSFIT (k folds) or TRANSFER (`fold`).
    protocol: str = HOLDOUT
    num_folds: int = 5
    #: CLASSIFICATION (a label or labels per sample) or SEGMENTATION (a label raster per sample).
    kind: str = CLASSIFICATION
    #: The dataset whose stats.json standardizes raw pixels (default: `dataset_dir`): a transfer
    #: task's test side is standardized with its training side's statistics only.
    stats_dir: Path | None = None
    #: TRANSFER: the tasks whose samples make up this one, in order (features are concatenated).
    parts: list[Task] | None = None
    #: TRANSFER: the one fold, indexes into the concatenated samples.
    fold: Fold | None = None

    @property
    def stats_path(self) -> Path:
        return Path(self.stats_dir or self.dataset_dir) / STATS_JSON

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
    splits = normalize_splits([s.split for s in info.samples], where=str(dataset_dir / DATASET_JSON))
    return Task(name or dataset_dir.name, dataset_dir, [s.id for s in info.samples], targets, classes, splits, protocol)


def segmentation_task(dataset_dir: str | Path, *, name: str | None = None) -> Task:
    """A segmentation task: a dataset whose samples carry label rasters (`convert` with label rasters,
    or the published segmentation datasets); class names from its label raster spec."""
    dataset_dir = Path(dataset_dir)
    info = load_dataset_info(dataset_dir)
    if info.label_raster is None or not any(s.label_raster for s in info.samples):
        raise ProbeError(f"{dataset_dir}: no sample has a label raster; a segmentation task needs them "
                         "(convert with <sample>/label.tif or a manifest's label_raster column)")  # fmt: skip
    _ensure_stats(dataset_dir)
    classes = list(info.label_raster.classes or [])
    splits = normalize_splits([s.split for s in info.samples], where=str(dataset_dir / DATASET_JSON))
    return Task(name or dataset_dir.name, dataset_dir, [s.id for s in info.samples], np.zeros(len(info.samples), dtype=np.int64),
                classes, splits, HOLDOUT, kind=SEGMENTATION)  # fmt: skip


def transfer_task(train: Task, test: Task) -> Task:
    """Train on `train`'s train/val samples (all of them when it names none), test on `test`'s test
    samples (all when it names none). Classes are the training side's, matched by name; the test side
    is standardized with the training side's statistics."""
    for t in (train, test):
        if t.kind != CLASSIFICATION or t.parts is not None:
            raise ProbeError(f"{t.name}: transfer works between classification tasks of one dataset each")
    if train.multilabel != test.multilabel:
        raise ProbeError(f"{train.name} is {'multi' if train.multilabel else 'single'}-label, {test.name} is not: "
                         "a probe cannot be trained on one and tested on the other")  # fmt: skip
    unseen = sorted(set(_present_classes(test)) - set(train.class_names))
    if unseen:
        raise ProbeError(f"{test.name} has classes {train.name} lacks: {unseen}; a probe trained on {train.name} "
                         f"predicts only {train.class_names}")  # fmt: skip
    columns = [train.class_names.index(c) for c in test.class_names if c in train.class_names]
    if test.multilabel:
        test_targets = np.zeros((len(test.ids), train.num_classes), dtype=np.int64)
        known = [i for i, c in enumerate(test.class_names) if c in train.class_names]
        test_targets[:, columns] = test.targets[:, known]
    else:
        test_targets = np.array([train.class_names.index(test.class_names[c]) for c in test.targets])
    train_idx = _side(train.splits, ("train", "val"))
    test_idx = len(train.ids) + _side(test.splits, ("test",))
    splits: list[str | None] = [None] * (len(train.ids) + len(test.ids))
    for i in train_idx:
        splits[i] = "train"
    for i in test_idx:
        splits[i] = "test"
    return Task(f"{train.name}->{test.name}", train.dataset_dir, train.ids + test.ids,
                np.concatenate([train.targets, test_targets]), train.class_names, splits, TRANSFER,
                parts=[train, replace(test, stats_dir=train.dataset_dir)], fold=Fold(train_idx, test_idx))  # fmt: skip


def _present_classes(task: Task) -> list[str]:
    if task.multilabel:
        return [c for i, c in enumerate(task.class_names) if task.targets[:, i].any()]
    return [task.class_names[i] for i in np.unique(task.targets)]


def _side(splits: list[str | None], wanted: tuple[str, ...]) -> np.ndarray:
    named = np.flatnonzero(np.isin(np.array([s or "" for s in splits]), wanted))
    return named if len(named) else np.arange(len(splits))


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


def published_task(name: str, data_root: str | Path, work_dir: str | Path) -> Task:
    """A published benchmark (`published.BENCHMARKS`) prepared from its on-disk layout under `data_root`."""
    return dataset_task(published.find(name).prepare(Path(data_root), Path(work_dir)), name=name)


def dataset_task(dataset_dir: str | Path, *, name: str | None = None) -> Task:
    """The task a converted dataset holds: segmentation when its samples have label rasters and no
    labels, classification otherwise."""
    info = load_dataset_info(dataset_dir)
    if info.label_raster is not None and all(s.label is None and s.labels is None for s in info.samples):
        return segmentation_task(dataset_dir, name=name)
    return task_from_dataset(dataset_dir, name=name)


def task_names() -> list[str]:
    return sorted(BUILTIN_TASKS) + sorted(published.BENCHMARKS) + [f"{published.GEOBENCH_PREFIX}<task>"]


def load_task(name: str, *, data_root: str | Path, work_dir: str | Path) -> Task:
    """A built-in or published task by name, or a converted labelled dataset by path (with label
    rasters: a segmentation task)."""
    if name in BUILTIN_TASKS:
        return BUILTIN_TASKS[name](data_root, work_dir)
    if published.knows(name):
        return published_task(name, data_root, work_dir)
    if Path(name).is_dir():
        return dataset_task(name)
    raise ProbeError(f"unknown task {name!r}: use one of {task_names()} or the path of a converted, labelled dataset")
