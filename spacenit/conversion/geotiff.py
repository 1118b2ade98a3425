"""Read GeoTIFFs onto a sample's pixel grids, each band group at its own resolution.

A sample covers a square footprint: the CRS and top-left corner of its anchor
raster (the first file of its finest sensor), `tile_size_px` pixels of the
reference GSD per side (`footprint`). Each band is stored on a grid of its own
pixel size over that footprint (`PixelGrid.scaled`): a 20 m band gets half the
pixels per side of a 10 m band, and larger rasters are cropped, smaller ones
padded. Files already on their grid are read directly (no resampling at all);
others are warped with rasterio from the window that covers the tile: only when
the CRS or the pixel grid differs, never to a finer pixel than the file has
(that is `--one-grid`'s job). Continuous bands are warped bilinear, or averaged
when the file's pixels are finer than the grid's; categorical ones nearest.
Nodata, NaN and infinities become the sentinel.

A raster without a CRS needs `assume_crs`. One without any georeferencing at
all (BigEarthNet's bare arrays) is then placed with its top-left corner at
(0, 0) and pixels of its sensor's finest native GSD: enough to align the
sensors of one sample, though not to place it on Earth.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError
from rasterio.transform import array_bounds
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window, from_bounds

from spacenit.conversion.discover import Acquisition, RasterFile
from spacenit.sensors import SENTINEL, Grid, SensorSpec

#: Relative pixel-size difference under which a raster counts as being at the requested GSD.
GRID_TOLERANCE = 0.02
#: Source pixels read around a tile's footprint, so the resampling kernel sees its neighbours.
WARP_MARGIN_PX = 2
#: In a band list, the name of a file band that belongs to no sensor band (a derived ratio).
SKIP_BAND = "_"
#: GDAL settings for many small files: do not list each file's folder looking for sidecars.
GDAL_OPTIONS = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
#: Default cap on the pixels a raster may declare (width x height): a 100000 x 100000 header is
#: 18 bytes, and a scene that size would plan millions of tiles. `--max-raster-pixels` raises it.
MAX_RASTER_PIXELS = 2_000_000_000


class RasterReadError(ValueError):
    """A GeoTIFF that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class PixelGrid:
    """A pixel grid in a CRS: the footprint of a sample at one pixel size."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in `crs`."""
        left, top = self.transform.c, self.transform.f
        right = left + self.transform.a * self.width
        bottom = top + self.transform.e * self.height
        return (left, bottom, right, top)

    def scaled(self, factor: Fraction) -> PixelGrid:
        """The same footprint with pixels `factor` times larger (a 20 m grid of a 10 m one: 2)."""
        width, height = self.width / factor, self.height / factor
        if width.denominator != 1 or height.denominator != 1:
            raise ValueError(f"a {self.width} px footprint is not a whole number of pixels {factor} times larger")
        t = self.transform
        return PixelGrid(self.crs, Affine(t.a * float(factor), 0.0, t.c, 0.0, t.e * float(factor), t.f), int(width), int(height))


def pixel_size_m(src, georef: Georeference) -> float | None:
    """The raster's pixel size in metres (the larger side), or None in a geographic CRS."""
    if georef.crs.is_geographic:
        return None
    scale = georef.crs.linear_units_factor[1] if georef.crs.linear_units_factor else 1.0
    return max(abs(georef.transform.a), abs(georef.transform.e)) * scale


@dataclass(frozen=True)
class Georeference:
    """Where a raster's pixels are: its own, or assumed with --assume-crs."""

    crs: CRS
    transform: Affine


