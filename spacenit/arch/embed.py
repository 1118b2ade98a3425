"""Token embeddings (spec section 2.2): per-group patch embedding, RoPE, month embedding."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PatchEmbed(nn.Module):
    """Patchify one spectral group: (B, C, H, W) -> (B, D, H/p, W/p).

    The kernel is stored at `base_patch_size` and resized at run time when
    another patch size is asked for (FlexiViT-style), so one set of weights
    serves every patch size.
    """

    def __init__(self, in_channels: int, dim: int, base_patch_size: int) -> None:
        super().__init__()
        self.base_patch_size = base_patch_size
        self.weight = nn.Parameter(torch.empty(dim, in_channels, base_patch_size, base_patch_size))
        self.bias = nn.Parameter(torch.zeros(dim))
        nn.init.trunc_normal_(self.weight, std=(in_channels * base_patch_size**2) ** -0.5)

    def kernel(self, patch_size: int) -> torch.Tensor:
        if patch_size == self.base_patch_size:
            return self.weight
        # Keep the response to a constant input unchanged: scale by the area ratio.
        resized = F.interpolate(self.weight, size=(patch_size, patch_size), mode="bilinear", align_corners=False)
        return resized * (self.base_patch_size / patch_size) ** 2

    def forward(self, x: torch.Tensor, patch_size: int) -> torch.Tensor:
        return F.conv2d(x, self.kernel(patch_size), self.bias, stride=patch_size)


class MonthEmbedding(nn.Module):
    """Learned projection of (sin, cos) of the month; month 0 (unknown) embeds to zero."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(2, dim)

    def forward(self, month: torch.Tensor) -> torch.Tensor:
        angle = 2 * math.pi * month.float() / 12.0
        emb = self.proj(torch.stack((angle.sin(), angle.cos()), dim=-1))
        return emb * (month > 0).unsqueeze(-1).to(emb.dtype)


class AxialRoPE(nn.Module):
    """Rotary frequencies over several position axes (here: row, column, time).

    The head dimension's channel pairs are split between the axes. Spatial
    positions are given in reference-GSD pixels (patch index * patch size *
    gsd / reference gsd), so a 10 m and a 30 m token over the same ground get
    the same rotation.
    """

    def __init__(self, head_dim: int, num_axes: int = 3, base: float = 1000.0) -> None:
        super().__init__()
        pairs = head_dim // 2
        per_axis = [pairs // num_axes + (1 if i < pairs % num_axes else 0) for i in range(num_axes)]
        freqs = [base ** (-torch.arange(n, dtype=torch.float32) / max(n, 1)) for n in per_axis]
        self.register_buffer("freqs", torch.cat(freqs), persistent=False)
        self.register_buffer(
            "axis_of_pair", torch.cat([torch.full((n,), i) for i, n in enumerate(per_axis)]), persistent=False
        )

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (B, L, num_axes) -> cos, sin each (B, 1, L, head_dim/2)."""
        angles = positions[..., self.axis_of_pair].float() * self.freqs  # (B, L, pairs)
        return angles.cos().unsqueeze(1), angles.sin().unsqueeze(1)
