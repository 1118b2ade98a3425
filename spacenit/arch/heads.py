"""Output heads (spec sections 2.4 and 8, "heads.py"): pixel reconstruction and projection.

PixelHead: a Linear per token group to the group's pixels at the base patch
size (the spec's `nn.Linear` + `nn.Fold`; patches do not overlap, so the fold
is a reshape), resized to each grid's pixels per patch: a token of a group
whose bands lie on 10 m and 20 m grids predicts its 10 m bands at 8 x 8 and
its 20 m bands at 4 x 4 pixels per 80 m patch, the native pixels the
tokenizer embedded (`Tokens.pixels`).
ProjectionHead: the "Project" of "Mean Pool + Project" before a contrastive
loss: Linear -> GELU -> Linear, L2-normalized.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spacenit.arch.layout import TokenLayout
from spacenit.arch.tokenizer import GroupPixels


class PixelHead(nn.Module):
    def __init__(self, dim: int, group_channels: dict[tuple[str, str], int], base_patch_size: int,
                 nonspatial_sensors: frozenset[str] = frozenset()) -> None:  # fmt: skip
        """group_channels: {(sensor, group): number of bands}, as in the tokenizer's `groups`."""
        super().__init__()
        self.base_patch_size = base_patch_size
        self.group_channels = dict(group_channels)
        p0 = base_patch_size
        self.proj = nn.ModuleDict({
            f"{s}__{g}": nn.Linear(dim, c if s in nonspatial_sensors else c * p0 * p0) for (s, g), c in self.group_channels.items()
        })  # fmt: skip

    def forward(self, x: torch.Tensor, layout: TokenLayout, pixels: list[GroupPixels]) -> dict[tuple[str, str], torch.Tensor]:
        """x (B, N, D) on an unmerged layout -> {(sensor, group): (B, T*h*w, P)}: each token's predicted
        pixels, the group's grids one after the other as in `patch_targets` (P = sum over its grids of
        C_g * k * k; C for a non-spatial sensor)."""
        if layout.merged:
            raise ValueError("PixelHead needs per-bandset tokens; unmerge first")
        p0 = self.base_patch_size
        parts = _parts_by_group(pixels)
        out = {}
        for block, start, stop in layout.spans():
            per_group = x[:, start:stop].unflatten(1, (len(block.groups), -1))  # (B, G, T*h*w, D)
            for gi, group in enumerate(block.groups):
                C = self.group_channels[(block.sensor, group)]
                patches = self.proj[f"{block.sensor}__{group}"](per_group[:, gi])  # (B, L, C*p0*p0) / (B, T, C)
                if not block.spatial:
                    out[(block.sensor, group)] = patches  # (B, T, C)
                    continue
                B, L = patches.shape[:2]
                patches = patches.reshape(B * L, C, p0, p0)
                predicted = []
                for part in parts[(block.sensor, group)]:
                    k = part.pixels_per_patch
                    grid_patches = patches.index_select(1, part.channels)  # (B*L, C_g, p0, p0)
                    if k != p0:
                        grid_patches = F.interpolate(grid_patches, size=(k, k), mode="bilinear", antialias=True, align_corners=False)
                    predicted.append(grid_patches.reshape(B, L, -1))  # (B, L, C_g*k*k)
                out[(block.sensor, group)] = torch.cat(predicted, dim=-1)
        return out


def patch_targets(pixels: list[GroupPixels]) -> dict[tuple[str, str], torch.Tensor]:
    """The tokenized pixels per token, laid out as `PixelHead` predicts them: {(sensor, group): (B, T*h*w, P)}."""
    out = {}
    for key, parts in _parts_by_group(pixels).items():
        out[key] = torch.cat([_patchify_grid(part) for part in parts], dim=-1)
    return out


def _parts_by_group(pixels: list[GroupPixels]) -> dict[tuple[str, str], list[GroupPixels]]:
    out: dict[tuple[str, str], list[GroupPixels]] = {}
    for part in pixels:
        out.setdefault((part.sensor, part.group), []).append(part)
    return out


def _patchify_grid(part: GroupPixels) -> torch.Tensor:
    """(B, T, C, h*k, w*k) -> (B, T*h*w, C*k*k) in the tokenizer's (t, row, col) order; (B, T, C) as is."""
    x = part.values
    if x.ndim == 3:
        return x
    B, T, C, H, W = x.shape
    k = part.pixels_per_patch
    x = x.reshape(B, T, C, H // k, k, W // k, k).permute(0, 1, 3, 5, 2, 4, 6)  # (B, T, h, w, C, k, k)
    return x.reshape(B, T * (H // k) * (W // k), C * k * k)


class ProjectionHead(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, out_dim: int, normalize: bool = True) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden_dim), nn.Linear(hidden_dim, out_dim)
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., out_dim)."""
        z = self.fc2(F.gelu(self.fc1(x)))
        return F.normalize(z, dim=-1) if self.normalize else z
