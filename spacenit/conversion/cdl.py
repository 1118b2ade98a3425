"""Crop-type segmentation with the USDA Cropland Data Layer (CDL) as labels.

The CDL (USDA NASS) is published as one GeoTIFF per year, `<year>_30m_cdls.tif`: a 30 m
raster over the conterminous US in Albers equal-area (EPSG:5070), uint8 class codes
(0 background / no data, 1 corn, 5 soybeans, 24 winter wheat, ... 254; `CDL_CLASSES`);
CropScape clips of it (`CDL_<year>_clip_*.tif`) are the same raster cut to an area.
The task pairs it with imagery of the same area, as `convert` reads it:

    <source>/<year>_30m_cdls.tif                           the CDL (or one CropScape clip)
    <source>/imagery/<sample>/<sensor>/<YYYY-MM-DD>.tif    the chips (samples layout), e.g. sentinel2_l2a
    <source>/imagery/labels.csv                            optional: sample_id,split

Every chip goes through `convert` (by a manifest written beside the output) with the
CDL as its label raster: `convert` warps it onto the chip's footprint with nearest
neighbour at its own 30 m, so the label grid has a third of a 10 m chip's pixels a side
(the tile size must be a multiple of 3 px at 10 m). Class values are the CDL codes,
named by code (`LabelRasterSpec.classes`, 256 entries); background (0) is ignored.
"""

from __future__ import annotations

import json
from pathlib import Path

import rasterio

from spacenit.conversion.convert import convert
from spacenit.conversion.discover import discover
from spacenit.conversion.label_classes import has_label_classes, name_label_classes
from spacenit.data.format import DatasetFormatError

IMAGERY = "imagery"
GSD_M = 10.0
CDL_GSD_M = 30.0
BACKGROUND = 0
#: CDL class codes and names (NASS's attribute table); codes not listed are unused.
CDL_NAMES = {
    0: "Background", 1: "Corn", 2: "Cotton", 3: "Rice", 4: "Sorghum", 5: "Soybeans", 6: "Sunflower", 10: "Peanuts",
    11: "Tobacco", 12: "Sweet Corn", 13: "Pop or Orn Corn", 14: "Mint", 21: "Barley", 22: "Durum Wheat",
    23: "Spring Wheat", 24: "Winter Wheat", 25: "Other Small Grains", 26: "Dbl Crop WinWht/Soybeans", 27: "Rye",
    28: "Oats", 29: "Millet", 30: "Speltz", 31: "Canola", 32: "Flaxseed", 33: "Safflower", 34: "Rape Seed",
    35: "Mustard", 36: "Alfalfa", 37: "Other Hay/Non Alfalfa", 38: "Camelina", 39: "Buckwheat", 41: "Sugarbeets",
    42: "Dry Beans", 43: "Potatoes", 44: "Other Crops", 45: "Sugarcane", 46: "Sweet Potatoes",
    47: "Misc Vegs & Fruits", 48: "Watermelons", 49: "Onions", 50: "Cucumbers", 51: "Chick Peas", 52: "Lentils",
    53: "Peas", 54: "Tomatoes", 55: "Caneberries", 56: "Hops", 57: "Herbs", 58: "Clover/Wildflowers",
    59: "Sod/Grass Seed", 60: "Switchgrass", 61: "Fallow/Idle Cropland", 63: "Forest", 64: "Shrubland",
    65: "Barren", 66: "Cherries", 67: "Peaches", 68: "Apples", 69: "Grapes", 70: "Christmas Trees",
    71: "Other Tree Crops", 72: "Citrus", 74: "Pecans", 75: "Almonds", 76: "Walnuts", 77: "Pears",
    81: "Clouds/No Data", 82: "Developed", 83: "Water", 87: "Wetlands", 88: "Nonag/Undefined", 92: "Aquaculture",
    111: "Open Water", 112: "Perennial Ice/Snow", 121: "Developed/Open Space", 122: "Developed/Low Intensity",
    123: "Developed/Med Intensity", 124: "Developed/High Intensity", 131: "Barren", 141: "Deciduous Forest",
    142: "Evergreen Forest", 143: "Mixed Forest", 152: "Shrubland", 176: "Grassland/Pasture", 190: "Woody Wetlands",
    195: "Herbaceous Wetlands", 204: "Pistachios", 205: "Triticale", 206: "Carrots", 207: "Asparagus",
    208: "Garlic", 209: "Cantaloupes", 210: "Prunes", 211: "Olives", 212: "Oranges", 213: "Honeydew Melons",
    214: "Broccoli", 215: "Avocados", 216: "Peppers", 217: "Pomegranates", 218: "Nectarines", 219: "Greens",
    220: "Plums", 221: "Strawberries", 222: "Squash", 223: "Apricots", 224: "Vetch", 225: "Dbl Crop WinWht/Corn",
    226: "Dbl Crop Oats/Corn", 227: "Lettuce", 228: "Dbl Crop Triticale/Corn", 229: "Pumpkins",
    230: "Dbl Crop Lettuce/Durum Wht", 231: "Dbl Crop Lettuce/Cantaloupe", 232: "Dbl Crop Lettuce/Cotton",
    233: "Dbl Crop Lettuce/Barley", 234: "Dbl Crop Durum Wht/Sorghum", 235: "Dbl Crop Barley/Sorghum",
    236: "Dbl Crop WinWht/Sorghum", 237: "Dbl Crop Barley/Corn", 238: "Dbl Crop WinWht/Cotton",
    239: "Dbl Crop Soybeans/Cotton", 240: "Dbl Crop Soybeans/Oats", 241: "Dbl Crop Corn/Soybeans",
    242: "Blueberries", 243: "Cabbage", 244: "Cauliflower", 245: "Celery", 246: "Radishes", 247: "Turnips",
    248: "Eggplants", 249: "Gourds", 250: "Cranberries", 254: "Dbl Crop Barley/Soybeans",
}  # fmt: skip
#: Class names by class value (= CDL code).
CDL_CLASSES = [CDL_NAMES.get(code, f"CDL {code}") for code in range(256)]


