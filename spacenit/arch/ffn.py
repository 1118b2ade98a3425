"""SwiGLU feed-forward (spec section 2.3, "FFN").

    SwiGLU(x) = Linear(H, D)(SiLU(Linear(D, H)(x)) * Linear(D, H)(x)),  H = 2/3 * mlp_ratio * D

With mlp_ratio 4 (every preset, spec section 5) H = 8D/3, so the three
matrices hold the same 8D^2 weights as a standard 4x GELU MLP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def swiglu_hidden_dim(dim: int, mlp_ratio: float) -> int:
    """8D/3 for a 4x budget, rounded up to a multiple of 8 for friendlier matmul shapes."""
    hidden = int(2 * mlp_ratio * dim / 3)
    return 8 * ((hidden + 7) // 8)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = swiglu_hidden_dim(dim, mlp_ratio)
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)  # the two input matrices, fused
        self.down = nn.Linear(hidden, dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # (..., H) each
        return self.dropout(self.down(F.silu(gate) * up))  # (..., D)
