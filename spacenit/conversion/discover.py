"""Find the GeoTIFFs of each sample: from a directory convention or a manifest.

Two directory layouts are understood:

* ``samples``: ``<root>/<sample_id>/<sensor>/<YYYY-MM-DD>.tif`` (one multiband
  file per date) or ``<root>/<sample_id>/<sensor>/<YYYY-MM-DD>/<band>.tif``
  (one file per band), with optional labels in ``<root>/labels.csv`` (columns
  ``sample_id,label[,split]``, or ``labels`` for multi-label samples, ``;``-separated).
  Static sensors (a DEM) may use any file name.
* ``class_folders`` (EuroSAT): ``<root>/[<split>/]<class>/<file>.tif``; every file
  is one sample of one sensor (``--sensor``, default Sentinel-2 L1C), labelled
  by its folder.

A manifest (CSV or JSON lines) is read by `spacenit.conversion.manifest`.

Dense tasks: a sample's label raster (one band of class values) is
``<root>/<sample_id>/label.tif`` in the ``samples`` layout, or the manifest's
``label_raster`` column.

Symbolic links are followed when they resolve inside the input root, in every
layout and in manifests; a link that resolves outside it makes its sample fail
with that reason (the input root is the boundary of what a conversion reads).
A sample that cannot be converted for a reason found here (an unknown sensor
folder, a path outside the input root, a duplicate id) keeps that reason in
`SampleInput.problem`; `convert` lists it in its failure report while every
good sample is converted.
"""

from __future__ import annotations

import csv
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from spacenit.sensors import REGISTRY

TIFF_SUFFIXES = (".tif", ".tiff")
#: The label raster of a sample in the `samples` layout (dense tasks).
LABEL_RASTER_NAMES = ("label.tif", "label.tiff")
_DATE = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})")
_SPLITS = {"train", "val", "validation", "test"}
LAYOUTS = ("auto", "samples", "class_folders", "manifest")


class InputLayoutError(ValueError):
    """The input directory does not follow a layout SpaceNit understands."""


@dataclass(frozen=True)
class RasterFile:
    """One GeoTIFF and the bands it holds."""

    path: Path
    #: Band names in the file's band order; None: the file holds all of the sensor's bands.
    bands: tuple[str, ...] | None = None


@dataclass
class Acquisition:
    """One timestep of one sensor: one multiband file, or one file per band."""

    date: str  # ISO date, or "" when unknown
    rasters: list[RasterFile]


@dataclass
class SampleInput:
    """The files of one sample, before conversion."""

    id: str
    #: sensor -> acquisitions, sorted by date
    files: dict[str, list[Acquisition]] = field(default_factory=dict)
    label: str | None = None
    split: str | None = None
    #: Why this sample cannot be converted, when discovery already knows it.
    problem: str | None = None
    #: The input the problem is about (defaults to the sample's first file).
    problem_path: str | None = None
    #: Multi-label samples: every class that applies (possibly none); `label` is then None.
    labels: tuple[str, ...] | None = None
    #: (row, column) of this sample's tile when convert splits a scene into tiles (`tile_scenes`).
    tile: tuple[int, int] | None = None
    #: Per-pixel labels (one band of class values), for dense tasks.
    label_raster: RasterFile | None = None

    def paths(self) -> list[Path]:
        paths = [r.path for acquisitions in self.files.values() for a in acquisitions for r in a.rasters]
        return paths + ([self.label_raster.path] if self.label_raster is not None else [])

    def first_path(self) -> str:
        paths = self.paths()
        return str(paths[0]) if paths else self.id

    def fail(self, reason: str, path: str | Path | None = None) -> None:
        """Mark the sample as bad (the first reason wins)."""
        if self.problem is None:
            self.problem = reason
            self.problem_path = str(path) if path is not None else self.first_path()


