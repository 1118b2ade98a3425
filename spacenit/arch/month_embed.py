"""Cyclic month embedding (spec section 2.2, "Positional encoding").

A learned projection of (sin(2 pi month / 12), cos(2 pi month / 12)), added
to every token of a timestep; December and January are neighbours. Month 0
(unknown) embeds to zero.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class CyclicMonthEmbed(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(2, dim)

    def forward(self, month: torch.Tensor) -> torch.Tensor:
        """month (...) long, 1-12 or 0 -> (..., D)."""
        angle = 2 * math.pi * month.float() / 12.0
        emb = self.proj(torch.stack((angle.sin(), angle.cos()), dim=-1))  # (..., D)
        return emb * (month > 0).unsqueeze(-1).to(emb.dtype)