class CdlError(DatasetFormatError):
    """A folder that is not a CDL task as described above; the message says what is missing."""


def find_cdl(source: Path) -> Path:
    """The one CDL raster at the top of `source` (`*_30m_cdls.tif` or `CDL_*.tif`)."""
    found = sorted({*source.glob("*_30m_cdls.tif"), *source.glob("CDL_*.tif")})
    if len(found) != 1:
        raise CdlError(f"{source} must hold exactly one CDL raster (<year>_30m_cdls.tif or a CropScape clip "
                       f"CDL_<year>_*.tif); found {[p.name for p in found]}")  # fmt: skip
    with rasterio.open(found[0]) as src:
        if src.count != 1 or src.crs is None:
            raise CdlError(f"{found[0]} has {src.count} band(s) and CRS {src.crs}; the CDL is one band of codes, georeferenced")
    return found[0]


def prepare_cdl(source: str | Path, out: str | Path, *, tile_size_px: int | None = None) -> Path:
    """Convert the chips under `source/imagery` with the CDL raster of `source` as their label rasters.

    `tile_size_px` defaults to the first chip's side, rounded down to a multiple of 3 (whole 30 m pixels).
    """
    source, out = Path(source), Path(out)
    if has_label_classes(out, CDL_CLASSES):
        return out
    cdl = find_cdl(source)
    if not (source / IMAGERY).is_dir():
        raise CdlError(f"{source} has no {IMAGERY}/ folder of chips (<sample>/<sensor>/<YYYY-MM-DD>.tif)")
    samples = discover(source / IMAGERY, layout="samples")
    bad = [s for s in samples if s.problem]
    if bad:
        raise CdlError(f"{len(bad)} chip(s) under {source / IMAGERY} cannot be read, e.g. {bad[0].id}: {bad[0].problem}")
    real = source.resolve()
    manifest = out.parent / f"{out.name}.manifest.jsonl"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    with manifest.open("w") as f:
        for sample in samples:
            for sensor, acquisitions in sample.files.items():
                for acquisition in acquisitions:
                    for raster in acquisition.rasters:
                        f.write(json.dumps({
                            "sample_id": sample.id, "sensor": sensor, "date": acquisition.date, "split": sample.split,
                            "path": str(Path(raster.path).resolve().relative_to(real)),
                            "bands": list(raster.bands) if raster.bands else None,
                            "label_raster": cdl.name,
                        }) + "\n")  # fmt: skip
    report = convert(source, out, manifest=manifest, tile_size_px=tile_size_px or _tile_size(samples),
                     gsd_m=GSD_M, label_ignore_value=BACKGROUND, progress=False)  # fmt: skip
    if report.failures:
        first = report.failures[0]
        raise CdlError(f"{len(report.failures)} chip(s) could not be converted, e.g. {first.sample_id}: {first.reason}")
    name_label_classes(out, CDL_CLASSES)
    return out


def _tile_size(samples) -> int:
    first = next(r.path for s in samples for acquisitions in s.files.values() for a in acquisitions for r in a.rasters)
    with rasterio.open(first) as src:
        side = min(src.width, src.height)
    if side < 3:
        raise CdlError(f"{first} is {src.width} x {src.height} px: too small for a tile of whole 30 m CDL pixels")
    return side // 3 * 3
