"""Multi-grid images: how a sample's pixels travel from the dataset to the model.

A sensor's pixels are a dict {Grid: array} (`spacenit.sensors.Grid`: its bands
and pixel size), one array per grid the sensor is stored on, every grid over
the same footprint: Sentinel-2 L2A natively as 10 m (B, T, 4, H, W), 20 m
(B, T, 6, H/2, W/2) and 60 m (B, T, 2, H/6, W/6). Keys describe their arrays, so
a batch carries what it is. A non-spatial sensor (ERA5) has one grid of shape
(B, T, C). The model also takes a plain array per sensor: every band, in the
sensor's order, on one grid of the given pixel size (`as_grids`).

    images = {"sentinel2_l2a": {grid: tensor for grid, tensor in ...}, "era5": {...}}

The functions here walk that structure; `to_one_grid` puts a sensor's grids
on its finest grid (upsampling the others) for consumers that need every band
on one pixel grid, such as the Galileo and Presto ports and raw-pixel features.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from fractions import Fraction
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from spacenit.sensors import SENTINEL, Grid, SensorSpec, grid_name, metres

A = TypeVar("A", np.ndarray, torch.Tensor)
#: One sensor's pixels: {Grid: array}, or one array of every band on one grid.
SensorImages = dict[Grid, A] | A


def as_grids(x: SensorImages, sensor: SensorSpec, gsd_m: float) -> dict[Grid, A]:
    """A sensor's pixels as {Grid: array}; a plain array is every band on one grid of `gsd_m`."""
    if isinstance(x, dict):
        return x
    return {Grid(grid_name(gsd_m), sensor.bands, gsd_m): x}


def map_grids(images: dict[str, dict[Grid, A]], fn: Callable[[str, Grid, A], A]) -> dict[str, dict[Grid, A]]:
    """The same structure with fn(sensor, grid, array) applied to every array."""
    return {sensor: {grid: fn(sensor, grid, x) for grid, x in grids.items()} for sensor, grids in images.items()}


def spatial(images: dict[str, dict[Grid, A]]) -> Iterator[tuple[str, Grid, A]]:
    """(sensor, grid, array) of every spatial array, (..., H, W); non-spatial ones are (B, T, C)."""
    for sensor, grids in images.items():
        for grid, x in grids.items():
            if x.ndim >= 4:
                yield sensor, grid, x


def relative_sizes(images: dict[str, dict[Grid, A]]) -> dict[tuple[str, Grid], Fraction]:
    """Each spatial grid's pixel size relative to the finest grid's, from the arrays' shapes
    (every grid covers the same footprint): 2 for a 20 m grid beside a 10 m one."""
    sides = {(s, g): x.shape[-2] for s, g, x in spatial(images)}
    if not sides:
        return {}
    finest = max(sides.values())
    return {key: Fraction(finest, side) for key, side in sides.items()}


def alignment(factors) -> int:
    """The smallest number of finest-grid pixels that is a whole number of pixels on every grid."""
    return math.lcm(1, *(f.numerator for f in factors))


def to_one_grid(grids: dict[Grid, A], sensor: SensorSpec, *, mode: str = "bilinear",
                size: tuple[int, int] | None = None) -> A:  # fmt: skip
    """A sensor's grids on its finest grid (or on `size` pixels over the same footprint),
    (..., C, H, W) with every band in the sensor's order.

    Coarser grids are upsampled (`mode` "bilinear" or "nearest"); a pixel is missing
    (sentinel) where most of its interpolation weight falls on missing pixels.
    Bands no grid holds are sentinel. Non-spatial grids are concatenated as they are.
    """
    first = next(iter(grids.values()))
    torch_in = isinstance(first, torch.Tensor)
    parts = {g: torch.as_tensor(x) for g, x in grids.items()}
    spatial_grid = first.ndim >= 4
    if size is not None:
        height, width = size
    elif spatial_grid:
        height, width = max(x.shape[-2] for x in parts.values()), max(x.shape[-1] for x in parts.values())
    else:
        height, width = 0, 0
    lead = first.shape[:-3] if spatial_grid else first.shape[:-1]
    out = torch.full((*lead, sensor.num_bands, *((height, width) if spatial_grid else ())), SENTINEL, dtype=torch.float32)
    for grid, x in parts.items():
        index = sensor.band_index(grid.bands)
        x = x.float()
        if spatial_grid and x.shape[-2:] != (height, width):
            x = resample_sentinel(x, (height, width), mode)
        if spatial_grid:
            out[..., index, :, :] = x
        else:
            out[..., index] = x
    return out if torch_in else out.numpy()


def resample_sentinel(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear",
                      scale: float | None = None) -> torch.Tensor:  # fmt: skip
    """Resize (..., H, W) to `size` (or by `scale`, keeping exact pixel geometry), treating the
    sentinel as missing: values are the mean of the valid neighbours, missing where most of
    the weight is missing."""
    lead = x.shape[:-2]
    flat = x.reshape(-1, 1, *x.shape[-2:]).float()
    missing = flat == SENTINEL
    kwargs = {"scale_factor": scale, "recompute_scale_factor": False} if scale is not None else {"size": size}
    if mode == "nearest":
        values = F.interpolate(flat, mode="nearest", **kwargs)
        return values.reshape(*lead, *values.shape[-2:])
    values = F.interpolate(flat.masked_fill(missing, 0.0), mode=mode, align_corners=False, **kwargs)
    weight = F.interpolate((~missing).float(), mode=mode, align_corners=False, **kwargs)
    values = (values / weight.clamp_min(1e-6)).masked_fill(weight < 0.5, SENTINEL)
    return values.reshape(*lead, *values.shape[-2:])


def window(x: A, top: int, left: int, height: int, width: int) -> A:
    """x[..., top:top+height, left:left+width], padded with the sentinel where it leaves x."""
    out = x[..., top : top + height, left : left + width]
    pad_h, pad_w = height - out.shape[-2], width - out.shape[-1]
    if not (pad_h or pad_w):
        return out
    if isinstance(out, torch.Tensor):
        return F.pad(out, (0, pad_w, 0, pad_h), value=SENTINEL)
    return np.pad(out, [(0, 0)] * (out.ndim - 2) + [(0, pad_h), (0, pad_w)], constant_values=SENTINEL)


def pixels_per_patch(patch_m: float, gsd_m: float) -> Fraction:
    """How many of a grid's pixels one patch of `patch_m` metres spans per side (exact)."""
    return metres(patch_m) / metres(gsd_m)
