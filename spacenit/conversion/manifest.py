"""Read a manifest: one row per GeoTIFF, grouped into samples.

A manifest is a CSV file (with a header) or a JSON-lines file (one object per
line) with these columns:

======== ========= ==================================================================
column   required  meaning
======== ========= ==================================================================
sample_id yes      rows with the same id form one sample
sensor   yes       a registered sensor name
path     yes       the GeoTIFF, relative to the input root (it may not leave the root)
date     no        ISO date (YYYY-MM-DD) of the acquisition; empty for static sensors
label    no        the sample's label (the same on all of its rows)
labels   no        multi-label samples: every class that applies (CSV: separated by
                   ``;``; JSON: a list); a sample has ``label`` or ``labels``, not both
split    no        train / val / test
bands    no        band names the file holds, in file order (CSV: separated by spaces;
                   JSON: a list), ``_`` for a band to skip; empty: the file holds all
                   of the sensor's bands
label_raster no    dense tasks: the sample's label raster (one band of class values),
                   relative to the input root; on any of the sample's rows
======== ========= ==================================================================

Rows of one sample, sensor and date are one timestep: one multiband file, or
one file per band. A row that cannot be used (unknown sensor, a path outside
the root, a missing file, a bad date, conflicting rows) marks its sample as
failed with the row number and the reason; a manifest that cannot be parsed at
all raises `ManifestError`.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from spacenit.conversion.discover import Acquisition, InputLayoutError, RasterFile, SampleInput
from spacenit.conversion.geotiff import SKIP_BAND
from spacenit.sensors import REGISTRY

REQUIRED_COLUMNS = ("sample_id", "sensor", "path")
OPTIONAL_COLUMNS = ("date", "label", "labels", "split", "bands", "label_raster")


class ManifestError(InputLayoutError):
    """A manifest file that cannot be parsed; the message names the file, the line and the fix."""


@dataclass
class ManifestRow:
    line: int
    sample_id: str
    sensor: str
    path: str
    date: str = ""
    label: str | None = None
    split: str | None = None
    bands: tuple[str, ...] | None = None
    labels: tuple[str, ...] | None = None
    label_raster: str | None = None


def read_manifest(manifest: str | Path, root: str | Path) -> list[SampleInput]:
    """The samples of `manifest`, their files resolved under `root`."""
    manifest, root = Path(manifest), Path(root)
    if not manifest.is_file():
        raise ManifestError(f"manifest {manifest} does not exist")
    rows = list(_parse(manifest))
    if not rows:
        raise ManifestError(f"manifest {manifest} has no rows; add one row per GeoTIFF ({', '.join(REQUIRED_COLUMNS)})")
    samples: dict[str, SampleInput] = {}
    first_row: dict[str, ManifestRow] = {}
    real_root, resolve = root.resolve(), _resolver()
    for row in rows:
        sample = samples.setdefault(
            row.sample_id, SampleInput(id=row.sample_id, label=row.label, split=row.split, labels=row.labels)
        )
        first = first_row.setdefault(row.sample_id, row)
        _add_row(sample, row, first, real_root, manifest, resolve)
    return list(samples.values())


def _resolver() -> Callable[[Path], Path]:
    """`Path.resolve` for many files in a few folders: each folder is resolved once (a
    resolve checks every component of the path), and a file only when it is a symlink."""
    folders: dict[Path, Path] = {}

    def resolve(path: Path) -> Path:
        if path.name in ("", ".", ".."):
            return path.resolve()
        folder = folders.get(path.parent)
        if folder is None:
            folder = folders[path.parent] = path.parent.resolve()
        real = folder / path.name
        return real.resolve() if real.is_symlink() else real

    return resolve


def _parse(manifest: Path) -> Iterator[ManifestRow]:
    suffix = manifest.suffix.lower()
    if suffix == ".csv":
        yield from _parse_csv(manifest)
    elif suffix in (".jsonl", ".ndjson"):
        yield from _parse_jsonl(manifest)
    else:
        raise ManifestError(f"manifest {manifest} must be a .csv or a .jsonl (JSON lines) file")


def _check_columns(manifest: Path, columns: list[str], where: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    unknown = [c for c in columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if missing or unknown:
        raise ManifestError(
            f"{manifest} {where}: " + (f"missing column(s) {missing}; " if missing else "")
            + (f"unknown column(s) {unknown}; " if unknown else "")
            + f"columns are {list(REQUIRED_COLUMNS)} and optionally {list(OPTIONAL_COLUMNS)}"
        )  # fmt: skip


def _parse_csv(manifest: Path) -> Iterator[ManifestRow]:
    with manifest.open(newline="") as f:
        reader = csv.DictReader(f)
        _check_columns(manifest, list(reader.fieldnames or []), "header")
        for record in reader:
            yield _row(manifest, reader.line_num, record)


def _parse_jsonl(manifest: Path) -> Iterator[ManifestRow]:
    with manifest.open() as f:
        for line_num, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{manifest} line {line_num} is not valid JSON ({e})") from None
            if not isinstance(record, dict):
                raise ManifestError(f"{manifest} line {line_num} must be a JSON object, got {type(record).__name__}")
            _check_columns(manifest, list(record), f"line {line_num}")
            yield _row(manifest, line_num, record)


def _row(manifest: Path, line: int, record: dict) -> ManifestRow:
    def text(key: str) -> str:
        value = record.get(key)
        return "" if value is None else str(value).strip()

    for key in REQUIRED_COLUMNS:
        if not text(key):
            raise ManifestError(f"{manifest} line {line}: the {key!r} column is empty")
    bands = record.get("bands")
    if isinstance(bands, str):
        bands = bands.split()
    labels = record.get("labels")
    if isinstance(labels, str):  # CSV; an empty cell is no `labels`, a JSON [] is a sample without classes
        labels = [lbl for lbl in labels.split(";") if lbl.strip()] if labels.strip() else None
    if labels is not None and not isinstance(labels, list):
        raise ManifestError(f"{manifest} line {line}: `labels` must be a list of class names, got {labels!r}")
    return ManifestRow(
        line=line, sample_id=text("sample_id"), sensor=text("sensor"), path=text("path"),
        date=text("date"), label=text("label") or None, split=text("split") or None,
        bands=tuple(str(b) for b in bands) if bands else None,
        labels=tuple(sorted({str(lbl).strip() for lbl in labels})) if labels is not None else None,
        label_raster=text("label_raster") or None,
    )  # fmt: skip


def _add_row(
    sample: SampleInput, row: ManifestRow, first: ManifestRow, root: Path, manifest: Path, resolve: Callable[[Path], Path]
) -> None:
    """Add `row` to `sample`, or mark the sample failed with the row's problem."""
    where = f"{manifest} line {row.line}"
    if row.label_raster is not None:
        _add_label_raster(sample, row, root, where, resolve)
    path = Path(row.path) if Path(row.path).is_absolute() else root / row.path
    real = resolve(path)
    problem = _row_problem(row, path, real, root, first)
    acquisitions = sample.files.setdefault(row.sensor, [])
    same_date = next((a for a in acquisitions if a.date == _iso_date(row.date)), None)
    if problem is None and same_date is not None:
        problem = _overlap_problem(row, same_date)
    if problem is not None:
        sample.fail(f"{where}: {problem}", path)
        return
    raster = RasterFile(real, row.bands)
    if same_date is None:
        acquisitions.append(Acquisition(_iso_date(row.date), [raster]))
        acquisitions.sort(key=lambda a: a.date)
    else:
        same_date.rasters.append(raster)


