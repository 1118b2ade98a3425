"""MADOS (Kikaki et al., ISPRS J. 2024), marine debris and oil spill segmentation, as a SpaceNit dataset.

The release (zenodo.org/records/10664073, `MADOS.zip`) as read here:

    Scene_<n>/<res>/<prefix>_L2R_rhorc_<wavelength>_<crop>.tif   one band per file, <res> in 10, 20, 60 (m):
                                  ACOLITE Rayleigh-corrected reflectance (rhorc), float, NaN where invalid;
                                  240 / 120 / 40 px over one 2.4 km crop
    Scene_<n>/10/Scene_<n>_L2R_cl_<crop>.tif     class mask: 0 not annotated, 1-15 the classes below
    Scene_<n>/10/Scene_<n>_L2R_conf_<crop>.tif   annotation confidence (not used)
    splits/{train,val,test}_X.txt                one crop per line, "Scene_<n>_<crop>"

Bands are named by wavelength (nm), which differs a little between Sentinel-2A and 2B
(443/442, 560/559, 740/739, 783/780, 865/864, 1614/1610, 2202/2186); each is matched to
the Sentinel-2 band whose centre is nearest, and must sit in that band's resolution folder.
Written with `write_dataset` as `sentinel2_l2a` on its native 10/20/60 m grids
(reflectance x 10000; B09 is not in the data and stays missing), with the class mask as
the label raster: classes 0-14 as published (mask value - 1), "not annotated" ignored.
The crops are georeferenced when their files are; a file date in an ACOLITE prefix
(`S2A_MSI_2020_07_24_...`) is kept.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import rasterio

from spacenit.conversion.writer import write_dataset
from spacenit.data.format import DATASET_JSON, DatasetFormatError, LabelRasterSpec, SampleRecord
from spacenit.data.shards import array_key
from spacenit.sensors import SENTINEL, SENTINEL2_L2A

CROP_PX = 240
GSD_M = 10.0
SPLIT_FILES = {"train": "train_X.txt", "val": "val_X.txt", "test": "test_X.txt"}
CLASSES = [
    "Marine Debris", "Dense Sargassum", "Sparse Floating Algae", "Natural Organic Material", "Ship", "Oil Spill",
    "Marine Water", "Sediment-Laden Water", "Foam", "Turbid Water", "Shallow Water", "Waves & Wakes",
    "Oil Platform", "Jellyfish", "Sea snot",
]  # fmt: skip
#: Sentinel-2 band -> (centre wavelength nm, resolution folder) for the bands MADOS ships.
BANDS = {
    "B01": (443, 60), "B02": (492, 10), "B03": (560, 10), "B04": (665, 10), "B05": (704, 20), "B06": (740, 20),
    "B07": (783, 20), "B08": (833, 10), "B8A": (865, 20), "B11": (1612, 20), "B12": (2194, 20),
}  # fmt: skip
#: A file's wavelength may differ from its band's centre by this much (2A/2B differ by up to 16 nm at B12).
WAVELENGTH_TOLERANCE_NM = 20
_BAND_FILE = re.compile(r"^(?P<prefix>.*)_L2R_rhorc_(?P<wavelength>\d+)_(?P<crop>\d+)\.tif$")
_ACOLITE_DATE = re.compile(r"S2[AB]_MSI_(\d{4})_(\d{2})_(\d{2})")


class MadosError(DatasetFormatError):
    """A folder that is not MADOS as published; the message says what is missing."""


def prepare_mados(source: str | Path, out: str | Path, *, samples_per_shard: int = 32) -> Path:
    """Write the MADOS folder `source` (its listed crops) as a dataset at `out`, unless one is there."""
    source, out = Path(source), Path(out)
    if (out / DATASET_JSON).is_file():
        return out
    crops = list_crops(source)
    sensors = {SENTINEL2_L2A.name: SENTINEL2_L2A}
    write_dataset(out, sensors, {SENTINEL2_L2A.name: SENTINEL2_L2A.native_grids()}, {SENTINEL2_L2A.name: 1},
                  (_sample(source, crop, split) for crop, split in crops), tile_size_px=CROP_PX, gsd_m=GSD_M,
                  label_raster=LabelRasterSpec(GSD_M, 0, CLASSES), samples_per_shard=samples_per_shard)  # fmt: skip
    return out


def list_crops(source: Path) -> list[tuple[str, str]]:
    """(crop name "Scene_<n>_<crop>", split) of every crop the split files list."""
    if not (source / "splits").is_dir():
        raise MadosError(f"{source} is not MADOS: expected splits/ ({', '.join(SPLIT_FILES.values())}) and Scene_*/ folders")
    crops, seen = [], {}
    for split, name in SPLIT_FILES.items():
        path = source / "splits" / name
        if not path.is_file():
            raise MadosError(f"{path} is missing: the MADOS splits are incomplete")
        for crop in path.read_text().split():
            if crop in seen:
                raise MadosError(f"{crop} is listed in both {seen[crop]} and {name}")
            seen[crop] = name
            crops.append((crop, split))
    return crops


def band_of(wavelength_nm: float, resolution_m: int, path: Path) -> str:
    """The Sentinel-2 band a MADOS file holds, from its wavelength and resolution folder."""
    band = min(BANDS, key=lambda b: abs(BANDS[b][0] - wavelength_nm))
    centre, native = BANDS[band]
    if abs(centre - wavelength_nm) > WAVELENGTH_TOLERANCE_NM:
        raise MadosError(f"{path}: no Sentinel-2 band MADOS ships is centred near {wavelength_nm:g} nm")
    if native != resolution_m:
        raise MadosError(f"{path}: band {band} ({wavelength_nm:g} nm) is a {native} m band, but the file is in the {resolution_m} m folder")
    return band


def _sample(source: Path, crop: str, split: str) -> tuple[SampleRecord, dict]:
    scene, _, number = crop.rpartition("_")
    if not scene.startswith("Scene_") or not number.isdigit():
        raise MadosError(f"crop {crop!r} in {source / 'splits'} is not 'Scene_<n>_<crop>'")
    found: dict[str, Path] = {}
    date = ""
    for res_dir in sorted(p for p in (source / scene).glob("*") if p.is_dir() and p.name.isdigit()):
        for path in res_dir.glob(f"*_L2R_rhorc_*_{number}.tif"):
            match = _BAND_FILE.match(path.name)
            if not match or match["crop"] != number:
                continue
            band = band_of(float(match["wavelength"]), int(res_dir.name), path)
            if band in found:
                raise MadosError(f"{path} and {found[band]} both hold band {band} of crop {crop}")
            found[band] = path
            stamp = _ACOLITE_DATE.search(match["prefix"])
            date = date or (f"{stamp[1]}-{stamp[2]}-{stamp[3]}" if stamp else "")
    missing = sorted(set(BANDS) - set(found))
    if missing:
        raise MadosError(f"crop {crop}: no file for band(s) {missing} under {source / scene}")
    mask_path = source / scene / "10" / f"{scene}_L2R_cl_{number}.tif"
    mask, crs, bounds = _read(mask_path, nodata_to_nan=False)
    if mask.shape != (CROP_PX, CROP_PX):
        raise MadosError(f"{mask_path} is {mask.shape[0]} x {mask.shape[1]} px; MADOS crops are {CROP_PX} px")
    bad = sorted(set(np.unique(mask).astype(int)) - set(range(len(CLASSES) + 1)))
    if bad:
        raise MadosError(f"{mask_path} holds values {bad}; MADOS masks are 0 (not annotated) to {len(CLASSES)}")
    arrays = {"label_raster": np.where(mask == 0, SENTINEL, mask - 1).astype(np.float32)}
    for grid in SENTINEL2_L2A.native_grids():
        side = CROP_PX * 10 // int(grid.gsd_m)
        stack = np.full((1, len(grid.bands), side, side), SENTINEL, np.float32)
        for i, band in enumerate(grid.bands):
            if band in found:
                values, _, _ = _read(found[band])
                if values.shape != (side, side):
                    raise MadosError(f"{found[band]} is {values.shape[0]} x {values.shape[1]} px; a {grid.name} band of a crop is {side} px")
                stack[0, i] = np.where(np.isfinite(values), values * 10000.0, SENTINEL)
        arrays[array_key(SENTINEL2_L2A.name, grid.name)] = stack
    record = SampleRecord(id=crop, shard="", row=-1, crs=crs, bounds=bounds, dates={SENTINEL2_L2A.name: [date]},
                          present={SENTINEL2_L2A.name: [True]}, split=split, label_raster=True)  # fmt: skip
    return record, arrays


def _read(path: Path, *, nodata_to_nan: bool = True) -> tuple[np.ndarray, str | None, tuple[float, float, float, float] | None]:
    """Band 1 of `path` as float32 (nodata -> NaN), its CRS and bounds when georeferenced."""
    if not path.is_file():
        raise MadosError(f"{path} is missing: the MADOS folder is incomplete")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            values = src.read(1).astype(np.float32)
            if nodata_to_nan and src.nodata is not None:
                values[values == np.float32(src.nodata)] = np.nan
            crs = src.crs.to_string() if src.crs else None
            bounds = tuple(src.bounds) if src.crs else None
    return values, crs, bounds

