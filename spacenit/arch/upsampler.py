"""Patch upsampler for hybrid patch sizes (seed: hybrid-patch-size-plan.md, Approach 1).

The encoder runs at a coarse patch size (8: 64x fewer tokens than 1) and its
output tokens are upsampled to a fine output patch size (1) after attention.
Each sensor block's (group, timestep) token grid is interpolated as an image
of D channels:

- `bilinear`: F.interpolate, no parameters (the plan's recommended start);
- `learned`: bilinear, plus a learned refinement: a per-sub-position
  embedding (where inside its coarse patch a fine token lies) is added to the
  bilinear token, and a Linear(D, D) of that sum is added back as a residual
  (initialized small, so training starts from bilinear).

Masks are upsampled nearest (`upsample_mask`): a fine token is visible or to
be predicted when its coarse token was.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spacenit.arch.layout import TokenLayout

UPSAMPLERS = ("bilinear", "learned")


def _per_grid(x: torch.Tensor, layout: TokenLayout, to_patch_size: int, resize) -> tuple[torch.Tensor, TokenLayout]:
    """Apply `resize` ((K, C, h, w) -> (K, C, h', w')) to every (group, timestep) grid of x (B, N, C).

    Tokens of non-spatial sensors pass through unchanged.
    """
    out_layout = layout.at_patch_size(to_patch_size)
    (h, w), (h2, w2) = layout.grid, out_layout.grid
    parts = []
    for block, start, stop in layout.spans():
        if not block.spatial:
            parts.append(x[:, start:stop])
            continue
        grids = x[:, start:stop].unflatten(1, (-1, h, w))  # (B, G*T, h, w, C)
        B, K = grids.shape[:2]
        up = resize(grids.flatten(0, 1).permute(0, 3, 1, 2))  # (B*G*T, C, h2, w2)
        parts.append(up.permute(0, 2, 3, 1).reshape(B, K * h2 * w2, -1))  # (B, G*T*h2*w2, C)
    return torch.cat(parts, dim=1), out_layout


def upsample_mask(mask: torch.Tensor, layout: TokenLayout, to_patch_size: int) -> torch.Tensor:
    """(B, N) bool on `layout` -> (B, N') on `layout.at_patch_size(to_patch_size)`, nearest."""
    size = layout.at_patch_size(to_patch_size).grid
    up, _ = _per_grid(mask.unsqueeze(-1).float(), layout, to_patch_size, lambda g: F.interpolate(g, size=size, mode="nearest"))
    return up.squeeze(-1) > 0.5


class PatchUpsampler(nn.Module):
    def __init__(self, dim: int, mode: str = "bilinear", max_factor: int = 8) -> None:
        super().__init__()
        if mode not in UPSAMPLERS:
            raise ValueError(f"upsampler must be one of {UPSAMPLERS}, got {mode!r}")
        self.mode = mode
        if mode == "learned":
            self.subpixel_embed = nn.Parameter(torch.zeros(dim, max_factor, max_factor))  # (D, r, r) at the largest factor
            self.refine = nn.Linear(dim, dim)
            nn.init.trunc_normal_(self.subpixel_embed, std=0.02)
            nn.init.trunc_normal_(self.refine.weight, std=0.02)
            nn.init.zeros_(self.refine.bias)

    def forward(self, x: torch.Tensor, layout: TokenLayout, to_patch_size: int) -> tuple[torch.Tensor, TokenLayout]:
        """x (B, N, D) on `layout` -> (B, N', D) on the layout at `to_patch_size` (a divisor of its patch size)."""
        if layout.patch_size % to_patch_size:
            raise ValueError(f"can only upsample to a divisor of the patch size {layout.patch_size}, got {to_patch_size}")
        factor = layout.patch_size // to_patch_size
        size = (layout.grid[0] * factor, layout.grid[1] * factor)
        up, out_layout = _per_grid(x, layout, to_patch_size,
                                   lambda g: F.interpolate(g, size=size, mode="bilinear", align_corners=False))  # fmt: skip
        if self.mode == "learned":
            sub = F.interpolate(self.subpixel_embed[None], size=(factor, factor), mode="bilinear", align_corners=False)[0]
            sub = sub.repeat(1, layout.grid[0], layout.grid[1]).flatten(1).T  # (h2*w2, D): each fine token's sub-position
            parts = []
            for block, start, stop in out_layout.spans():
                grids = up[:, start:stop]
                if block.spatial:
                    grids = grids.unflatten(1, (-1, size[0] * size[1]))  # (B, G*T, h2*w2, D)
                    grids = (grids + self.refine(grids + sub)).flatten(1, 2)  # (B, G*T*h2*w2, D)
                parts.append(grids)
            up = torch.cat(parts, dim=1)  # (B, N', D)
        return up, out_layout
