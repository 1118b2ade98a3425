"""Sen1Floods11 (Bonafilia et al., CVPR-W 2020) hand-labelled flood chips as a SpaceNit dataset.

The release (the `sen1floods11` bucket, folder `v1.1/`) as read here:

    v1.1/data/flood_events/HandLabeled/S1Hand/<Location>_<id>_S1Hand.tif     VV, VH (dB), float32, NaN gaps
    v1.1/data/flood_events/HandLabeled/S2Hand/<Location>_<id>_S2Hand.tif     13 Sentinel-2 L1C bands, B1..B12 with B8A after B8
    v1.1/data/flood_events/HandLabeled/LabelHand/<Location>_<id>_LabelHand.tif  -1 no data, 0 not water, 1 water
    v1.1/splits/flood_handlabeled/flood_{train,valid,test,bolivia}_data.csv  "<..>_S1Hand.tif,<..>_LabelHand.tif" per line
    v1.1/Sen1Floods11_Metadata.geojson                                        per location: s1_date, s2_date (optional here)

512 x 512 chips at 10 m, georeferenced (EPSG:4326; a tile is one chip, its size read from the first). They go through `convert`
by a manifest written beside the output: Sentinel-1 as `sentinel1`, Sentinel-2 as
`sentinel2_l1c`, the hand labels as each sample's label raster (-1 ignored; classes
0 "not water", 1 "water"). Splits: train, valid -> val, test; the Bolivia chips (held
out by the authors as an unseen region) are their own dataset (`bolivia=True`), all test.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import rasterio

from spacenit.conversion.convert import convert
from spacenit.conversion.label_classes import has_label_classes, name_label_classes
from spacenit.data.format import DatasetFormatError
from spacenit.sensors import SENTINEL1, SENTINEL2_L1C

HANDLABELED = Path("data/flood_events/HandLabeled")
SPLITS = Path("splits/flood_handlabeled")
METADATA = "Sen1Floods11_Metadata.geojson"
SPLIT_FILES = {"train": "flood_train_data.csv", "val": "flood_valid_data.csv", "test": "flood_test_data.csv"}
BOLIVIA_FILE = "flood_bolivia_data.csv"
GSD_M = 10.0
IGNORE_VALUE = -1
CLASSES = ["not water", "water"]


class Sen1Floods11Error(DatasetFormatError):
    """A folder that is not Sen1Floods11 as published; the message says what is missing."""


def release_root(source: Path) -> Path:
    """The `v1.1` folder: `source` itself or its `v1.1/` child."""
    for root in (source, source / "v1.1"):
        if (root / HANDLABELED).is_dir() and (root / SPLITS).is_dir():
            return root
    raise Sen1Floods11Error(f"{source} is not Sen1Floods11: expected {HANDLABELED}/ and {SPLITS}/ in it or in its v1.1/")


def prepare_sen1floods11(source: str | Path, out: str | Path, *, bolivia: bool = False) -> Path:
    """Convert the hand-labelled chips of the train/valid/test splits (or, with `bolivia`, the Bolivia
    chips) into a dataset at `out`, unless one is there."""
    out = Path(out)
    if has_label_classes(out, CLASSES):
        return out
    root = release_root(Path(source))
    parts = {"test": BOLIVIA_FILE} if bolivia else SPLIT_FILES
    rows = [(split, s1_name, label_name) for split, name in parts.items() for s1_name, label_name in split_rows(root / SPLITS / name)]
    if not rows:
        raise Sen1Floods11Error(f"the split files {list(parts.values())} under {root / SPLITS} list no chip")
    dates = location_dates(root / METADATA)
    manifest = out.parent / f"{out.name}.manifest.jsonl"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    with manifest.open("w") as f:
        for split, s1_name, label_name in rows:
            chip = s1_name.removesuffix("_S1Hand.tif")
            location = chip.rsplit("_", 1)[0]
            s1_date, s2_date = dates.get(location, ("", ""))
            base = {"sample_id": chip, "split": split, "label_raster": str(HANDLABELED / "LabelHand" / label_name)}
            f.write(json.dumps({**base, "sensor": SENTINEL1.name, "date": s1_date, "bands": list(SENTINEL1.bands),
                                "path": str(HANDLABELED / "S1Hand" / s1_name)}) + "\n")  # fmt: skip
            f.write(json.dumps({**base, "sensor": SENTINEL2_L1C.name, "date": s2_date, "bands": list(SENTINEL2_L1C.bands),
                                "path": str(HANDLABELED / "S2Hand" / f"{chip}_S2Hand.tif")}) + "\n")  # fmt: skip
    chip_px = _chip_px(root / HANDLABELED / "S1Hand" / rows[0][1])
    report = convert(root, out, manifest=manifest, tile_size_px=chip_px, gsd_m=GSD_M,
                     label_ignore_value=IGNORE_VALUE, progress=False)  # fmt: skip
    if report.failures:
        first = report.failures[0]
        raise Sen1Floods11Error(f"{len(report.failures)} Sen1Floods11 chip(s) could not be converted, e.g. "
                                f"{first.sample_id}: {first.reason} (all in {out / 'convert_report.json'})")  # fmt: skip
    name_label_classes(out, CLASSES)
    return out


def _chip_px(path: Path) -> int:
    """The side of a chip (512 in the release)."""
    if not path.is_file():
        raise Sen1Floods11Error(f"{path} is missing: the Sen1Floods11 chips are incomplete")
    with rasterio.open(path) as src:
        if src.width != src.height:
            raise Sen1Floods11Error(f"{path} is {src.width} x {src.height} px; Sen1Floods11 chips are square")
        return src.width


def split_rows(path: Path) -> list[tuple[str, str]]:
    """(S1 chip file, label file) per line of a split CSV (no header)."""
    if not path.is_file():
        raise Sen1Floods11Error(f"{path} is missing: the Sen1Floods11 splits are incomplete")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != 2 or not cells[0].endswith("_S1Hand.tif") or not cells[1].endswith("_LabelHand.tif"):
            raise Sen1Floods11Error(f"{path} line {number}: expected '<chip>_S1Hand.tif,<chip>_LabelHand.tif', got {line!r}")
        rows.append((cells[0], cells[1]))
    return rows


def location_dates(path: Path) -> dict[str, tuple[str, str]]:
    """Location -> (S1 date, S2 date) as ISO dates, from the release's metadata ("" where not known)."""
    if not path.is_file():
        return {}
    out = {}
    for feature in json.loads(path.read_text()).get("features", []):
        props = feature.get("properties") or {}
        if props.get("location"):
            out[str(props["location"])] = (_iso(props.get("s1_date")), _iso(props.get("s2_date")))
    return out


def _iso(value) -> str:
    """"2019-08-12", "2019/08/12", "20190812" or an ISO date-time -> "2019-08-12"; "" otherwise."""
    text = str(value or "").strip().replace("/", "-")
    for candidate in (text[:10], text[:8]):
        for fmt in ("%Y-%m-%d", "%Y%m%d"):
            try:
                return dt.datetime.strptime(candidate, fmt).date().isoformat()
            except ValueError:
                continue
    return ""

