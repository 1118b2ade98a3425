"""Token budget and multi-scale patch sizes (spec section 3.2).

Every optimizer step draws one patch size from [min, max] and one crop size,
shared by every sample, micro-batch and rank of that step: ranks then do the
same amount of work, and the batch has uniform shapes. The crop is a
rectangle of whole patches whose token count stays within the token budget:
the tokens the tokenizer really emits, counted with the model's token groups
(its tokenization, not the sensors' spectral groups), over all sensors and
timesteps (the full time extent is kept), and in hybrid mode at the output
patch size, where the target encoder runs. The crop uses at least 90% of the
budget when the tile is large enough. Each sample is then cropped at its own
random offset, a whole number of pixels of every grid (`crop_sample`), so
that the crop of every grid covers the same ground.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch

from spacenit.data.images import window
from spacenit.sensors import Grid, SensorSpec, metres

#: The share of the token budget a crop uses at least, when the tile allows it.
MIN_BUDGET_USE = 0.9


@dataclass(frozen=True)
class TokenGeometry:
    """How many tokens a sample makes, per spatial patch and in total."""

    #: Tokens per spatial patch position: sum over spatial sensors of T x token groups.
    tokens_per_patch: int
    #: Tokens that do not depend on the crop: non-spatial sensors, T x token groups.
    fixed_tokens: int
    tile_size_px: int
    #: Hybrid mode's output patch size: the target encoder tokenizes the crop at it.
    fine_patch_size: int | None = None

    @classmethod
    def of(cls, sensors: list[SensorSpec], num_timesteps: dict[str, int], tile_size_px: int, tokenization,
           fine_patch_size: int | None = None) -> TokenGeometry:  # fmt: skip
        """From the model's `tokenization` (a TokenizationConfig): its groups are the tokens."""
        groups = {s.name: len(tokenization.groups_for(s)) for s in sensors}
        per_patch = sum(num_timesteps[s.name] * groups[s.name] for s in sensors if s.spatial)
        fixed = sum(num_timesteps[s.name] * groups[s.name] for s in sensors if not s.spatial)
        return cls(per_patch, fixed, tile_size_px, fine_patch_size)

    def tokens_per_crop_patch(self, patch_size: int) -> float:
        """Tokens one patch of the crop costs at `patch_size` (more in hybrid mode, at a finer size)."""
        fine = self.fine_patch_size
        return self.tokens_per_patch * ((patch_size / fine) ** 2 if fine and fine < patch_size else 1)

    def tokens(self, crop_h: int, crop_w: int, patch_size: int = 1) -> int:
        """Tokens of one sample cropped to (crop_h, crop_w) patches of `patch_size`."""
        return round(crop_h * crop_w * self.tokens_per_crop_patch(patch_size)) + self.fixed_tokens


def sample_patch_size(rng: np.random.Generator, min_patch_size: int, max_patch_size: int, tile_size_px: int) -> int:
    """Uniform over the sizes in [min, max] that fit the tile at least once."""
    sizes = [p for p in range(min_patch_size, max_patch_size + 1) if p <= tile_size_px]
    if not sizes:
        raise ValueError(f"no patch size in [{min_patch_size}, {max_patch_size}] fits a {tile_size_px} px tile")
    return int(rng.choice(sizes))


def sample_crop(rng: np.random.Generator, geometry: TokenGeometry, patch_size: int, token_budget: int) -> tuple[int, int]:
    """(height, width) in patches: the whole tile when it fits the budget, else a random rectangle
    within the budget that uses at least MIN_BUDGET_USE of it (the largest ones when whole patches
    of the tile cannot)."""
    side = geometry.tile_size_px // patch_size
    cost = geometry.tokens_per_crop_patch(patch_size)
    if cost == 0:
        return side, side
    max_area = int((token_budget - geometry.fixed_tokens) // cost)
    if max_area < 1:
        raise ValueError(
            f"token budget {token_budget} is too small for one patch of every sensor "
            f"({cost:g} tokens per patch + {geometry.fixed_tokens} fixed); raise data.token_budget"
        )
    if max_area >= side * side:
        return side, side
    shapes = [(h, min(side, max_area // h)) for h in range(1, side + 1) if max_area // h >= 1]
    full = [(h, w) for h, w in shapes if h * w * cost + geometry.fixed_tokens >= MIN_BUDGET_USE * token_budget]
    if not full:  # whole patches cannot reach MIN_BUDGET_USE of the budget here: the largest crops
        best = max(h * w for h, w in shapes)
        full = [(h, w) for h, w in shapes if h * w == best]
    return full[int(rng.integers(len(full)))]


def grid_factors(grids: dict[str, tuple[Grid, ...]], reference_gsd_m: float) -> dict[tuple[str, str], Fraction]:
    """(sensor, grid) -> the grid's pixel size in reference pixels (2 for a 20 m grid of a 10 m reference)."""
    return {(s, g.name): metres(g.gsd_m) / metres(reference_gsd_m) for s, gs in grids.items() for g in gs}


def alignment_px(factors) -> int:
    """The crop offsets, in reference pixels, that are whole pixels on every grid: multiples of this."""
    return math.lcm(1, *(f.numerator for f in factors))


def crop_sample(images: dict[str, dict[Grid, torch.Tensor]], factors: dict[tuple[str, str], Fraction],
                top: int, left: int, height_px: int, width_px: int) -> dict[str, dict[Grid, torch.Tensor]]:  # fmt: skip
    """Crop every spatial grid (T, C, H_g, W_g) to the window (reference pixels); (T, C) pass through.

    A grid of pixels f reference pixels wide is cut from top / f (a whole pixel: offsets are
    multiples of `alignment_px`) over ceil(height / f) pixels, so it covers at least the
    window's ground; a tile smaller than the window is padded with the sentinel, so the
    padding is absent tokens.
    """
    out = {}
    for sensor, grids in images.items():
        out[sensor] = {}
        for grid, x in grids.items():
            if x.ndim != 4:
                out[sensor][grid] = x
                continue
            f = factors[(sensor, grid.name)]
            t, lft = Fraction(top) / f, Fraction(left) / f
            if t.denominator != 1 or lft.denominator != 1:
                raise ValueError(f"crop offset ({top}, {left}) is not a whole pixel of {sensor} grid {grid.name}")
            out[sensor][grid] = window(x, int(t), int(lft), math.ceil(height_px / f), math.ceil(width_px / f))
    return out


def random_offsets(rng: np.random.Generator, tile_px: int, height_px: int, width_px: int, align: int = 1) -> tuple[int, int]:
    """A random top-left corner of the window inside the tile, a multiple of `align` pixels."""
    rows, cols = max(tile_px - height_px, 0) // align, max(tile_px - width_px, 0) // align
    return int(rng.integers(0, rows + 1)) * align, int(rng.integers(0, cols + 1)) * align