def _is_tiff(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in TIFF_SUFFIXES


def outside_root(path: Path, real_root: Path) -> bool:
    """Whether `path`, its links resolved, lies outside the (resolved) input root."""
    return not path.resolve().is_relative_to(real_root)


def _link_problem(path: Path, real_root: Path) -> str:
    return (f"{path} is a link to {path.resolve()}, outside the input root {real_root}; conversion reads only "
            "files under the input root: copy the file in, or convert from a folder that contains both")  # fmt: skip


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


def discover(
    root: str | Path, layout: str = "auto", sensor: str = "sentinel2_l1c", manifest: str | Path | None = None
) -> list[SampleInput]:
    """List the samples under `root`, duplicates marked. Raises InputLayoutError naming what is wrong."""
    root = Path(root)
    if not root.is_dir():
        raise InputLayoutError(f"input directory {root} does not exist")
    if layout not in LAYOUTS:
        raise InputLayoutError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if manifest is not None or layout == "manifest":
        from spacenit.conversion.manifest import read_manifest

        if manifest is None:
            raise InputLayoutError("the manifest layout needs a manifest file (--manifest FILE.csv|.jsonl)")
        return read_manifest(manifest, root)
    if not any(root.iterdir()):
        raise InputLayoutError(
            f"input directory {root} is empty; put GeoTIFFs in it as "
            "<sample>/<sensor>/<date>.tif or <class>/<file>.tif"
        )
    if layout == "auto":
        layout = detect_layout(root)
    if layout == "samples":
        samples = _discover_samples(root)
    else:
        REGISTRY.get(sensor)  # unknown sensor names fail here, with the known list
        samples = mark_duplicates(_discover_class_folders(root, sensor))
    real_root = root.resolve()
    for sample in samples:
        escaping = next((p for p in sample.paths() if outside_root(p, real_root)), None)
        if escaping is not None:
            sample.fail(_link_problem(escaping, real_root), escaping)
    if not samples:
        raise InputLayoutError(
            f"no GeoTIFFs (*.tif, *.tiff) found under {root} in the {layout!r} layout; expected "
            "<sample>/<sensor>/<date>.tif or <class>/<file>.tif"
        )
    return samples


def mark_duplicates(samples: list[SampleInput]) -> list[SampleInput]:
    """Mark every sample whose id occurs more than once, naming the other files with that id."""
    by_id: dict[str, list[SampleInput]] = defaultdict(list)
    for s in samples:
        by_id[s.id].append(s)
    for same in by_id.values():
        if len(same) > 1:
            for s in same:
                others = [o.first_path() for o in same if o is not s]
                s.fail(f"sample id {s.id!r} occurs {len(same)} times (also {', '.join(others)}); ids must be unique")
    return samples


def _read_labels(root: Path) -> dict[str, tuple[str | None, str | None, tuple[str, ...] | None]]:
    """sample id -> (label, split, labels) from `labels.csv`; `labels` (multi-label) is `;`-separated."""
    path = root / "labels.csv"
    if not path.exists():
        return {}
    out = {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "sample_id" not in reader.fieldnames:
            raise InputLayoutError(f"{path} must have a header with a sample_id column (and label or labels, split)")
        for row in reader:
            cell = row.get("labels") or ""
            labels = tuple(sorted({lbl.strip() for lbl in cell.split(";") if lbl.strip()})) if cell.strip() else None
            out[row["sample_id"]] = (row.get("label") or None, row.get("split") or None, labels)
    return out


def _discover_samples(root: Path) -> list[SampleInput]:
    labels = _read_labels(root)
    samples = []
    for sample_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        sample = SampleInput(id=sample_dir.name)
        for sensor_dir in sorted(p for p in sample_dir.iterdir() if p.is_dir()):
            acquisitions = _acquisitions(sensor_dir)
            if not acquisitions:
                continue
            sample.files[sensor_dir.name] = acquisitions
            if sensor_dir.name not in REGISTRY:
                sample.fail(
                    f"unknown sensor folder {sensor_dir.name!r}; known sensors: {REGISTRY.names()} "
                    "(or add yours with --sensor-yaml)",
                    sensor_dir,
                )
        label_raster = next((sample_dir / n for n in LABEL_RASTER_NAMES if _is_tiff(sample_dir / n)), None)
        sample.label_raster = RasterFile(label_raster) if label_raster is not None else None
        if sample.files:
            sample.label, sample.split, sample.labels = labels.get(sample.id, (None, None, None))
            if sample.label is not None and sample.labels is not None:
                sample.fail(f"{root / 'labels.csv'}: sample {sample.id!r} has a `label` and `labels`; give one")
            samples.append(sample)
    return samples


def _acquisitions(sensor_dir: Path) -> list[Acquisition]:
    """`<date>.tif` files (multiband) and `<date>/<band>.tif` folders (one file per band)."""
    acquisitions = [Acquisition(date_from_name(p.name), [RasterFile(p)]) for p in sensor_dir.iterdir() if _is_tiff(p)]
    for date_dir in (p for p in sensor_dir.iterdir() if p.is_dir()):
        rasters = [RasterFile(p, (p.stem,)) for p in sorted(date_dir.iterdir()) if _is_tiff(p)]
        if rasters:
            acquisitions.append(Acquisition(date_from_name(date_dir.name), rasters))
    return sorted(acquisitions, key=lambda a: (a.date, str(a.rasters[0].path)))


def _files_following_links(root: Path) -> list[Path]:
    """Every file under `root`, descending into linked folders too, in sorted order.

    Only a link back to a folder on its own path (a cycle) is not descended into: its files
    are listed under their own path already. A folder reached by two paths lists its files
    twice, and their sample ids then fail as duplicates naming each other: never a silent skip.
    """
    out = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        here = Path(folder)
        ancestors = {here.resolve(), *here.resolve().parents}
        dirs[:] = [d for d in dirs if (here / d).resolve() not in ancestors]
        out += [here / f for f in files]
    return sorted(out)


def _discover_class_folders(root: Path, sensor: str) -> list[SampleInput]:
    samples = []
    for path in _files_following_links(root):
        if path.suffix.lower() not in TIFF_SUFFIXES:
            continue
        if not path.is_file():  # a link to nothing
            samples.append(SampleInput(id=path.stem, problem=f"{path} is a broken link (to {os.readlink(path)})",
                                       problem_path=str(path)))  # fmt: skip
            continue
        rel = path.relative_to(root).parts
        if len(rel) < 2:
            raise InputLayoutError(
                f"{path} lies directly in {root}; the class_folders layout needs <class>/<file>.tif"
            )
        label = rel[-2]
        split = rel[-3] if len(rel) >= 3 and rel[-3].lower() in _SPLITS else None
        acquisition = Acquisition(date_from_name(path.name), [RasterFile(path)])
        samples.append(SampleInput(id=path.stem, files={sensor: [acquisition]}, label=label, split=split))
    return samples
