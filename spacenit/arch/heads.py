"""Output heads (spec sections 2.4 and 8, "heads.py"): pixel reconstruction and projection.

PixelHead: a Linear per token group to the group's pixels at the base patch
size (the spec's `nn.Linear` + `nn.Fold`; patches do not overlap, so the fold
is a reshape), resized FlexiViT-style when the patch size differs.
ProjectionHead: the "Project" of "Mean Pool + Project" before a contrastive
loss: Linear -> GELU -> Linear, L2-normalized.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spacenit.arch.layout import TokenLayout


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

    def forward(self, x: torch.Tensor, layout: TokenLayout) -> dict[tuple[str, str], torch.Tensor]:
        """x (B, N, D) on an unmerged layout -> {(sensor, group): pixels (B, T, C, H, W), or (B, T, C) if not spatial}."""
        if layout.merged:
            raise ValueError("PixelHead needs per-bandset tokens; unmerge first")
        (h, w), p, p0 = layout.grid, layout.patch_size, self.base_patch_size
        out = {}
        for block, start, stop in layout.spans():
            per_group = x[:, start:stop].unflatten(1, (len(block.groups), -1))  # (B, G, T*h*w, D)
            for gi, group in enumerate(block.groups):
                C = self.group_channels[(block.sensor, group)]
                patches = self.proj[f"{block.sensor}__{group}"](per_group[:, gi])  # (B, T*h*w, C*p0*p0) / (B, T, C)
                B = patches.shape[0]
                if not block.spatial:
                    out[(block.sensor, group)] = patches  # (B, T, C)
                    continue
                patches = patches.reshape(-1, C, p0, p0)  # (B*T*h*w, C, p0, p0)
                if p != p0:
                    patches = F.interpolate(patches, size=(p, p), mode="bilinear", antialias=True, align_corners=False)
                T = block.num_timesteps
                pixels = patches.view(B, T, h, w, C, p, p).permute(0, 1, 4, 2, 5, 3, 6)  # (B, T, C, h, p, w, p)
                out[(block.sensor, group)] = pixels.reshape(B, T, C, h * p, w * p)  # (B, T, C, H, W)
        return out


class ProjectionHead(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, out_dim: int, normalize: bool = True) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden_dim), nn.Linear(hidden_dim, out_dim)
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., out_dim)."""
        z = self.fc2(F.gelu(self.fc1(x)))
        return F.normalize(z, dim=-1) if self.normalize else z