def _add_label_raster(sample: SampleInput, row: ManifestRow, root: Path, where: str, resolve: Callable[[Path], Path]) -> None:
    path = Path(row.label_raster) if Path(row.label_raster).is_absolute() else root / row.label_raster
    real = resolve(path)
    if not real.is_relative_to(root):
        sample.fail(f"{where}: label raster {row.label_raster!r} escapes the input root {root}", path)
    elif not real.is_file():
        sample.fail(f"{where}: label raster {path} does not exist", path)
    elif sample.label_raster is not None and sample.label_raster.path != real:
        sample.fail(f"{where}: a second label raster {path} for sample {row.sample_id!r} "
                    f"(also {sample.label_raster.path}); give one per sample", path)  # fmt: skip
    else:
        sample.label_raster = RasterFile(real)


def _row_problem(row: ManifestRow, path: Path, real: Path, root: Path, first: ManifestRow) -> str | None:
    if row.sensor not in REGISTRY:
        return f"unknown sensor {row.sensor!r}; known sensors: {REGISTRY.names()} (or add yours with --sensor-yaml)"
    if not real.is_relative_to(root):
        return f"path {row.path!r} escapes the input root {root}; a manifest may only name files under it"
    if not real.is_file():
        return f"{path} does not exist"
    if row.date and not _iso_date(row.date):
        return f"date {row.date!r} is not an ISO date (YYYY-MM-DD)"
    spec = REGISTRY.get(row.sensor)
    unknown = [b for b in row.bands or () if b not in spec.bands and b != SKIP_BAND]
    if unknown:
        return f"sensor {row.sensor!r} has no band(s) {unknown}; its bands are {list(spec.bands)}"
    if row.label is not None and row.labels is not None:
        return "a sample has a `label` (one class) or `labels` (multi-label), not both"
    if (row.label, row.labels, row.split) != (first.label, first.labels, first.split):
        return (
            f"label/labels/split ({row.label}, {row.labels}, {row.split}) differ from line {first.line} "
            f"({first.label}, {first.labels}, {first.split}) of the same sample"
        )
    return None


def _overlap_problem(row: ManifestRow, acquisition: Acquisition) -> str | None:
    """Two rows giving the same band of the same sensor and date: a duplicate sample id or row."""
    spec = REGISTRY.get(row.sensor)
    given = set(row.bands or spec.bands) - {SKIP_BAND}
    for raster in acquisition.rasters:
        if given & set(raster.bands or spec.bands):
            return (
                f"sample id {row.sample_id!r} already has {row.sensor} on date {row.date or '(none)'} "
                f"from {raster.path}; a duplicate sample id or row"
            )
    return None


def _iso_date(text: str) -> str:
    """`2021-06-01` -> itself; "" for empty or malformed dates."""
    try:
        return dt.date.fromisoformat(text).isoformat() if text else ""
    except ValueError:
        return ""
