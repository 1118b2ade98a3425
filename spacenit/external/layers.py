"""Transformer pieces shared by the external ports (Galileo, Presto), named as their state dicts name them.

Both models are pre-norm ViT blocks (LayerNorm -> multi-head self-attention ->
residual, LayerNorm -> GELU MLP -> residual) with biased projections; they differ
only in whether queries, keys and values are one fused Linear (`qkv`, Presto)
or three (`q`, `k`, `v`, Galileo). Both drop masked (missing) tokens before
attention: `pack_present` moves each sample's present tokens to the front and
pads the batch to the longest; padded keys are excluded by the attention mask,
so every sample attends exactly over its own present tokens, as if run alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, *, fused_qkv: bool) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"embedding size {dim} must be divisible by the number of heads {heads}")
        self.heads, self.fused_qkv = heads, fused_qkv
        if fused_qkv:
            self.qkv = nn.Linear(dim, 3 * dim)  # rows: all heads' queries, then keys, then values
        else:
            self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L, D); key_mask (B, L) bool, True = a real token others may attend to (None: all are)."""
        B, L, D = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1) if self.fused_qkv else (self.q(x), self.k(x), self.v(x))
        q, k, v = (t.view(B, L, self.heads, D // self.heads).transpose(1, 2) for t in (q, k, v))  # (B, H, L, hd)
        mask = None if key_mask is None or bool(key_mask.all()) else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, L, hd)
        return self.proj(out.transpose(1, 2).reshape(B, L, D))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, *, fused_qkv: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, fused_qkv=fused_qkv)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), key_mask)
        return x + self.mlp(self.norm2(x))


def month_table(dim: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(12, dim) month encoding of both papers: sin(m / (12 / 2 pi)) in the first half of the dims, cos in the
    second, for month index m = 0 (January) .. 11. Computed in `dtype` (Galileo float32, Presto float64, as the
    authors do) so the tables equal the published ones bit for bit."""
    if dim % 2:
        raise ValueError(f"the month encoding needs an even size, got {dim}")
    angle = torch.arange(12, dtype=dtype) / (12 / (2 * math.pi))
    half = dim // 2
    return torch.cat([angle.sin()[:, None].expand(12, half), angle.cos()[:, None].expand(12, half)], dim=1).float()


def pack_present(tokens: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Present tokens first, in their order, cut to the longest sample.

    tokens (B, N, D), present (B, N) bool -> packed (B, L, D), key_mask (B, L) bool, order (B, N):
    the permutation that `unpack` inverts. L >= 1 even when a sample has nothing present.
    """
    order = torch.sort((~present).to(torch.uint8), dim=1, stable=True).indices  # present positions first
    length = max(int(present.sum(dim=1).max()), 1)
    packed = tokens.gather(1, order[:, :length, None].expand(-1, -1, tokens.shape[-1]))
    key_mask = present.gather(1, order[:, :length])
    return packed, key_mask, order


def unpack(packed: torch.Tensor, key_mask: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_present`: (B, L, D) back to (B, N, D) in the original order, zeros where absent."""
    B, N = order.shape
    full = packed.new_zeros(B, N, packed.shape[-1])
    kept = packed * key_mask[..., None]
    return full.scatter(1, order[:, : packed.shape[1], None].expand(-1, -1, packed.shape[-1]), kept)
