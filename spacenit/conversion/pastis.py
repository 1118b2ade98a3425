"""PASTIS (Sainte Fare Garnot & Landrieu, ICCV 2021) crop-type time series as a SpaceNit dataset.

The release (github.com/VSainteuf/pastis-benchmark) as read here:

    metadata.geojson              one feature per patch: ID_PATCH, Fold (1-5), dates-S2 {"0": 20180924, ...}
                                  (and dates-S1A in PASTIS-R); the polygon is the patch footprint (EPSG:2154)
    DATA_S2/S2_<ID_PATCH>.npy     (T, 10, 128, 128) int16: B2 B3 B4 B5 B6 B7 B8 B8A B11 B12, all at 10 m,
                                  surface reflectance x 10000; T (33-61) differs between patches
    ANNOTATIONS/TARGET_<ID>.npy   (3, 128, 128): channel 0 the semantic class, 0 background, 1-18 crop
                                  types, 19 the void label (parcel borders, unknown crops)
    DATA_S1A/S1A_<ID_PATCH>.npy   PASTIS-R only: (T, 3, 128, 128) VV, VH (dB), VV/VH ratio, ascending orbit

Written with `write_dataset`: Sentinel-2 as `sentinel2_l2a` on one 10 m grid (B01, B09 are
not in the data and stay missing), Sentinel-1 (when DATA_S1A is there) as `sentinel1`;
`num_timesteps` observations per patch, evenly spaced over its series (PANGAEA's protocol
takes 6; None keeps them all and pads shorter series with missing timesteps). The
semantic target is each patch's label raster, classes 0-18 by name, void ignored. Splits
follow the usual 5-fold protocol: folds 1-3 train, 4 val, 5 test (`folds` changes it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from spacenit.conversion.writer import write_dataset
from spacenit.data.format import DATASET_JSON, DatasetFormatError, LabelRasterSpec, SampleRecord
from spacenit.data.shards import array_key
from spacenit.sensors import SENTINEL, SENTINEL1, SENTINEL2_L2A

PATCH_PX = 128
GSD_M = 10.0
S2_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
VOID = 19
CLASSES = [
    "Background", "Meadow", "Soft winter wheat", "Corn", "Winter barley", "Winter rapeseed", "Spring barley",
    "Sunflower", "Grapevine", "Beet", "Winter triticale", "Winter durum wheat", "Fruits, vegetables, flowers",
    "Potatoes", "Leguminous fodder", "Soybeans", "Orchard", "Mixed cereal", "Sorghum",
]  # fmt: skip
DEFAULT_FOLDS = {1: "train", 2: "train", 3: "train", 4: "val", 5: "test"}
#: PASTIS' footprints are in Lambert-93 unless metadata.geojson names another CRS.
DEFAULT_CRS = "EPSG:2154"


class PastisError(DatasetFormatError):
    """A folder that is not PASTIS as published; the message says what is missing."""


def prepare_pastis(source: str | Path, out: str | Path, *, num_timesteps: int | None = 6,
                   folds: dict[int, str] | None = None, samples_per_shard: int = 16) -> Path:  # fmt: skip
    """Write the PASTIS folder `source` as a dataset at `out`, unless one is there."""
    source, out = Path(source), Path(out)
    if (out / DATASET_JSON).is_file():
        return out
    folds = folds or DEFAULT_FOLDS
    patches, crs = read_metadata(source)
    with_s1 = (source / "DATA_S1A").is_dir()
    lengths = {"S2": [len(_dates(p, "dates-S2")) for p in patches]}
    if with_s1:
        lengths["S1A"] = [len(_dates(p, "dates-S1A")) for p in patches]
    steps = {k: num_timesteps or max(v) for k, v in lengths.items()}
    sensors = {SENTINEL2_L2A.name: SENTINEL2_L2A, **({SENTINEL1.name: SENTINEL1} if with_s1 else {})}
    grids = {SENTINEL2_L2A.name: SENTINEL2_L2A.one_grid(GSD_M), **({SENTINEL1.name: SENTINEL1.native_grids()} if with_s1 else {})}
    num_t = {SENTINEL2_L2A.name: steps["S2"], **({SENTINEL1.name: steps["S1A"]} if with_s1 else {})}
    write_dataset(out, sensors, grids, num_t, _samples(source, patches, crs, folds, steps, with_s1),
                  tile_size_px=PATCH_PX, gsd_m=GSD_M, layout="one_grid", samples_per_shard=samples_per_shard,
                  label_raster=LabelRasterSpec(GSD_M, VOID, CLASSES))  # fmt: skip
    return out


def read_metadata(source: Path) -> tuple[list[dict], str]:
    """The features of metadata.geojson sorted by ID_PATCH, and the CRS of their footprints."""
    path = source / "metadata.geojson"
    if not path.is_file() or not (source / "DATA_S2").is_dir() or not (source / "ANNOTATIONS").is_dir():
        raise PastisError(f"{source} is not PASTIS: expected metadata.geojson, DATA_S2/ and ANNOTATIONS/")
    doc = json.loads(path.read_text())
    crs = DEFAULT_CRS
    name = ((doc.get("crs") or {}).get("properties") or {}).get("name", "")
    if "EPSG" in name:  # "urn:ogc:def:crs:EPSG::2154" or "EPSG:2154"
        crs = f"EPSG:{name.rstrip(':').split(':')[-1]}"
    patches = doc.get("features") or []
    for i, f in enumerate(patches):
        props = f.get("properties") or {}
        missing = [k for k in ("ID_PATCH", "Fold", "dates-S2") if k not in props]
        if missing:
            raise PastisError(f"{path} feature {i} lacks {missing}")
    return sorted(patches, key=lambda f: int(f["properties"]["ID_PATCH"])), crs


def _dates(patch: dict, key: str) -> list[str]:
    """The ISO dates of a patch's observations, in series order (`dates-S2` is {"0": 20180924, ...},
    or the same as a JSON string)."""
    table = patch["properties"].get(key) or {}
    if isinstance(table, str):
        table = json.loads(table)
    stamps = [str(table[k]) for k in sorted(table, key=int)]
    return [f"{s[:4]}-{s[4:6]}-{s[6:8]}" for s in stamps]


def _pick(length: int, steps: int) -> np.ndarray:
    """`steps` observation indexes evenly spaced over a series of `length` (all of them when it is shorter)."""
    if length <= steps:
        return np.arange(length)
    return np.linspace(0, length - 1, steps).round().astype(int)


def _series(path: Path, dates: list[str], steps: int, channels: int) -> tuple[np.ndarray, list[str], list[bool]]:
    """(steps, channels, H, W) of the picked observations, sentinel-padded; their dates and presence."""
    if not path.is_file():
        raise PastisError(f"{path} is missing: the PASTIS folder is incomplete")
    data = np.load(path)
    if data.ndim != 4 or data.shape[1] < channels or data.shape[2:] != (PATCH_PX, PATCH_PX):
        raise PastisError(f"{path} has shape {data.shape}; expected (T, >={channels}, {PATCH_PX}, {PATCH_PX})")
    if data.shape[0] != len(dates):
        raise PastisError(f"{path} has {data.shape[0]} observations, metadata.geojson lists {len(dates)} dates")
    picked = _pick(len(dates), steps)
    out = np.full((steps, channels, PATCH_PX, PATCH_PX), SENTINEL, np.float32)
    out[: len(picked)] = data[picked, :channels]
    present = [True] * len(picked) + [False] * (steps - len(picked))
    return out, [dates[i] for i in picked] + [""] * (steps - len(picked)), present


def _samples(source: Path, patches: list[dict], crs: str, folds: dict[int, str], steps: dict[str, int],
             with_s1: bool) -> Iterator[tuple[SampleRecord, dict]]:  # fmt: skip
    s2_index = SENTINEL2_L2A.band_index(S2_BANDS)
    for patch in patches:
        props = patch["properties"]
        pid, fold = int(props["ID_PATCH"]), int(props["Fold"])
        if fold not in folds:
            raise PastisError(f"patch {pid} is in fold {fold}, which the fold -> split table {folds} does not place")
        s2_values, s2_dates, s2_present = _series(source / "DATA_S2" / f"S2_{pid}.npy", _dates(patch, "dates-S2"),
                                                  steps["S2"], len(S2_BANDS))  # fmt: skip
        s2 = np.full((steps["S2"], SENTINEL2_L2A.num_bands, PATCH_PX, PATCH_PX), SENTINEL, np.float32)
        s2[:, s2_index] = s2_values
        arrays = {array_key(SENTINEL2_L2A.name, "10m"): s2, "label_raster": _target(source, pid)}
        dates, present = {SENTINEL2_L2A.name: s2_dates}, {SENTINEL2_L2A.name: s2_present}
        if with_s1:
            s1, dates[SENTINEL1.name], present[SENTINEL1.name] = _series(
                source / "DATA_S1A" / f"S1A_{pid}.npy", _dates(patch, "dates-S1A"), steps["S1A"], 2)
            arrays[array_key(SENTINEL1.name, "10m")] = s1
        record = SampleRecord(id=str(pid), shard="", row=-1, crs=crs, bounds=_bounds(patch), dates=dates,
                              present=present, split=folds[fold], label_raster=True)  # fmt: skip
        yield record, arrays


def _target(source: Path, pid: int) -> np.ndarray:
    path = source / "ANNOTATIONS" / f"TARGET_{pid}.npy"
    if not path.is_file():
        raise PastisError(f"{path} is missing: the PASTIS folder is incomplete")
    target = np.load(path)
    if target.ndim != 3 or target.shape[1:] != (PATCH_PX, PATCH_PX):
        raise PastisError(f"{path} has shape {target.shape}; expected (3, {PATCH_PX}, {PATCH_PX})")
    semantic = target[0].astype(np.float32)
    bad = sorted(set(np.unique(semantic).astype(int)) - set(range(len(CLASSES))) - {VOID})
    if bad:
        raise PastisError(f"{path} holds class values {bad}; PASTIS classes are 0-18 and 19 (void)")
    return np.where(semantic == VOID, SENTINEL, semantic).astype(np.float32)


def _bounds(patch: dict) -> tuple[float, float, float, float] | None:
    geometry = patch.get("geometry") or {}
    coords = np.asarray(_flatten(geometry.get("coordinates") or []), dtype=float).reshape(-1, 2)
    if not len(coords):
        return None
    return (float(coords[:, 0].min()), float(coords[:, 1].min()), float(coords[:, 0].max()), float(coords[:, 1].max()))


def _flatten(nested) -> list[float]:
    if isinstance(nested, (int, float)):
        return [nested]
    return [v for item in nested for v in _flatten(item)]
