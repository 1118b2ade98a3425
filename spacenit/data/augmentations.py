"""Batch augmentations (spec section 3.3): D4 dihedral, CutMix, SensorDropout; crops and spectral jitter for two-view objectives.

They act on a micro-batch `images: {sensor: (B, T, C, H, W) or (B, T, C)}`
of standardized values with the sentinel where data is missing, and draw
every random choice from the generator they are given (seeded per step and
micro-batch by the loader, so a resumed run augments exactly as before).
Co-registered sensors of one sample always get the same transform.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from spacenit.config import Config
from spacenit.sensors import SENTINEL


def dihedral(images: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One of the 8 symmetries of the square per sample (k quarter turns, then an optional flip)."""
    spatial = {k: v for k, v in images.items() if v.ndim == 5}
    if not spatial:
        return images
    B = next(iter(spatial.values())).shape[0]
    turns = torch.randint(4, (B,), generator=generator).tolist()
    flips = torch.randint(2, (B,), generator=generator).tolist()
    out = dict(images)
    for name, x in spatial.items():  # (B, T, C, H, W)
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"dihedral transforms need square tiles; {name} is {x.shape[-2]}x{x.shape[-1]}")
        samples = []
        for b in range(B):
            y = torch.rot90(x[b], turns[b], dims=(-2, -1))
            samples.append(torch.flip(y, dims=(-1,)) if flips[b] else y)
        out[name] = torch.stack(samples)
    return out


def cutmix(images: dict[str, torch.Tensor], generator: torch.Generator, alpha: float = 1.0) -> dict[str, torch.Tensor]:
    """Paste into each sample a box from the next sample of the batch (rolled by one).

    The box area fraction is drawn from Beta(alpha, alpha); the box is the same
    for every spatial sensor and timestep of the sample.
    """
    spatial = {k: v for k, v in images.items() if v.ndim == 5}
    if not spatial:
        return images
    first = next(iter(spatial.values()))
    B, H, W = first.shape[0], first.shape[-2], first.shape[-1]
    if B < 2:
        return images
    # torch's Beta takes no generator: draw it with numpy, seeded from ours.
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    box_h, box_w = max(1, round(H * lam**0.5)), max(1, round(W * lam**0.5))
    top = int(torch.randint(H - box_h + 1, (1,), generator=generator))
    left = int(torch.randint(W - box_w + 1, (1,), generator=generator))
    out = dict(images)
    for name, x in spatial.items():
        mixed = x.clone()
        mixed[..., top : top + box_h, left : left + box_w] = x.roll(1, dims=0)[..., top : top + box_h, left : left + box_w]
        out[name] = mixed
    return out


def sensor_dropout(images: dict[str, torch.Tensor], generator: torch.Generator, probability: float) -> dict[str, torch.Tensor]:
    """Drop whole sensors per sample with `probability` by setting them to the sentinel
    (their tokens become absent); every sample keeps at least one sensor."""
    names = list(images)
    if len(names) < 2 or probability <= 0:
        return images
    B = next(iter(images.values())).shape[0]
    drop = torch.rand(B, len(names), generator=generator) < probability  # (B, S)
    keep_one = torch.randint(len(names), (B,), generator=generator)
    drop[torch.arange(B), keep_one] = False
    out = {}
    for s, name in enumerate(names):
        x = images[name]
        if drop[:, s].any():
            x = x.clone()
            x[drop[:, s]] = SENTINEL
        out[name] = x
    return out


def random_resized_crop(images: dict[str, torch.Tensor], generator: torch.Generator,
                        scale: tuple[float, float] = (0.25, 1.0)) -> dict[str, torch.Tensor]:  # fmt: skip
    """Per sample, a random square box covering a fraction in `scale` of the tile's area, resized
    back to the tile's size (bilinear): the "view" of SimCLR-style objectives.

    The box is the same, in map units, for every spatial sensor and timestep of a sample, so
    co-registered sensors stay aligned whatever their resolution. An output pixel is the
    weighted mean of its valid (non-sentinel) neighbours, and missing when most of its
    weight falls on missing data; non-spatial sensors pass through.
    """
    spatial = {k: v for k, v in images.items() if v.ndim == 5}
    if not spatial:
        return images
    B = next(iter(spatial.values())).shape[0]
    low, high = scale
    side = (low + (high - low) * torch.rand(B, generator=generator)).sqrt()  # box side / tile side
    # Box centre in normalized coordinates, anywhere that keeps the box inside the tile.
    centre = (torch.rand(B, 2, generator=generator) * 2 - 1) * (1 - side)[:, None]
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = side, side, centre
    out = dict(images)
    for name, x in spatial.items():  # (B, T, C, H, W)
        _, T, C, H, W = x.shape
        flat = x.reshape(B, T * C, H, W)
        missing = flat == SENTINEL
        grid = F.affine_grid(theta.to(device=x.device, dtype=torch.float32), [B, T * C, H, W], align_corners=False)
        sample = dict(mode="bilinear", padding_mode="border", align_corners=False)
        values = F.grid_sample(flat.float().masked_fill(missing, 0.0), grid, **sample)
        valid_weight = F.grid_sample((~missing).float(), grid, **sample)
        # The mean of the valid neighbours; missing where most of the weight falls on missing data.
        values = (values / valid_weight.clamp_min(1e-6)).masked_fill(valid_weight < 0.5, SENTINEL)
        out[name] = values.to(x.dtype).reshape(B, T, C, H, W)
    return out