def open_raster(path: Path, max_pixels: int = MAX_RASTER_PIXELS):
    """rasterio.open with an error that names the file and says what is wrong.

    A raster that declares more than `max_pixels` pixels is refused before
    anything is read (`--max-raster-pixels` raises the cap).
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # A raster without georeferencing is reported by `georeference`, with the fix.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(path)
    except RasterioIOError as e:
        if path.stat().st_size == 0:  # a missing file raises FileNotFoundError here
            raise RasterReadError(f"{path} is an empty (zero-byte) file; re-export or remove it") from None
        raise RasterReadError(
            f"{path} is not a readable GeoTIFF ({e}); check that it is a complete raster file"
        ) from None
    if src.width * src.height > max_pixels:
        src.close()
        raise RasterReadError(
            f"{path} declares {src.width} x {src.height} pixels ({src.width * src.height / 1e9:.1f} G), over the cap of "
            f"{max_pixels / 1e9:g} G pixels per raster; if the file is really that large, raise the cap with "
            "--max-raster-pixels"
        )
    return src


class OpenRasters:
    """The rasters of one sample, each opened once (opening a file costs more than reading a chip)."""

    def __init__(self, max_pixels: int = MAX_RASTER_PIXELS) -> None:
        self._open: dict[Path, rasterio.DatasetReader] = {}
        self.max_pixels = max_pixels

    def __getitem__(self, path: Path) -> rasterio.DatasetReader:
        if path not in self._open:
            self._open[path] = open_raster(path, self.max_pixels)
        return self._open[path]

    def __enter__(self) -> OpenRasters:
        return self

    def __exit__(self, *exc) -> None:
        for src in self._open.values():
            src.close()
        self._open.clear()


def georeference(src, path: Path, sensor: SensorSpec, assume_crs: str | None) -> Georeference:
    """The raster's CRS and transform; `assume_crs` (and the sensor's GSD) fill in what it lacks.

    Only north-up rasters with square-ish, non-zero pixels are accepted; anything else
    is an error that says what the raster's transform is.
    """
    transform = src.transform
    if src.crs is not None:
        georef = Georeference(src.crs, transform)
    elif not assume_crs:
        what = "no CRS" if not transform.is_identity else "no CRS and no geotransform"
        raise RasterReadError(f"{path} has {what} (no georeferencing); pass --assume-crs EPSG:XXXX if you know it")
    else:
        if transform.is_identity and not src.gcps[0]:
            gsd_m = sensor.min_gsd_m
            transform = Affine(gsd_m, 0.0, 0.0, 0.0, -gsd_m, 0.0)
        georef = Georeference(CRS.from_user_input(assume_crs), transform)
    t = georef.transform
    if t.a == 0 or t.e == 0:
        raise RasterReadError(f"{path} has a zero pixel size in its geotransform {tuple(t)[:6]}; fix the file's georeferencing")
    if t.b != 0 or t.d != 0:
        raise RasterReadError(f"{path} is rotated (geotransform {tuple(t)[:6]}); warp it north-up first, e.g. gdalwarp")
    if t.a < 0 or t.e > 0:
        orientation = "south-up" if t.e > 0 else "east-to-west"
        raise RasterReadError(f"{path} is {orientation} (geotransform {tuple(t)[:6]}); warp it north-up first, e.g. gdalwarp")
    return georef


def reference_grid(src, georef: Georeference, *, tile_size_px: int, gsd_m: float, tile: tuple[int, int] = (0, 0)) -> PixelGrid:
    """The grid a sample is stored on, anchored at the top-left of the raster `src`.

    `tile` (row, column) moves it that many tiles right and down: the tiles of a
    scene (`scene_tiles`) share one grid and touch without gaps or overlap.
    """
    left, _, _, top = array_bounds(src.height, src.width, georef.transform)
    res_x, res_y = _grid_resolution(georef, gsd_m)
    row, col = tile
    left, top = left + col * tile_size_px * res_x, top - row * tile_size_px * res_y
    return PixelGrid(georef.crs, Affine(res_x, 0.0, left, 0.0, -res_y, top), tile_size_px, tile_size_px)


def scene_tiles(src, georef: Georeference, *, tile_size_px: int, gsd_m: float) -> tuple[int, int]:
    """(rows, columns) of tiles that cover the raster `src` on its reference grid; edge tiles overhang it."""
    res_x, res_y = _grid_resolution(georef, gsd_m)
    width_m, height_m = src.width * abs(georef.transform.a), src.height * abs(georef.transform.e)
    # A scene a hair over a whole number of tiles (resampled 9.99 m pixels) gets no extra sliver tile.
    rows = math.ceil(height_m / (tile_size_px * res_y) - GRID_TOLERANCE)
    cols = math.ceil(width_m / (tile_size_px * res_x) - GRID_TOLERANCE)
    return max(rows, 1), max(cols, 1)


def _grid_resolution(georef: Georeference, gsd_m: float) -> tuple[float, float]:
    """(x, y) pixel size of the reference grid: `gsd_m`, or the raster's own pixels when near it."""
    res_x, res_y = abs(georef.transform.a), abs(georef.transform.e)
    # Keep the anchor's own pixels when they are (nearly) the requested size: chips
    # reprojected upstream come at 9.99 m, and resampling them to 10.00 m would only blur.
    # Metres mean nothing in degrees, so geographic rasters keep their pixels too.
    near = all(abs(r - gsd_m) <= GRID_TOLERANCE * gsd_m for r in (res_x, res_y))
    if georef.crs.is_geographic or near:
        return res_x, res_y
    return gsd_m, gsd_m


