"""Write a small, deterministic, multi-sensor GeoTIFF set for demos and tests.

Real data is large, licensed and slow to fetch; `make demo` and the test suite
instead need a few dozen samples that exercise everything conversion has to
handle (several sensors, several dates, bands at 10, 20, 30 and 60 m, several
UTM zones, nodata, a missing timestep) and that carry a signal a probe can
learn. `make_synthetic` writes such a set in the ``samples`` layout read by
`spacenit.conversion.discover`, every band at its native resolution::

    <out>/<sample_id>/sentinel2_l2a/<YYYY-MM-DD>/<band>.tif  one file per band, uint16 reflectance
                                                              x 10000 at 10, 20 or 60 m (as delivered)
    <out>/<sample_id>/sentinel1/<YYYY-MM-DD>.tif              VV, VH, float32 dB, 10 m
    <out>/<sample_id>/srtm/dem.tif                            elevation, float32 m, 30 m pixels
    <out>/labels.csv                                          sample_id,label,split

A 20 m or 60 m band is the block mean of the same band's 10 m field, as a
coarser sensor sees it; so the tile side must be a multiple of 6 (10 m) pixels.

Each sample belongs to one of four land-cover classes with its own spectral
and backscatter signature, blurred by per-sample variation, mixing with
another class, spatial texture and sensor noise, so that a simple classifier
is clearly above chance without being perfect.

Every random number comes from one ``numpy.random.default_rng(seed)`` and no
timestamps are written, so the same arguments give byte-identical files.

Run as a script::

    python -m spacenit.conversion.synthetic data/synthetic --num-samples 48
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from scipy.ndimage import gaussian_filter

from spacenit.sensors import SENTINEL1, SENTINEL2_L2A, SRTM

#: Every band's pixel size divides a tile of a multiple of this many 10 m pixels (60 m bands).
TILE_MULTIPLE_PX = 6

#: Pixel size of the Sentinel-2 and Sentinel-1 rasters.
OPTICAL_GSD_M = 10.0
#: Pixel size of the DEM; coarser on purpose so conversion has to resample it.
DEM_GSD_M = 30.0
#: Northern-hemisphere UTM zones 31-33 (WGS 84), i.e. western/central Europe.
UTM_EPSG_CODES = (32631, 32632, 32633)
#: All acquisitions fall in this year.
YEAR = 2021
#: Fraction of each class that goes to the train split.
TRAIN_FRACTION = 0.7
DEM_FILE_NAME = "dem.tif"
LABELS_FILE_NAME = "labels.csv"

# Plausible UTM extents of the zones above (metres); sample footprints are drawn inside.
_EASTING_RANGE_M = (300_000, 700_000)
_NORTHING_RANGE_M = (4_800_000, 5_600_000)
# Day-of-year jitter of a sample's acquisitions around the nominal dates.
_DATE_JITTER_DAYS = 5


@dataclass(frozen=True)
class LandCoverClass:
    """Mean signature of one land-cover class.

    Sentinel-2 reflectances (0..1) are given in `SENTINEL2_L2A.bands` order,
    once for the dormant season and once for the peak of the growing season;
    a date's signature interpolates between them with a seasonal weight, which
    is what gives cropland its NDVI cycle. Sentinel-1 backscatter is in dB.
    """

    name: str
    s2_dormant: tuple[float, ...]
    s2_peak: tuple[float, ...]
    s1_vv_db: float
    s1_vh_db: float
    #: Extra VH backscatter (dB) at the peak of the growing season (crop canopy volume scattering).
    s1_vh_peak_gain_db: float = 0.0
    #: Standard deviation (m) of the smooth relief on the DEM.
    relief_m: float = 20.0


# fmt: off
# Bands:       B01    B02    B03    B04    B05    B06    B07    B08    B8A    B09    B11    B12
LAND_COVER_CLASSES: tuple[LandCoverClass, ...] = (
    LandCoverClass(
        "water",
        s2_dormant=(0.060, 0.055, 0.050, 0.035, 0.030, 0.025, 0.022, 0.020, 0.018, 0.010, 0.012, 0.008),
        s2_peak=(0.058, 0.055, 0.060, 0.040, 0.035, 0.028, 0.024, 0.022, 0.020, 0.010, 0.012, 0.008),
        s1_vv_db=-19.0,
        s1_vh_db=-25.0,
        relief_m=1.0,
    ),
    LandCoverClass(
        "forest",
        s2_dormant=(0.030, 0.028, 0.045, 0.030, 0.075, 0.190, 0.230, 0.250, 0.260, 0.090, 0.140, 0.065),
        s2_peak=(0.028, 0.025, 0.050, 0.025, 0.085, 0.240, 0.290, 0.310, 0.320, 0.110, 0.150, 0.065),
        s1_vv_db=-7.5,
        s1_vh_db=-13.0,
        relief_m=40.0,
    ),
    LandCoverClass(
        "cropland",
        # Dormant: bare soil (bright, flat-ish, high SWIR); peak: green canopy (red edge, high NIR).
        s2_dormant=(0.070, 0.080, 0.105, 0.130, 0.160, 0.185, 0.200, 0.215, 0.225, 0.090, 0.280, 0.220),
        s2_peak=(0.030, 0.035, 0.075, 0.040, 0.115, 0.290, 0.360, 0.400, 0.410, 0.130, 0.210, 0.100),
        s1_vv_db=-12.0,
        s1_vh_db=-19.0,
        s1_vh_peak_gain_db=4.0,
        relief_m=8.0,
    ),
    LandCoverClass(
        "urban",
        s2_dormant=(0.110, 0.120, 0.135, 0.150, 0.165, 0.175, 0.185, 0.195, 0.200, 0.085, 0.230, 0.205),
        s2_peak=(0.110, 0.120, 0.138, 0.148, 0.168, 0.182, 0.193, 0.203, 0.208, 0.087, 0.228, 0.200),
        s1_vv_db=-6.0,
        s1_vh_db=-12.5,
        relief_m=10.0,
    ),
)
# fmt: on
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in LAND_COVER_CLASSES)


@dataclass(frozen=True)
class _SamplePlan:
    """What is decided about a sample before its pixels are drawn."""

    sample_id: str
    class_index: int
    split: str
    epsg: int
    left_m: float
    top_m: float
    s2_dates: tuple[dt.date, ...]
    s1_dates: tuple[dt.date, ...]
    has_nodata_patch: bool


def make_synthetic(
    output_dir: str | Path,
    *,
    num_samples: int = 48,
    tile_size_px: int = 48,
    num_dates: int = 3,
    seed: int = 0,
) -> Path:
    """Write the synthetic GeoTIFF set under `output_dir` and return its path.

    Existing files with the same names are overwritten; other files are left alone.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    if tile_size_px < 12 or tile_size_px % TILE_MULTIPLE_PX:
        raise ValueError(
            f"tile_size_px must be a multiple of {TILE_MULTIPLE_PX} (60 m bands) of at least 12, got {tile_size_px}"
        )
    if not 1 <= num_dates <= 12:
        raise ValueError(
            f"num_dates must be 1..12 (one acquisition per month at most), got {num_dates}"
        )

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    plans = _plan_samples(
        rng, num_samples=num_samples, tile_size_px=tile_size_px, num_dates=num_dates
    )
    for plan in plans:
        _write_sample(rng, plan, output_dir / plan.sample_id, tile_size_px=tile_size_px)
    _write_labels(output_dir / LABELS_FILE_NAME, plans)
    return output_dir