def random_crop(images: dict[str, torch.Tensor], generator: torch.Generator, scale: tuple[float, float] = (0.25, 1.0),
                multiple: int = 1) -> dict[str, torch.Tensor]:  # fmt: skip
    """A random square crop at the native resolution: one side for the whole batch (a multiple
    of `multiple`, e.g. the patch size, covering about a fraction in `scale` of the tile's area),
    a random position per sample. The spatial sensors share one pixel grid (as the tokenizer
    requires) and one box; non-spatial sensors pass through.
    """
    spatial = {k: v for k, v in images.items() if v.ndim == 5}
    if not spatial:
        return images
    first = next(iter(spatial.values()))
    B, H, W = first.shape[0], first.shape[-2], first.shape[-1]
    low, high = scale
    fraction = low + (high - low) * float(torch.rand((), generator=generator))
    largest = min(H, W) // multiple * multiple
    side = min(max(multiple, round(fraction**0.5 * min(H, W) / multiple) * multiple), largest)
    tops = torch.randint(H - side + 1, (B,), generator=generator).tolist()
    lefts = torch.randint(W - side + 1, (B,), generator=generator).tolist()
    out = dict(images)
    for name, x in spatial.items():
        if x.shape[-2:] != (H, W):
            raise ValueError(f"random_crop needs the spatial sensors on one pixel grid; {name} is {tuple(x.shape[-2:])}, not {(H, W)}")
        boxes = enumerate(zip(tops, lefts, strict=True))
        out[name] = torch.stack([x[b, ..., top : top + side, left : left + side] for b, (top, left) in boxes])
    return out


def spectral_jitter(images: dict[str, torch.Tensor], generator: torch.Generator, strength: float,
                    sensors: set[str] | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """SimCLR's colour jitter for any number of bands: per sample and band, a gain drawn from
    U(1 - strength, 1 + strength) and an offset from U(-strength, strength), in standardized
    units (so 0.2 shifts a band by up to a fifth of its dataset std). One draw per sample and
    band, shared by its timesteps and pixels; sentinel values stay sentinel. Only `sensors`
    (default: all) are jittered: categorical layers must be left alone.
    """
    if strength <= 0:
        return images
    out = dict(images)
    for name, x in images.items():
        if sensors is not None and name not in sensors:
            continue
        B, C = x.shape[0], x.shape[2]
        shape = (B, 1, C) + (1,) * (x.ndim - 3)  # broadcast over time and pixels
        gain = 1 + strength * (2 * torch.rand(B, C, generator=generator) - 1)
        offset = strength * (2 * torch.rand(B, C, generator=generator) - 1)
        jittered = x * gain.reshape(shape).to(x) + offset.reshape(shape).to(x)
        out[name] = torch.where(x == SENTINEL, x, jittered)
    return out


def augmented_view(images: dict[str, torch.Tensor], generator: torch.Generator,
                   scale: tuple[float, float] = (0.25, 1.0), *, resize: bool = True,
                   multiple: int = 1) -> dict[str, torch.Tensor]:  # fmt: skip
    """One view for a two-view objective: a random crop, resized back to the tile's size
    (`resize`) or kept at the native resolution with a side that is a multiple of `multiple`,
    then a random D4 symmetry (square views only; others keep their orientation)."""
    view = random_resized_crop(images, generator, scale) if resize else random_crop(images, generator, scale, multiple)
    spatial = [v for v in view.values() if v.ndim == 5]
    if spatial and all(v.shape[-1] == v.shape[-2] for v in spatial):
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

    def apply(self, images: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Full-tile augmentations, applied before the token-budget crop."""
        if self.dihedral:
            images = dihedral(images, generator)
        if self.cutmix_probability > 0 and float(torch.rand((), generator=generator)) < self.cutmix_probability:
            images = cutmix(images, generator)
        return images

    def apply_after_crop(self, images: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        return sensor_dropout(images, generator, self.sensor_dropout)