def band_mapping(src, raster: RasterFile, sensor: SensorSpec) -> tuple[list[int], list[int]]:
    """(1-based file band indexes, sensor band positions) that `raster` delivers, matched by name."""
    path = raster.path
    if raster.bands is not None:
        if len(raster.bands) != src.count:
            raise RasterReadError(
                f"{path} has {src.count} band(s) but {len(raster.bands)} band name(s) were given "
                f"({', '.join(raster.bands)}); fix the band list ({SKIP_BAND!r} skips a band)"
            )
        kept = [(i + 1, name) for i, name in enumerate(raster.bands) if name != SKIP_BAND]
        return [i for i, _ in kept], sensor.band_index(name for _, name in kept)
    names = list(src.descriptions)
    if all(names) and set(sensor.bands) <= set(names):
        # Bands named in the file: select by name, whatever the order.
        return [names.index(b) + 1 for b in sensor.bands], list(range(sensor.num_bands))
    if src.count != sensor.num_bands:
        raise RasterReadError(
            f"{path} has {src.count} bands, but sensor {sensor.name!r} has {sensor.num_bands} "
            f"({', '.join(sensor.bands)}); pick the right sensor, or list the file's bands "
            "(a manifest's `bands` column)"
        )
    return list(range(1, src.count + 1)), list(range(sensor.num_bands))


@dataclass(frozen=True)
class StorageGrid:
    """One grid a sensor is stored on, placed on a sample: its bands (and their positions
    among the sensor's bands) and the pixel grid of the sample's footprint at its size."""

    grid: Grid
    positions: tuple[int, ...]  # sensor band index of each of the grid's bands
    pixels: PixelGrid


def read_acquisition(
    acquisition: Acquisition, sensor: SensorSpec, grids: list[StorageGrid], rasters: OpenRasters, *,
    assume_crs: str | None, upsample: bool = False,
) -> dict[str, np.ndarray]:  # fmt: skip
    """One timestep as {grid name: float32 (C_g, H_g, W_g)}, bands in each grid's order; sentinel where missing.

    A file's bands go to the grids that hold them, each read at its grid's pixel size.
    Without `upsample` (the native layout), a file whose pixels are coarser than its
    bands' grid is an error: resampling it there would invent detail. Bands no file
    delivers (possible only with explicit band lists) stay sentinel; a band
    delivered twice is an error.
    """
    out: dict[str, np.ndarray | None] = {sg.grid.name: None for sg in grids}
    delivered: dict[int, Path] = {}
    for raster in acquisition.rasters:
        src = rasters[raster.path]
        file_bands, positions = band_mapping(src, raster, sensor)
        twice = [p for p in positions if p in delivered]
        if twice:
            raise RasterReadError(
                f"{raster.path} gives band(s) {[sensor.bands[p] for p in twice]} of {sensor.name}, which "
                f"{delivered[twice[0]]} already gives for the same date; remove one of them"
            )
        georef = georeference(src, raster.path, sensor, assume_crs)
        for sg in grids:
            row_of = {p: i for i, p in enumerate(sg.positions)}
            mine = [(band, row_of[p]) for band, p in zip(file_bands, positions, strict=True) if p in row_of]
            if not mine:
                continue
            if not upsample:
                _check_not_coarser(src, raster.path, georef, sensor, sg.grid)
            image = read_on_grid(src, raster.path, georef, [b for b, _ in mine], sg.pixels, categorical=sensor.categorical)
            rows = [r for _, r in mine]
            if out[sg.grid.name] is None and rows == list(range(len(sg.positions))):
                out[sg.grid.name] = image  # one file with every band of the grid, in order (the common case): no copy
                continue
            if out[sg.grid.name] is None:
                out[sg.grid.name] = np.full((len(sg.positions), sg.pixels.height, sg.pixels.width), SENTINEL, np.float32)
            out[sg.grid.name][rows] = image
        delivered.update(dict.fromkeys(positions, raster.path))
    return {
        sg.grid.name: a if (a := out[sg.grid.name]) is not None
        else np.full((len(sg.positions), sg.pixels.height, sg.pixels.width), SENTINEL, np.float32)
        for sg in grids
    }  # fmt: skip