# --- planning ------------------------------------------------------------------------------


def _plan_samples(
    rng: np.random.Generator, *, num_samples: int, tile_size_px: int, num_dates: int
) -> list[_SamplePlan]:
    num_classes = len(LAND_COVER_CLASSES)
    # Balanced classes, shuffled so that labels do not follow sample-id order.
    class_of = rng.permutation(np.arange(num_samples) % num_classes)
    split_of = _stratified_splits(rng, class_of)
    epsg_of = [UTM_EPSG_CODES[k % len(UTM_EPSG_CODES)] for k in rng.permutation(num_samples)]
    origins = _footprint_origins(rng, epsg_of, footprint_m=tile_size_px * OPTICAL_GSD_M)

    # A few samples get a nodata patch; one or two lose their last Sentinel-1 date.
    num_with_nodata = max(1, round(0.1 * num_samples))
    with_nodata = set(rng.choice(num_samples, size=num_with_nodata, replace=False).tolist())
    num_short_s1 = 0 if num_dates < 2 else (2 if num_samples >= 8 else 1)
    short_s1 = set(rng.choice(num_samples, size=num_short_s1, replace=False).tolist())

    plans = []
    for i in range(num_samples):
        s2_dates = _acquisition_dates(rng, num_dates)
        # Sentinel-1 passes a day or three after Sentinel-2, as on real orbits.
        s1_offsets = rng.integers(1, 4, size=num_dates)
        s1_dates = tuple(
            d + dt.timedelta(days=int(o)) for d, o in zip(s2_dates, s1_offsets, strict=True)
        )
        if i in short_s1:
            s1_dates = s1_dates[:-1]
        plans.append(
            _SamplePlan(
                sample_id=f"sample_{i:04d}",
                class_index=int(class_of[i]),
                split=split_of[i],
                epsg=epsg_of[i],
                left_m=origins[i][0],
                top_m=origins[i][1],
                s2_dates=s2_dates,
                s1_dates=s1_dates,
                has_nodata_patch=i in with_nodata,
            )
        )
    return plans


