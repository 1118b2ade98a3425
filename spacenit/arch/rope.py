"""Spatial and temporal rotary position embeddings (spec section 2.2, "Positional encoding").

RoPE rotates each channel pair of the queries and keys by an angle
position * frequency, so the attention score between two tokens depends only
on the *difference* of their positions. Three axes share a head's channel
pairs: a quarter go to the timestep index (temporal RoPE), the rest are split
between the row and column axes (2D spatial RoPE).

Spatial positions are measured in reference-GSD pixels: a token at patch
(r, c) of a grid whose pixels are `gsd_m` metres sits at
((r + 0.5) * patch_size * gsd_m / reference_gsd_m, ...), see `layout.py`. That
is the spec's "frequencies scaled by gsd / reference_gsd": the rotation
depends on where the token is on the ground, so the same ground distance
gives the same relative rotation whatever the pixel size or patch size.
"""

from __future__ import annotations

import torch
from torch import nn


def rope_frequencies(num_pairs: int, base: float) -> torch.Tensor:
    """Geometric frequencies 1, base^(-1/n), ..., base^(-(n-1)/n) (radians per unit of position)."""
    return base ** (-torch.arange(num_pairs, dtype=torch.float32) / num_pairs)


class SpatioTemporalRoPE(nn.Module):
    """Positions (..., 3) = (row, column, timestep) -> rotations exp(i * angle), complex (..., head_dim / 2)."""

    def __init__(self, head_dim: int, spatial_base: float = 1000.0, temporal_base: float = 100.0) -> None:
        super().__init__()
        pairs = head_dim // 2
        if head_dim % 2 or pairs < 3:
            raise ValueError(f"RoPE needs an even head dimension of at least 6 (rows, columns, time); got {head_dim}")
        time_pairs = max(pairs // 4, 1)
        col_pairs = (pairs - time_pairs) // 2
        row_pairs = pairs - time_pairs - col_pairs
        freqs = [rope_frequencies(row_pairs, spatial_base), rope_frequencies(col_pairs, spatial_base),
                 rope_frequencies(time_pairs, temporal_base)]  # fmt: skip
        axis = [torch.full((n,), i) for i, n in enumerate((row_pairs, col_pairs, time_pairs))]
        self.register_buffer("freqs", torch.cat(freqs), persistent=False)  # (pairs,)
        self.register_buffer("axis_of_pair", torch.cat(axis), persistent=False)  # (pairs,) in {0, 1, 2}

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        angles = positions[..., self.axis_of_pair].float() * self.freqs  # (..., pairs)
        return torch.polar(torch.ones_like(angles), angles)  # (..., pairs) complex64


def apply_rope(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate the channel pairs (2i, 2i+1) of x (B, heads, L, head_dim) by `rotation` (B, 1, L, head_dim/2) complex.

    One complex multiply (one kernel forward and backward) instead of the
    real-arithmetic cos/sin form; in float32, so bf16 inputs (autocast) are upcast and cast back.
    """
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # (B, heads, L, head_dim/2) complex
    return torch.view_as_real(pairs * rotation).flatten(-2).to(x.dtype)  # (B, heads, L, head_dim)