def _check_not_coarser(src, path: Path, georef: Georeference, sensor: SensorSpec, grid: Grid) -> None:
    """Refuse a file whose pixels are coarser than the grid its bands are stored on."""
    size = pixel_size_m(src, georef)
    if size is not None and size > grid.gsd_m * (1 + GRID_TOLERANCE):
        raise RasterReadError(
            f"{path} has {size:g} m pixels, but this dataset stores {sensor.name} bands {list(grid.bands)} "
            f"at {grid.gsd_m:g} m (the resolution of the first file that gave them); convert files of "
            "different resolutions into separate datasets, or pass --one-grid to resample every band "
            "onto one grid"
        )


def read_on_grid(
    src, path: Path, georef: Georeference, file_bands: list[int], grid: PixelGrid, *, categorical: bool
) -> np.ndarray:
    """Bands `file_bands` of `src` on `grid` as float32 `(C, H, W)`, sentinel where there is no data."""
    out = np.empty((len(file_bands), grid.height, grid.width), dtype=np.float32)
    try:
        if _same_pixel_grid(georef, grid):
            _read_aligned(src, georef.transform, file_bands, grid, out)
        else:
            out.fill(SENTINEL)
            _warp(src, georef, file_bands, grid, out, categorical=categorical)
            out[~np.isfinite(out)] = SENTINEL
    except RasterioError as e:
        raise RasterReadError(
            f"{path} could not be read to the end ({e}); the file is damaged or truncated: re-export it"
        ) from None
    return out


