"""Pooling encoded tokens into one vector per sample (spec section 2.4, "Mean Pool").

`mean_pool`: the mean over the tokens a sample really has (never padding,
absent or hidden ones). `AttentionPool`: a learned query attends over the
same tokens (multi-head), an option for probes and fine-tuning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mean_pool(encoded: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(B, N, D), (B, N) -> (B, D)."""
    weights = keep.unsqueeze(-1).to(encoded.dtype)
    return (encoded * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class AttentionPool(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must divide by heads {heads}")
        self.heads = heads
        self.query = nn.Parameter(torch.randn(dim) * 0.02)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, encoded: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """(B, N, D), (B, N) -> (B, D); a sample with no kept token pools to the projection of zero."""
        B, N, D = encoded.shape
        k, v = self.kv(encoded).view(B, N, 2, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, N, hd) x2
        q = self.query.view(1, self.heads, 1, D // self.heads).expand(B, -1, -1, -1)  # (B, H, 1, hd)
        has_tokens = keep.any(dim=1, keepdim=True)  # (B, 1)
        first = torch.arange(N, device=keep.device) == 0
        mask = (keep | (~has_tokens & first))[:, None, None, :]  # (B, 1, 1, N); never an all-masked row (NaN)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, 1, hd)
        out = out * has_tokens[:, :, None, None].to(out.dtype)
        return self.proj(out.reshape(B, D))
