"""Batch augmentations (spec section 3.3): D4 dihedral, CutMix, SensorDropout; crops and spectral jitter for two-view objectives.

They act on a micro-batch `images: {sensor: {Grid: (B, T, C, H, W) or (B, T, C)}}`
(`spacenit.data.images`: each sensor's grids at their own resolutions over one
footprint) of standardized values with the sentinel where data is missing, and
draw every random choice from the generator they are given (seeded per step and
micro-batch by the loader, so a resumed run augments exactly as before).
Co-registered sensors and grids of one sample always get the same transform, on
the same ground: boxes are placed in pixels of the finest grid, in whole pixels
of every grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F

from spacenit.config import Config
from spacenit.data.images import alignment, map_grids, relative_sizes, spatial
from spacenit.sensors import SENTINEL

Images = dict  # {sensor: {Grid: tensor}}


def _batch_size(images: Images) -> int:
    return next(iter(next(iter(images.values())).values())).shape[0]


def dihedral(images: Images, generator: torch.Generator) -> Images:
    """One of the 8 symmetries of the square per sample (k quarter turns, then an optional flip)."""
    arrays = list(spatial(images))
    if not arrays:
        return images
    B = arrays[0][2].shape[0]
    turns = torch.randint(4, (B,), generator=generator).tolist()
    flips = torch.randint(2, (B,), generator=generator).tolist()

    def transform(sensor, grid, x):
        if x.ndim != 5:
            return x
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"dihedral transforms need square tiles; {sensor} {grid.name} is {x.shape[-2]}x{x.shape[-1]}")
        samples = []
        for b in range(B):
            y = torch.rot90(x[b], turns[b], dims=(-2, -1))
            samples.append(torch.flip(y, dims=(-1,)) if flips[b] else y)
        return torch.stack(samples)

    return map_grids(images, transform)


def cutmix(images: Images, generator: torch.Generator, alpha: float = 1.0) -> Images:
    """Paste into each sample a box from the next sample of the batch (rolled by one).

    The box area fraction is drawn from Beta(alpha, alpha); the box is the same ground
    for every spatial sensor, grid and timestep of the sample.
    """
    sizes = relative_sizes(images)
    if not sizes:
        return images
    finest = next(x for s, g, x in spatial(images) if sizes[(s, g)] == 1)
    B, H, W = finest.shape[0], finest.shape[-2], finest.shape[-1]
    if B < 2:
        return images
    unit = alignment(sizes.values())  # box corners and sides on whole pixels of every grid
    # torch's Beta takes no generator: draw it with numpy, seeded from ours.
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    box_h = min(max(unit, round(H * lam**0.5 / unit) * unit), H // unit * unit)
    box_w = min(max(unit, round(W * lam**0.5 / unit) * unit), W // unit * unit)
    top = int(torch.randint((H - box_h) // unit + 1, (1,), generator=generator)) * unit
    left = int(torch.randint((W - box_w) // unit + 1, (1,), generator=generator)) * unit

    def paste(sensor, grid, x):
        if x.ndim != 5:
            return x
        f = sizes[(sensor, grid)]
        t, lf, bh, bw = (int(Fraction(v) / f) for v in (top, left, box_h, box_w))
        mixed = x.clone()
        mixed[..., t : t + bh, lf : lf + bw] = x.roll(1, dims=0)[..., t : t + bh, lf : lf + bw]
        return mixed

    return map_grids(images, paste)


def sensor_dropout(images: Images, generator: torch.Generator, probability: float) -> Images:
    """Drop whole sensors (all their grids) per sample with `probability` by setting them to the
    sentinel (their tokens become absent); every sample keeps at least one sensor."""
    names = list(images)
    if len(names) < 2 or probability <= 0:
        return images
    B = _batch_size(images)
    drop = torch.rand(B, len(names), generator=generator) < probability  # (B, S)
    keep_one = torch.randint(len(names), (B,), generator=generator)
    drop[torch.arange(B), keep_one] = False
    out = {}
    for s, name in enumerate(names):
        out[name] = {}
        for grid, x in images[name].items():
            if drop[:, s].any():
                x = x.clone()
                x[drop[:, s]] = SENTINEL
            out[name][grid] = x
    return out


def random_resized_crop(images: Images, generator: torch.Generator, scale: tuple[float, float] = (0.25, 1.0)) -> Images:
    """Per sample, a random square box covering a fraction in `scale` of the tile's area, resized
    back to the tile's size (bilinear): the "view" of SimCLR-style objectives.

    The box is the same, in map units, for every spatial sensor, grid and timestep of a
    sample (its coordinates are relative to the footprint), so co-registered sensors stay
    aligned whatever their resolution. An output pixel is the weighted mean of its valid
    (non-sentinel) neighbours, and missing when most of its weight falls on missing data;
    non-spatial sensors pass through.
    """
    arrays = list(spatial(images))
    if not arrays:
        return images
    B = arrays[0][2].shape[0]
    low, high = scale
    side = (low + (high - low) * torch.rand(B, generator=generator)).sqrt()  # box side / tile side
    # Box centre in normalized coordinates, anywhere that keeps the box inside the tile.
    centre = (torch.rand(B, 2, generator=generator) * 2 - 1) * (1 - side)[:, None]
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = side, side, centre

    def resample(sensor, grid, x):  # (B, T, C, H, W)
        if x.ndim != 5:
            return x
        _, T, C, H, W = x.shape
        flat = x.reshape(B, T * C, H, W)
        missing = flat == SENTINEL
        coords = F.affine_grid(theta.to(device=x.device, dtype=torch.float32), [B, T * C, H, W], align_corners=False)
        sample = dict(mode="bilinear", padding_mode="border", align_corners=False)
        values = F.grid_sample(flat.float().masked_fill(missing, 0.0), coords, **sample)
        valid_weight = F.grid_sample((~missing).float(), coords, **sample)
        # The mean of the valid neighbours; missing where most of the weight falls on missing data.
        values = (values / valid_weight.clamp_min(1e-6)).masked_fill(valid_weight < 0.5, SENTINEL)
        return values.to(x.dtype).reshape(B, T, C, H, W)

    return map_grids(images, resample)


def random_crop(images: Images, generator: torch.Generator, scale: tuple[float, float] = (0.25, 1.0),
                multiple: int = 1) -> Images:  # fmt: skip
    """A random square crop at the native resolution: one side for the whole batch (in pixels of
    the finest grid, a multiple of `multiple`, e.g. the patch size, and a whole number of pixels
    of every grid, covering about a fraction in `scale` of the tile's area), a random position
    per sample, the same ground on every grid; non-spatial sensors pass through.
    """
    sizes = relative_sizes(images)
    if not sizes:
        return images
    finest = next(x for s, g, x in spatial(images) if sizes[(s, g)] == 1)
    B, H, W = finest.shape[0], finest.shape[-2], finest.shape[-1]
    unit = int(np.lcm(multiple, alignment(sizes.values())))
    low, high = scale
    fraction = low + (high - low) * float(torch.rand((), generator=generator))
    largest = max(min(H, W) // unit * unit, unit)
    side = min(max(unit, round(fraction**0.5 * min(H, W) / unit) * unit), largest)
    align = alignment(sizes.values())
    tops = (torch.randint((H - side) // align + 1, (B,), generator=generator) * align).tolist()
    lefts = (torch.randint((W - side) // align + 1, (B,), generator=generator) * align).tolist()

    def crop(sensor, grid, x):
        if x.ndim != 5:
            return x
        f = sizes[(sensor, grid)]
        g_side = int(Fraction(side) / f)
        boxes = enumerate(zip(tops, lefts, strict=True))
        return torch.stack([x[b, ..., int(t / f) : int(t / f) + g_side, int(lf / f) : int(lf / f) + g_side] for b, (t, lf) in boxes])

    return map_grids(images, crop)


def spectral_jitter(images: Images, generator: torch.Generator, strength: float, sensors: set[str] | None = None) -> Images:
    """SimCLR's colour jitter for any number of bands: per sample and band, a gain drawn from
    U(1 - strength, 1 + strength) and an offset from U(-strength, strength), in standardized
    units (so 0.2 shifts a band by up to a fifth of its dataset std). One draw per sample and
    band, shared by its timesteps and pixels; sentinel values stay sentinel. Only `sensors`
    (default: all) are jittered: categorical layers must be left alone.
    """
    if strength <= 0:
        return images

    def jitter(sensor, grid, x):
        if sensors is not None and sensor not in sensors:
            return x
        B, C = x.shape[0], x.shape[2]
        shape = (B, 1, C) + (1,) * (x.ndim - 3)  # broadcast over time and pixels
        gain = 1 + strength * (2 * torch.rand(B, C, generator=generator) - 1)
        offset = strength * (2 * torch.rand(B, C, generator=generator) - 1)
        jittered = x * gain.reshape(shape).to(x) + offset.reshape(shape).to(x)
        return torch.where(x == SENTINEL, x, jittered)

    return map_grids(images, jitter)


def augmented_view(images: Images, generator: torch.Generator, scale: tuple[float, float] = (0.25, 1.0), *,
                   resize: bool = True, multiple: int = 1) -> Images:  # fmt: skip
    """One view for a two-view objective: a random crop, resized back to the tile's size
    (`resize`) or kept at the native resolution with a side that is a multiple of `multiple`,
    then a random D4 symmetry (square views only; others keep their orientation)."""
    view = random_resized_crop(images, generator, scale) if resize else random_crop(images, generator, scale, multiple)
    arrays = [x for _, _, x in spatial(view)]
    if arrays and all(x.shape[-1] == x.shape[-2] for x in arrays):
        view = dihedral(view, generator)
    return view


@dataclass
class AugmentConfig(Config):
    """Augmentations of pretraining batches; all off means batches are used as stored."""

    #: Random D4 symmetry (rotations by 90 degrees and flips) per sample.
    dihedral: bool = True
    #: Probability that a micro-batch gets CutMix.
    cutmix_probability: float = 0.0
    #: Probability of dropping each sensor of a sample (never all of them).
    sensor_dropout: float = 0.0

    def apply(self, images: Images, generator: torch.Generator) -> Images:
        """Full-tile augmentations, applied before the token-budget crop."""
        if self.dihedral:
            images = dihedral(images, generator)
        if self.cutmix_probability > 0 and float(torch.rand((), generator=generator)) < self.cutmix_probability:
            images = cutmix(images, generator)
        return images

    def apply_after_crop(self, images: Images, generator: torch.Generator) -> Images:
        return sensor_dropout(images, generator, self.sensor_dropout)