def sparse_under(src, grid: PixelGrid, georef: Georeference) -> bool:
    """Whether every block of `src` under `grid` is sparse: declared in the header but never
    written (a GeoTIFF written with SPARSE_OK), so that reading it gives zeros, not data."""
    if src.driver != "GTiff" or georef.crs != grid.crs:
        return False
    block_h, block_w = src.block_shapes[0]
    window = _source_window(src, georef, grid)
    if window is None:
        return False
    rows = range(int(window.row_off) // block_h, (int(window.row_off + window.height) - 1) // block_h + 1)
    cols = range(int(window.col_off) // block_w, (int(window.col_off + window.width) - 1) // block_w + 1)
    for row in rows:
        for col in cols:
            offset = src.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1)
            if offset not in (None, "0"):
                return False
    return True


def _as_missing(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """Mark the file's nodata value as NaN (float32 data), so it never passes for a real value."""
    if nodata is not None and not np.isnan(nodata):
        data[data == np.float32(nodata)] = np.nan
    return data


def _same_pixel_grid(georef: Georeference, grid: PixelGrid) -> bool:
    transform = georef.transform
    if georef.crs != grid.crs or transform.b != 0 or transform.d != 0:
        return False
    if not (math.isclose(transform.a, grid.transform.a) and math.isclose(transform.e, grid.transform.e)):
        return False
    col = (grid.transform.c - transform.c) / transform.a
    row = (grid.transform.f - transform.f) / transform.e
    return abs(col - round(col)) <= 1e-6 and abs(row - round(row)) <= 1e-6


def _read_aligned(src, transform: Affine, file_bands: list[int], grid: PixelGrid, out: np.ndarray) -> None:
    """Fill `out` with the overlap of `src` and `grid`, without resampling, and the sentinel elsewhere.

    The file's own data type is read and cast here: GDAL's conversion to float32
    on the way (`out_dtype`) cost more than the read itself on EuroSAT's chips.
    """
    col0 = round((grid.transform.c - transform.c) / transform.a)
    row0 = round((grid.transform.f - transform.f) / transform.e)
    c_lo, r_lo = max(col0, 0), max(row0, 0)
    c_hi, r_hi = min(col0 + grid.width, src.width), min(row0 + grid.height, src.height)
    if c_hi <= c_lo or r_hi <= r_lo:
        out.fill(SENTINEL)
        return
    rows, cols = slice(r_lo - row0, r_hi - row0), slice(c_lo - col0, c_hi - col0)
    if (rows.stop - rows.start, cols.stop - cols.start) != (grid.height, grid.width):
        out.fill(SENTINEL)  # the raster covers part of the tile
    data = src.read(file_bands, window=Window(c_lo, r_lo, c_hi - c_lo, r_hi - r_lo))
    region = out[:, rows, cols]
    region[...] = data
    missing = _missing(data, src.nodata)
    if missing is not None:
        region[missing] = SENTINEL


def _missing(data: np.ndarray, nodata: float | None) -> np.ndarray | None:
    """Where `data`, in the file's own type, holds no value (its nodata, NaN, inf); None when nowhere."""
    missing = None if np.issubdtype(data.dtype, np.integer) else ~np.isfinite(data)
    if nodata is not None and not np.isnan(nodata):
        is_nodata = data == nodata  # numpy compares in a type that holds both
        missing = is_nodata if missing is None else missing | is_nodata
    return missing if missing is not None and missing.any() else None


def _source_window(src, georef: Georeference, grid: PixelGrid) -> Window | None:
    """The window of `src` covering the grid's footprint plus a margin; None when they do not overlap."""
    bounds = transform_bounds(grid.crs, georef.crs, *grid.bounds, densify_pts=21)
    window = from_bounds(*bounds, transform=georef.transform)
    col_lo = max(int(np.floor(window.col_off)) - WARP_MARGIN_PX, 0)
    row_lo = max(int(np.floor(window.row_off)) - WARP_MARGIN_PX, 0)
    col_hi = min(int(np.ceil(window.col_off + window.width)) + WARP_MARGIN_PX, src.width)
    row_hi = min(int(np.ceil(window.row_off + window.height)) + WARP_MARGIN_PX, src.height)
    if col_hi <= col_lo or row_hi <= row_lo:
        return None
    return Window(col_lo, row_lo, col_hi - col_lo, row_hi - row_lo)


def _warp(src, georef: Georeference, file_bands: list[int], grid: PixelGrid, out: np.ndarray, *, categorical: bool) -> None:
    """Resample the part of `src` under the tile onto `grid` (nodata stays out of the interpolation).

    Categorical bands nearest; continuous ones bilinear, or averaged over the file's
    pixels when those are finer than the grid's (bilinear would alias there).
    """
    window = _source_window(src, georef, grid)
    if window is None:
        return
    data = _as_missing(src.read(file_bands, window=window, out_dtype=np.float32), src.nodata)
    reproject(
        source=data,
        destination=out,
        src_transform=georef.transform @ Affine.translation(window.col_off, window.row_off),
        src_crs=georef.crs,
        src_nodata=np.nan,
        dst_transform=grid.transform,
        dst_crs=grid.crs,
        dst_nodata=SENTINEL,
        resampling=_resampling(georef, grid, categorical),
    )


def _resampling(georef: Georeference, grid: PixelGrid, categorical: bool) -> Resampling:
    if categorical:
        return Resampling.nearest
    same_units = georef.crs.is_geographic == grid.crs.is_geographic
    finer = same_units and abs(georef.transform.a) < abs(grid.transform.a) * (1 - GRID_TOLERANCE)
    return Resampling.average if finer else Resampling.bilinear
