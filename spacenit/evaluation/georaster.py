"""Writers for georeferenced embedding rasters: Cloud-Optimized GeoTIFF and Zarr, filled strip by strip.

Both take rows of the embedding grid as they are finished, so a scene never
has to fit in memory as a whole. The grid is the scene's grid coarsened by
the patch size: same CRS, same origin, pixel size x patch size.

- GeoTIFF: written tiled into a temporary file, then copied with GDAL's COG
  driver (a COG cannot be written incrementally). Bands are named emb_000...;
  cells without data are NaN (the nodata value).
- Zarr (v2, zlib): array `embeddings` (channel, y, x) plus 1-D coordinate
  arrays `y` and `x` (cell centres, in CRS units), dimension names in
  `_ARRAY_DIMENSIONS` and the CRS as `_CRS` {"wkt": ...}: the conventions
  GDAL's Zarr driver (and so QGIS, and xarray) reads for georeferencing. The
  affine transform and CRS are also plain group attributes.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
import zarr
from affine import Affine
from numcodecs import Zlib
from rasterio.crs import CRS
from rasterio.windows import Window

TIFF_SUFFIXES = (".tif", ".tiff")


def _tmp_beside(path: Path) -> Path:
    return path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")


class GeoTiffWriter:
    def __init__(self, path: Path, *, channels: int, height: int, width: int, crs: CRS, transform: Affine, tags: dict) -> None:
        self.path = Path(path)
        self.tmp = _tmp_beside(self.path.with_suffix(".strips.tif"))
        self.dst = rasterio.open(
            self.tmp, "w", driver="GTiff", width=width, height=height, count=channels, dtype="float32",
            crs=crs, transform=transform, nodata=np.nan, tiled=True, blockxsize=256, blockysize=256,
            BIGTIFF="IF_SAFER",
        )  # fmt: skip
        self.dst.update_tags(**{k: str(v) for k, v in tags.items()})
        for i in range(channels):
            self.dst.set_band_description(i + 1, f"emb_{i:03d}")

    def write_rows(self, row0: int, block: np.ndarray) -> None:
        """block (C, rows, width) -> grid rows [row0, row0 + rows)."""
        self.dst.write(block, window=Window(0, row0, block.shape[2], block.shape[1]))

    def close(self) -> None:
        self.dst.close()
        out_tmp = _tmp_beside(self.path)
        try:
            rasterio.shutil.copy(self.tmp, out_tmp, driver="COG", COMPRESS="DEFLATE", PREDICTOR="YES", BIGTIFF="IF_SAFER")
            os.replace(out_tmp, self.path)
        finally:
            Path(self.tmp).unlink(missing_ok=True)
            Path(out_tmp).unlink(missing_ok=True)

    def abort(self) -> None:
        self.dst.close()
        Path(self.tmp).unlink(missing_ok=True)


class ZarrWriter:
    def __init__(self, path: Path, *, channels: int, height: int, width: int, crs: CRS, transform: Affine, tags: dict) -> None:
        self.path = Path(path)
        self.tmp = _tmp_beside(self.path)
        # Zarr v2: GDAL 3.10 (rasterio's, and so QGIS's) does not read the v3 `bytes` codec yet.
        group = zarr.open_group(store=str(self.tmp), mode="w", zarr_format=2)
        group.attrs.update({"crs": crs.to_wkt(), "transform": list(transform)[:6], **tags})
        self.array = group.create_array(
            "embeddings", shape=(channels, height, width), dtype="float32", fill_value=np.nan,
            chunks=(channels, min(height, 256), min(width, 256)), compressors=Zlib(level=5),
        )  # fmt: skip
        self.array.attrs.update({"_ARRAY_DIMENSIONS": ["channel", "y", "x"], "_CRS": {"wkt": crs.to_wkt()}})
        # Cell centres; regular spacing lets GDAL rebuild the geotransform from them.
        coords = {
            "x": transform.c + transform.a * (np.arange(width) + 0.5),
            "y": transform.f + transform.e * (np.arange(height) + 0.5),
            "channel": np.arange(channels, dtype=np.float64),
        }
        for name, values in coords.items():
            arr = group.create_array(name, shape=values.shape, dtype="float64", compressors=Zlib(level=5))
            arr[...] = values
            arr.attrs["_ARRAY_DIMENSIONS"] = [name]

    def write_rows(self, row0: int, block: np.ndarray) -> None:
        self.array[:, row0 : row0 + block.shape[1], :] = block

    def close(self) -> None:
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def open_writer(path: str | Path, **grid) -> GeoTiffWriter | ZarrWriter:
    """A writer chosen by the suffix of `path`: .tif/.tiff -> COG GeoTIFF, .zarr -> Zarr."""
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        return GeoTiffWriter(path, **grid)
    if path.suffix.lower() == ".zarr":
        return ZarrWriter(path, **grid)
    raise ValueError(f"{path}: write embeddings to a .tif (Cloud-Optimized GeoTIFF) or a .zarr path")