def _stratified_splits(rng: np.random.Generator, class_of: np.ndarray) -> list[str]:
    splits = ["train"] * len(class_of)
    for c in np.unique(class_of):
        members = rng.permutation(np.flatnonzero(class_of == c))
        num_train = round(TRAIN_FRACTION * len(members))
        if len(members) >= 2:
            # Keep both splits non-empty for every class that can have both.
            num_train = min(max(num_train, 1), len(members) - 1)
        for i in members[num_train:]:
            splits[i] = "test"
    return splits


def _footprint_origins(
    rng: np.random.Generator, epsg_of: Sequence[int], *, footprint_m: float
) -> list[tuple[float, float]]:
    """Top-left corners, one distinct non-overlapping cell per sample within its zone."""
    # Cells a bit larger than a footprint, in whole DEM pixels so both grids share the corner.
    cell_m = DEM_GSD_M * math.ceil((footprint_m + 1000.0) / DEM_GSD_M)
    cols = int((_EASTING_RANGE_M[1] - _EASTING_RANGE_M[0]) // cell_m)
    rows = int((_NORTHING_RANGE_M[1] - _NORTHING_RANGE_M[0]) // cell_m)
    origins: list[tuple[float, float]] = [(0.0, 0.0)] * len(epsg_of)
    for epsg in UTM_EPSG_CODES:
        members = [i for i, e in enumerate(epsg_of) if e == epsg]
        if len(members) > cols * rows:
            raise ValueError(
                f"too many samples ({len(members)}) for the UTM zone EPSG:{epsg} at this tile size"
            )
        cells = rng.choice(cols * rows, size=len(members), replace=False)
        for i, cell in zip(members, cells, strict=True):
            row, col = divmod(int(cell), cols)
            left = _EASTING_RANGE_M[0] + col * cell_m
            top = _NORTHING_RANGE_M[1] - row * cell_m
            origins[i] = (float(left), float(top))
    return origins


def _acquisition_dates(rng: np.random.Generator, num_dates: int) -> tuple[dt.date, ...]:
    """`num_dates` dates spread over the year, each in its own month, jittered by a few days."""
    jan_1 = dt.date(YEAR, 1, 1)
    dates = []
    for k in range(num_dates):
        # Centre of the k-th of num_dates equal slices of the year; the jitter stays well
        # inside a slice, so the dates are distinct and ordered.
        nominal_day = round(365 * (k + 0.5) / num_dates)
        jitter = int(rng.integers(-_DATE_JITTER_DAYS, _DATE_JITTER_DAYS + 1))
        dates.append(jan_1 + dt.timedelta(days=nominal_day + jitter))
    return tuple(dates)


# --- pixels --------------------------------------------------------------------------------


def _growing_season_weight(day_of_year: float, peak_day: float) -> float:
    """0 in winter, 1 at the crop's peak: a raised cosine of the day of year."""
    return 0.5 * (1.0 + math.cos(2.0 * math.pi * (day_of_year - peak_day) / 365.0))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Spatially correlated noise with zero mean and unit standard deviation."""
    field = gaussian_filter(rng.standard_normal(shape), sigma=sigma_px, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-12)


def _write_sample(
    rng: np.random.Generator, plan: _SamplePlan, sample_dir: Path, *, tile_size_px: int
) -> None:
    own = LAND_COVER_CLASSES[plan.class_index]
    # Real tiles are rarely pure: part of each tile is another class, in smooth patches.
    others = [c for i, c in enumerate(LAND_COVER_CLASSES) if i != plan.class_index]
    mixed = others[int(rng.integers(len(others)))]
    shape = (tile_size_px, tile_size_px)
    mixed_fraction = np.clip(
        rng.uniform(0.0, 0.5) + 0.25 * _smooth_noise(rng, shape, sigma_px=tile_size_px / 6),
        0.0,
        1.0,
    ).astype(np.float32)

    # Per-sample variation: overall brightness, band-to-band gain and crop phenology.
    brightness = float(rng.lognormal(0.0, 0.15))
    band_gain = rng.normal(1.0, 0.08, size=SENTINEL2_L2A.num_bands)
    peak_day = float(rng.uniform(150, 230))
    # Soil moisture and incidence angle shift backscatter by a few dB from scene to scene.
    backscatter_offset_db = rng.normal(0.0, 2.0, size=SENTINEL1.num_bands)
    texture = _smooth_noise(rng, shape, sigma_px=2.0)
    texture_strength = 0.08

    transform = _north_up_transform(plan.left_m, plan.top_m, OPTICAL_GSD_M)
    crs = CRS.from_epsg(plan.epsg)
    nodata_t = int(rng.integers(len(plan.s2_dates)))
    patch = _nodata_patch(rng, tile_size_px) if plan.has_nodata_patch else None

    for t, date in enumerate(plan.s2_dates):
        weight = _growing_season_weight(date.timetuple().tm_yday, peak_day)
        own_sig = _s2_signature(own, weight)
        mixed_sig = _s2_signature(mixed, weight)
        reflectance = (
            own_sig[:, None, None] * (1.0 - mixed_fraction)
            + mixed_sig[:, None, None] * mixed_fraction
        )
        reflectance = (
            reflectance
            * (brightness * band_gain)[:, None, None]
            * (1.0 + texture_strength * texture)
        )
        reflectance = reflectance + rng.normal(0.0, 0.004, size=reflectance.shape)
        nodata = np.zeros(shape, dtype=bool)
        if patch is not None and t == nodata_t:
            nodata[patch] = True
        for grid in SENTINEL2_L2A.native_grids():
            factor = round(grid.gsd_m / OPTICAL_GSD_M)
            for band in grid.bands:
                field = _block_mean(reflectance[SENTINEL2_L2A.bands.index(band)], factor)
                # 0 is nodata, so valid pixels are at least 1; a coarse pixel touching the gap is a gap.
                digital_numbers = np.clip(np.rint(field * 10_000), 1, 20_000).astype(np.uint16)
                digital_numbers[_block_any(nodata, factor)] = 0
                _write_tif(
                    sample_dir / SENTINEL2_L2A.name / date.isoformat() / f"{band}.tif",
                    digital_numbers[None],
                    crs=crs,
                    transform=_north_up_transform(plan.left_m, plan.top_m, grid.gsd_m),
                    nodata=0,
                    band_names=(band,),
                )

    for t, date in enumerate(plan.s1_dates):
        weight = _growing_season_weight(date.timetuple().tm_yday, peak_day)
        own_db = _s1_signature(own, weight)
        mixed_db = _s1_signature(mixed, weight)
        backscatter_db = (
            own_db[:, None, None] * (1.0 - mixed_fraction)
            + mixed_db[:, None, None] * mixed_fraction
        )
        backscatter_db = (
            backscatter_db
            + backscatter_offset_db[:, None, None]
            + 1.0 * texture
            + rng.normal(0.0, 1.0, size=backscatter_db.shape)
        )
        backscatter_db = backscatter_db.astype(np.float32)
        if patch is not None and t == min(nodata_t, len(plan.s1_dates) - 1):
            backscatter_db[(slice(None), *patch)] = np.nan
        _write_tif(
            sample_dir / SENTINEL1.name / f"{date.isoformat()}.tif",
            backscatter_db,
            crs=crs,
            transform=transform,
            nodata=float("nan"),
            band_names=SENTINEL1.bands,
        )

    # The DEM covers the 10 m footprint with whole 30 m pixels.
    dem_size_px = round(tile_size_px * OPTICAL_GSD_M / DEM_GSD_M)
    base_elevation_m = rng.uniform(20.0, 900.0)
    relief = own.relief_m * _smooth_noise(
        rng, (dem_size_px, dem_size_px), sigma_px=max(dem_size_px / 4, 1.0)
    )
    elevation_m = (base_elevation_m + relief + rng.normal(0.0, 0.5, size=relief.shape)).astype(
        np.float32
    )
    _write_tif(
        sample_dir / SRTM.name / DEM_FILE_NAME,
        elevation_m[None],
        crs=crs,
        transform=_north_up_transform(plan.left_m, plan.top_m, DEM_GSD_M),
        nodata=None,
        band_names=SRTM.bands,
    )


def _block_mean(field: np.ndarray, factor: int) -> np.ndarray:
    """(H, W) -> (H / factor, W / factor): the mean of each factor x factor block."""
    h, w = field.shape
    return field.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def _block_any(mask: np.ndarray, factor: int) -> np.ndarray:
    h, w = mask.shape
    return mask.reshape(h // factor, factor, w // factor, factor).any(axis=(1, 3))


def _north_up_transform(left_m: float, top_m: float, gsd_m: float) -> Affine:
    # Built directly: rasterio's from_origin multiplies Affines with the deprecated `*`.
    return Affine(gsd_m, 0.0, left_m, 0.0, -gsd_m, top_m)


def _s2_signature(land_cover: LandCoverClass, weight: float) -> np.ndarray:
    dormant = np.asarray(land_cover.s2_dormant)
    peak = np.asarray(land_cover.s2_peak)
    return dormant + weight * (peak - dormant)


def _s1_signature(land_cover: LandCoverClass, weight: float) -> np.ndarray:
    return np.array(
        [land_cover.s1_vv_db, land_cover.s1_vh_db + weight * land_cover.s1_vh_peak_gain_db]
    )


def _nodata_patch(rng: np.random.Generator, tile_size_px: int) -> tuple[slice, slice]:
    """A small square (about a tenth to a fifth of the tile side) somewhere in the tile."""
    size = int(rng.integers(max(tile_size_px // 10, 2), max(tile_size_px // 5, 3) + 1))
    row, col = (int(v) for v in rng.integers(0, tile_size_px - size + 1, size=2))
    return (slice(row, row + size), slice(col, col + size))


def _write_tif(
    path: Path,
    data: np.ndarray,
    *,
    crs: CRS,
    transform: Affine,
    nodata: float | None,
    band_names: Sequence[str],
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "count": data.shape[0],
        "height": data.shape[1],
        "width": data.shape[2],
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        # Integers compress better with horizontal differencing, floats with the float predictor.
        "compress": "deflate",
        "predictor": 2 if np.issubdtype(data.dtype, np.integer) else 3,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for band, name in enumerate(band_names, start=1):
            dst.set_band_description(band, name)


def _write_labels(path: Path, plans: Sequence[_SamplePlan]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["sample_id", "label", "split"])
        for plan in plans:
            writer.writerow([plan.sample_id, CLASS_NAMES[plan.class_index], plan.split])


# --- command line --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spacenit.conversion.synthetic",
        description=(
            "Write a small deterministic synthetic GeoTIFF set (Sentinel-2 L2A, Sentinel-1, SRTM)\n"
            f"in the 'samples' layout, with labels.csv (classes: {', '.join(CLASS_NAMES)})."
        ),
        epilog=(
            "example:\n"
            "  python -m spacenit.conversion.synthetic data/synthetic --num-samples 48 "
            "--tile-size-px 48 --num-dates 3 --seed 0"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "output_dir", type=Path, help="folder to write the samples and labels.csv into"
    )
    parser.add_argument(
        "--num-samples", type=int, default=48, help="number of samples (default: 48)"
    )
    parser.add_argument(
        "--tile-size-px", type=int, default=48,
        help=f"tile side in 10 m pixels, a multiple of {TILE_MULTIPLE_PX} (default: 48)"
    )
    parser.add_argument(
        "--num-dates", type=int, default=3, help="acquisition dates per sample, 1..12 (default: 3)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed; same seed, same bytes (default: 0)"
    )
    args = parser.parse_args(argv)
    try:
        out = make_synthetic(
            args.output_dir,
            num_samples=args.num_samples,
            tile_size_px=args.tile_size_px,
            num_dates=args.num_dates,
            seed=args.seed,
        )
    except ValueError as e:
        parser.error(str(e))
    print(f"wrote {args.num_samples} synthetic samples to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
