"""Token budget and multi-scale patch sizes (spec section 3.2).

Every optimizer step draws one patch size from [min, max] and one crop size,
shared by every sample, micro-batch and rank of that step: ranks then do the
same amount of work, and the batch has uniform shapes. The crop is a
rectangle of whole patches whose token count (all sensors, groups and
timesteps; the full time extent is kept) stays within the token budget.
Each sample is then cropped at its own random offset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from spacenit.sensors import SENTINEL, SensorSpec


@dataclass(frozen=True)
class TokenGeometry:
    """How many tokens a sample makes, per spatial patch and in total."""

    #: Tokens per spatial patch position: sum over spatial sensors of T x groups.
    tokens_per_patch: int
    #: Tokens that do not depend on the crop: non-spatial sensors, T x groups.
    fixed_tokens: int
    tile_size_px: int

    @classmethod
    def of(cls, sensors: list[SensorSpec], num_timesteps: dict[str, int], tile_size_px: int) -> TokenGeometry:
        per_patch = sum(num_timesteps[s.name] * len(s.groups) for s in sensors if s.spatial)
        fixed = sum(num_timesteps[s.name] * len(s.groups) for s in sensors if not s.spatial)
        return cls(per_patch, fixed, tile_size_px)

    def tokens(self, crop_h: int, crop_w: int) -> int:
        """Tokens of one sample cropped to (crop_h, crop_w) patches."""
        return crop_h * crop_w * self.tokens_per_patch + self.fixed_tokens


def sample_patch_size(rng: np.random.Generator, min_patch_size: int, max_patch_size: int, tile_size_px: int) -> int:
    """Uniform over the sizes in [min, max] that fit the tile at least once."""
    sizes = [p for p in range(min_patch_size, max_patch_size + 1) if p <= tile_size_px]
    if not sizes:
        raise ValueError(f"no patch size in [{min_patch_size}, {max_patch_size}] fits a {tile_size_px} px tile")
    return int(rng.choice(sizes))


def sample_crop(rng: np.random.Generator, geometry: TokenGeometry, patch_size: int, token_budget: int) -> tuple[int, int]:
    """(height, width) in patches: the whole tile when it fits the budget, else a random
    rectangle that uses as much of the budget as the tile allows."""
    side = geometry.tile_size_px // patch_size
    if geometry.tokens_per_patch == 0:
        return side, side
    max_area = (token_budget - geometry.fixed_tokens) // geometry.tokens_per_patch
    if max_area < 1:
        raise ValueError(
            f"token budget {token_budget} is too small for one patch of every sensor "
            f"({geometry.tokens_per_patch} tokens per patch + {geometry.fixed_tokens} fixed); raise data.token_budget"
        )
    if max_area >= side * side:
        return side, side
    low = max(1, math.ceil(max_area / side))
    high = min(side, max_area)
    h = int(rng.integers(low, high + 1))
    return h, min(side, max_area // h)


def crop_sample(images: dict[str, torch.Tensor], top: int, left: int, height_px: int, width_px: int) -> dict[str, torch.Tensor]:
    """Crop spatial sensors (T, C, H, W) to the window; non-spatial (T, C) pass through.

    A tile smaller than the window is padded with the sentinel, so the padding is absent tokens.
    """
    out = {}
    for name, x in images.items():
        if x.ndim != 4:
            out[name] = x
            continue
        window = x[..., top : top + height_px, left : left + width_px]
        pad_h, pad_w = height_px - window.shape[-2], width_px - window.shape[-1]
        if pad_h or pad_w:
            window = torch.nn.functional.pad(window, (0, pad_w, 0, pad_h), value=SENTINEL)
        out[name] = window
    return out


def random_offsets(rng: np.random.Generator, tile_px: int, height_px: int, width_px: int) -> tuple[int, int]:
    return int(rng.integers(0, max(tile_px - height_px, 0) + 1)), int(rng.integers(0, max(tile_px - width_px, 0) + 1))
