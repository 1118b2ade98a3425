"""Read GeoTIFFs onto a sample's reference grid.

Every spatial sensor of a sample is brought onto one grid: the CRS and
top-left corner of the sample's first (finest) raster, `gsd_m` pixels, and
`tile_size_px` x `tile_size_px` pixels. Files already on that grid are read
directly; others are warped with rasterio (bilinear for continuous bands,
nearest for categorical ones). Nodata and NaN become the sentinel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.warp import reproject
from rasterio.windows import Window

from spacenit.sensors import SENTINEL, SensorSpec

#: Relative pixel-size difference under which a raster counts as being at the requested GSD.
GRID_TOLERANCE = 0.02


class RasterReadError(ValueError):
    """A GeoTIFF that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class Grid:
    crs: CRS
    transform: Affine
    width: int
    height: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        left, top = self.transform.c, self.transform.f
        right = left + self.transform.a * self.width
        bottom = top + self.transform.e * self.height
        return (left, bottom, right, top)


def open_raster(path: Path):
    """rasterio.open with an error that names the file and says what is wrong."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise RasterReadError(f"{path} is an empty (zero-byte) file; re-export or remove it")
    try:
        return rasterio.open(path)
    except RasterioIOError as e:
        raise RasterReadError(
            f"{path} is not a readable GeoTIFF ({e}); check that it is a complete raster file"
        ) from None


def _crs_of(src, path: Path, assume_crs: str | None) -> CRS:
    if src.crs is not None:
        return src.crs
    if assume_crs:
        return CRS.from_user_input(assume_crs)
    raise RasterReadError(
        f"{path} has no CRS (no georeferencing); pass --assume-crs EPSG:XXXX if you know it"
    )


def reference_grid(path: Path, *, tile_size_px: int, gsd_m: float, assume_crs: str | None = None) -> Grid:
    """The grid a sample is stored on, anchored at the top-left of `path`."""
    with open_raster(path) as src:
        crs = _crs_of(src, path, assume_crs)
        left, top = src.bounds.left, src.bounds.top
        res_x, res_y = src.res
        # Keep the anchor's own pixels when they are (nearly) the requested size: chips
        # reprojected upstream come at 9.99 m, and resampling them to 10.00 m would only blur.
        # Metres mean nothing in degrees, so geographic rasters keep their pixels too.
        near = all(abs(r - gsd_m) <= GRID_TOLERANCE * gsd_m for r in (res_x, res_y))
        if not (crs.is_geographic or near):
            res_x = res_y = gsd_m
    return Grid(crs, Affine(res_x, 0.0, left, 0.0, -res_y, top), tile_size_px, tile_size_px)


def _band_order(src, path: Path, sensor: SensorSpec, bands: list[str] | None) -> list[int]:
    """1-based rasterio band indices delivering `sensor.bands` in order."""
    names = bands or [d for d in src.descriptions]
    if bands is None and all(names) and set(sensor.bands) <= set(names):
        # Bands named in the file: select by name, whatever the order.
        return [names.index(b) + 1 for b in sensor.bands]
    if bands is not None:
        if len(bands) != src.count:
            raise RasterReadError(f"{path} has {src.count} bands but {len(bands)} band names were given")
        missing = [b for b in sensor.bands if b not in bands]
        if missing:
            raise RasterReadError(f"{path} lacks bands {missing} of sensor {sensor.name!r}")
        return [bands.index(b) + 1 for b in sensor.bands]
    if src.count != sensor.num_bands:
        raise RasterReadError(
            f"{path} has {src.count} bands, but sensor {sensor.name!r} has {sensor.num_bands} "
            f"({', '.join(sensor.bands)}); pick the right --sensor or fix the file"
        )
    return list(range(1, src.count + 1))


def read_on_grid(
    path: Path,
    grid: Grid,
    sensor: SensorSpec,
    *,
    assume_crs: str | None = None,
    bands: list[str] | None = None,
) -> np.ndarray:
    """Read `path` onto `grid` as float32 `(C, H, W)` in `sensor.bands` order, sentinel where missing."""
    with open_raster(path) as src:
        crs = _crs_of(src, path, assume_crs)
        indexes = _band_order(src, path, sensor, bands)
        out = np.full((len(indexes), grid.height, grid.width), SENTINEL, dtype=np.float32)
        try:
            if _same_pixel_grid(src.transform, crs, grid):
                _read_aligned(src, indexes, grid, out)
            else:
                _warp(src, indexes, crs, grid, out, categorical=sensor.categorical)
        except RasterioIOError as e:
            raise RasterReadError(f"{path} could not be read to the end ({e}); the file looks truncated") from None
        nodata = src.nodata
    if nodata is not None and not np.isnan(nodata):
        out[out == np.float32(nodata)] = SENTINEL
    out[~np.isfinite(out)] = SENTINEL
    return out


def _same_pixel_grid(transform: Affine, crs: CRS, grid: Grid) -> bool:
    if crs != grid.crs or transform.b != 0 or transform.d != 0:
        return False
    if not (np.isclose(transform.a, grid.transform.a) and np.isclose(transform.e, grid.transform.e)):
        return False
    col = (grid.transform.c - transform.c) / transform.a
    row = (grid.transform.f - transform.f) / transform.e
    return bool(np.isclose(col, round(col), atol=1e-6) and np.isclose(row, round(row), atol=1e-6))


def _read_aligned(src, indexes: list[int], grid: Grid, out: np.ndarray) -> None:
    """Copy the overlap of `src` and `grid` into `out` without resampling."""
    col0 = round((grid.transform.c - src.transform.c) / src.transform.a)
    row0 = round((grid.transform.f - src.transform.f) / src.transform.e)
    c_lo, r_lo = max(col0, 0), max(row0, 0)
    c_hi, r_hi = min(col0 + grid.width, src.width), min(row0 + grid.height, src.height)
    if c_hi <= c_lo or r_hi <= r_lo:
        return
    window = Window(c_lo, r_lo, c_hi - c_lo, r_hi - r_lo)
    data = src.read(indexes, window=window, out_dtype=np.float32)
    out[:, r_lo - row0 : r_hi - row0, c_lo - col0 : c_hi - col0] = data


def _warp(src, indexes: list[int], crs: CRS, grid: Grid, out: np.ndarray, *, categorical: bool) -> None:
    resampling = Resampling.nearest if categorical else Resampling.bilinear
    for i, band in enumerate(indexes):
        reproject(
            source=rasterio.band(src, band),
            destination=out[i],
            src_crs=crs,
            src_transform=src.transform,
            src_nodata=src.nodata,
            dst_transform=grid.transform,
            dst_crs=grid.crs,
            dst_nodata=SENTINEL,
            resampling=resampling,
        )
