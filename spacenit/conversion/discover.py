"""Find the GeoTIFFs of each sample from a directory convention.

Two layouts are understood:

* ``samples``: ``<root>/<sample_id>/<sensor>/<YYYY-MM-DD>.tif``, with optional
  labels in ``<root>/labels.csv`` (columns ``sample_id,label[,split]``).
  Sensors without time (a DEM) may use any file name.
* ``class_folders`` (EuroSAT): ``<root>/[<split>/]<class>/<file>.tif``; every file
  is one sample of one sensor (``--sensor``, default Sentinel-2 L1C), labelled
  by its folder.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from spacenit.sensors import REGISTRY

TIFF_SUFFIXES = (".tif", ".tiff")
_DATE = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})")
_SPLITS = {"train", "val", "validation", "test"}


class InputLayoutError(ValueError):
    """The input directory does not follow a layout SpaceNit understands."""


@dataclass
class SampleInput:
    """The files of one sample, before conversion."""

    id: str
    #: sensor -> [(ISO date or "", path)], sorted by date
    files: dict[str, list[tuple[str, Path]]] = field(default_factory=dict)
    label: str | None = None
    split: str | None = None


def _is_tiff(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in TIFF_SUFFIXES


def date_from_name(name: str) -> str:
    """`2021-06-01.tif` or `S2_20210601.tif` -> `2021-06-01`; "" if the name has no date."""
    m = _DATE.search(name)
    return f"{m.group(1)}-{m.group(2)}-{m.group(3)}" if m else ""


def detect_layout(root: Path) -> str:
    """`samples` if sample/sensor folders are found, else `class_folders`."""
    for sample_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for sub in sample_dir.iterdir():
            if sub.is_dir() and sub.name in REGISTRY:
                return "samples"
    return "class_folders"


def discover(root: str | Path, layout: str = "auto", sensor: str = "sentinel2_l1c") -> list[SampleInput]:
    """List the samples under `root`. Raises InputLayoutError naming what is wrong."""
    root = Path(root)
    if not root.is_dir():
        raise InputLayoutError(f"input directory {root} does not exist")
    if not any(root.iterdir()):
        raise InputLayoutError(
            f"input directory {root} is empty; put GeoTIFFs in it as "
            "<sample>/<sensor>/<date>.tif or <class>/<file>.tif"
        )
    if layout == "auto":
        layout = detect_layout(root)
    if layout == "samples":
        samples = _discover_samples(root)
    elif layout == "class_folders":
        REGISTRY.get(sensor)  # unknown sensor names fail here, with the known list
        samples = _discover_class_folders(root, sensor)
    else:
        raise InputLayoutError(f"unknown layout {layout!r}; use auto, samples or class_folders")
    if not samples:
        raise InputLayoutError(
            f"no GeoTIFFs (*.tif, *.tiff) found under {root} in the {layout!r} layout; expected "
            "<sample>/<sensor>/<date>.tif or <class>/<file>.tif"
        )
    return samples


def _read_labels(root: Path) -> dict[str, tuple[str | None, str | None]]:
    path = root / "labels.csv"
    if not path.exists():
        return {}
    out = {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "sample_id" not in reader.fieldnames:
            raise InputLayoutError(f"{path} must have a header with a sample_id column (and label, split)")
        for row in reader:
            out[row["sample_id"]] = (row.get("label") or None, row.get("split") or None)
    return out


def _discover_samples(root: Path) -> list[SampleInput]:
    labels = _read_labels(root)
    samples = []
    for sample_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        sample = SampleInput(id=sample_dir.name)
        for sensor_dir in sorted(p for p in sample_dir.iterdir() if p.is_dir()):
            REGISTRY.get(sensor_dir.name)  # fails with the list of known sensors
            files = sorted((date_from_name(p.name), p) for p in sensor_dir.iterdir() if _is_tiff(p))
            if files:
                sample.files[sensor_dir.name] = files
        if sample.files:
            sample.label, sample.split = labels.get(sample.id, (None, None))
            samples.append(sample)
    return samples


def _discover_class_folders(root: Path, sensor: str) -> list[SampleInput]:
    samples = []
    for path in sorted(root.rglob("*")):
        if not (path.is_file() and path.suffix.lower() in TIFF_SUFFIXES):
            continue
        rel = path.relative_to(root).parts
        if len(rel) < 2:
            raise InputLayoutError(
                f"{path} lies directly in {root}; the class_folders layout needs <class>/<file>.tif"
            )
        label = rel[-2]
        split = rel[-3] if len(rel) >= 3 and rel[-3].lower() in _SPLITS else None
        samples.append(
            SampleInput(id=path.stem, files={sensor: [(date_from_name(path.name), path)]}, label=label, split=split)
        )
    return samples
