"""BigEarthNet as a SpaceNit dataset, from either published layout.

- **v1** (the configilm sample in ../shared/data/bigearthnet/v1): `labels.json`
  (patch_id, labels_19, split), Sentinel-2 L2A as `s2/<patch_id>.npz` (one array
  per band at its native size: 10 m bands 120 px, 20 m 60 px, 60 m 20 px) and the
  same bands nearest-upsampled to one 120 px stack `s2/<patch_id>_12band_120px.tif`,
  Sentinel-1 as `s1/<patch_id>_S1.tif` (VV, VH in dB). No georeferencing: samples
  have no CRS. `layout="native"` reads the .npz (each band group on its own grid);
  `layout="one_grid"` reads the upsampled stack (every band at 10 m), for comparison.
- **v2** (reBEN, Clasen et al. 2024): `metadata.parquet` (or `metadata.json` /
  `.csv` with the same columns: patch_id, labels, split, s1_name), Sentinel-2 as
  one GeoTIFF per band at its native resolution
  `BigEarthNet-S2/<tile>/<patch_id>/<patch_id>_<band>.tif`, Sentinel-1 as
  `BigEarthNet-S1/<tile>/<s1_name>/<s1_name>_<VV|VH>.tif`. The files are
  georeferenced, so v2 goes through `convert` (a manifest written beside the output).

Both give multi-label samples (`labels`, the 19-class nomenclature) with the data's split.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import rasterio

from spacenit.conversion.writer import write_dataset
from spacenit.data.format import (
    DATASET_JSON,
    DatasetFormatError,
    DatasetInfo,
    SampleRecord,
    load_dataset_info,
)
from spacenit.data.shards import array_key
from spacenit.sensors import SENTINEL, SENTINEL1, SENTINEL2_L2A

LAYOUTS = ("native", "one_grid")
#: BigEarthNet v1 patches are 1.2 km: 120 pixels of 10 m.
PATCH_PX = 120
GSD_M = 10.0


class BigEarthNetError(DatasetFormatError):
    """A folder that is not BigEarthNet in either published layout; the message says what is missing."""


def detect_version(source: Path) -> str:
    """"v1" (labels.json + s2/*.npz) or "v2" (metadata.* + BigEarthNet-S2/)."""
    if (source / "labels.json").is_file() and (source / "s2").is_dir():
        return "v1"
    if any((source / f"metadata.{ext}").is_file() for ext in ("parquet", "json", "csv")):
        return "v2"
    raise BigEarthNetError(
        f"{source} is not BigEarthNet: expected labels.json and s2/ (v1) or metadata.parquet and "
        "BigEarthNet-S2/ (v2, reBEN)"
    )


def prepare_bigearthnet(source: str | Path, out: str | Path, *, layout: str = "native") -> Path:
    """Write the BigEarthNet folder `source` (v1 or v2) as a dataset at `out`, unless one is there."""
    source, out = Path(source), Path(out)
    if layout not in LAYOUTS:
        raise BigEarthNetError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if (out / DATASET_JSON).is_file():
        try:
            if load_dataset_info(out).layout == layout:
                return out
        except DatasetFormatError:
            pass  # written by another SpaceNit: prepare it again
    version = detect_version(source)
    if version == "v1":
        _write_v1(source, out, layout)
    else:
        _convert_v2(source, out, layout)
    return out


def _write_v1(source: Path, out: Path, layout: str) -> DatasetInfo:
    entries = json.loads((source / "labels.json").read_text())
    grids = {
        SENTINEL2_L2A.name: SENTINEL2_L2A.native_grids() if layout == "native" else SENTINEL2_L2A.one_grid(GSD_M),
        SENTINEL1.name: SENTINEL1.native_grids(),
    }

    def samples():
        for e in entries:
            pid = e["patch_id"]
            arrays = {array_key(SENTINEL1.name, "10m"): _read_tif(source / "s1" / f"{pid}_S1.tif", SENTINEL1.bands)[None]}
            if layout == "native":
                bands = np.load(source / "s2" / f"{pid}.npz")
                for grid in grids[SENTINEL2_L2A.name]:
                    missing = [b for b in grid.bands if b not in bands]
                    if missing:
                        raise BigEarthNetError(f"{source / 's2' / f'{pid}.npz'} lacks band(s) {missing}")
                    arrays[array_key(SENTINEL2_L2A.name, grid.name)] = np.stack([bands[b] for b in grid.bands])[None].astype(np.float32)
            else:
                stack = _read_tif(source / "s2" / f"{pid}_12band_120px.tif", SENTINEL2_L2A.bands)
                arrays[array_key(SENTINEL2_L2A.name, grids[SENTINEL2_L2A.name][0].name)] = stack[None]
            # The S1 acquisition date is not in the source: unknown ("").
            dates = {SENTINEL2_L2A.name: [_s2_date(pid)], SENTINEL1.name: [""]}
            present = {SENTINEL2_L2A.name: [True], SENTINEL1.name: [True]}
            record = SampleRecord(id=pid, shard="", row=-1, dates=dates, present=present, split=e.get("split"),
                                  labels=sorted(e.get("labels_19") or e.get("labels") or []))  # fmt: skip
            yield record, arrays

    return write_dataset(out, {SENTINEL2_L2A.name: SENTINEL2_L2A, SENTINEL1.name: SENTINEL1}, grids,
                         {SENTINEL2_L2A.name: 1, SENTINEL1.name: 1}, samples(), tile_size_px=PATCH_PX, gsd_m=GSD_M,
                         layout=layout)  # fmt: skip


def _read_tif(path: Path, bands: tuple[str, ...]) -> np.ndarray:
    """The bands of `path` in `bands` order (by description when the file names them) -> (C, H, W) float32."""
    if not path.is_file():
        raise BigEarthNetError(f"{path} is missing: the BigEarthNet folder is incomplete")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # v1 is bare arrays, known
        src = rasterio.open(path)
    with src:
        names = list(src.descriptions)
        if all(names):
            missing = [b for b in bands if b not in names]
            if missing:
                raise BigEarthNetError(f"{path} lacks bands {missing} (it has {names})")
            data = np.stack([src.read(names.index(b) + 1) for b in bands])
        elif src.count == len(bands):
            data = src.read()
        else:
            raise BigEarthNetError(f"{path} has {src.count} unnamed bands; expected {list(bands)}")
        values = data.astype(np.float32)
        if src.nodata is not None:
            values[data == src.nodata] = SENTINEL
    return values


def _s2_date(patch_id: str) -> str:
    stamp = patch_id.split("_")[2]  # S2A_MSIL2A_20170613T101031_39_24 -> 20170613T101031
    return f"{stamp[0:4]}-{stamp[4:6]}-{stamp[6:8]}"


def read_v2_metadata(source: Path) -> list[dict]:
    """The rows of reBEN's metadata (patch_id, labels, split, s1_name, ...), from parquet, JSON or CSV."""
    if (source / "metadata.parquet").is_file():
        import pyarrow.parquet as pq

        rows = pq.read_table(source / "metadata.parquet").to_pylist()
    elif (source / "metadata.json").is_file():
        rows = json.loads((source / "metadata.json").read_text())
    else:
        with (source / "metadata.csv").open(newline="") as f:
            rows = [dict(r, labels=[x for x in r["labels"].split(";") if x]) for r in csv.DictReader(f)]
    for i, row in enumerate(rows):
        missing = [k for k in ("patch_id", "labels") if k not in row]
        if missing:
            raise BigEarthNetError(f"{source}/metadata row {i} lacks {missing}; reBEN's metadata has patch_id, labels, "
                                   "split and s1_name")  # fmt: skip
    return rows


def _convert_v2(source: Path, out: Path, layout: str) -> None:
    """reBEN's per-band GeoTIFFs through `convert`, by a manifest written beside the output."""
    from spacenit.conversion.convert import convert

    rows = read_v2_metadata(source)
    s2_dirs = {p.name: p for p in (source / "BigEarthNet-S2").glob("*/*") if p.is_dir()}
    s1_dirs = {p.name: p for p in (source / "BigEarthNet-S1").glob("*/*") if p.is_dir()}
    manifest = out.parent / f"{out.name}.manifest.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with manifest.open("w") as f:
        for row in rows:
            pid, labels, split = row["patch_id"], sorted(row["labels"]), row.get("split")
            base = {"sample_id": pid, "labels": labels, "split": split}
            patch = s2_dirs.get(pid)
            for band in SENTINEL2_L2A.bands:
                path = patch / f"{pid}_{band}.tif" if patch else source / "BigEarthNet-S2" / pid / f"{pid}_{band}.tif"
                f.write(json.dumps({**base, "sensor": SENTINEL2_L2A.name, "path": str(path.relative_to(source)),
                                    "date": _s2_date(pid), "bands": [band]}) + "\n")  # fmt: skip
            s1_name = row.get("s1_name")
            if s1_name:
                s1 = s1_dirs.get(s1_name)
                for band in SENTINEL1.bands:
                    path = s1 / f"{s1_name}_{band}.tif" if s1 else source / "BigEarthNet-S1" / s1_name / f"{s1_name}_{band}.tif"
                    f.write(json.dumps({**base, "sensor": SENTINEL1.name, "path": str(path.relative_to(source)),
                                        "bands": [band]}) + "\n")  # fmt: skip
    convert(source, out, manifest=manifest, tile_size_px=PATCH_PX, gsd_m=GSD_M, one_grid=layout == "one_grid",
            progress=False)  # fmt: skip
