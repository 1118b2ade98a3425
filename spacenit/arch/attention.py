"""Transformer building blocks (spec section 2.3): RMSNorm, SwiGLU, GQA with RoPE.

    x = x + Attention(RMSNorm(x), rope)
    x = x + SwiGLU(RMSNorm(x))

Sequences arrive packed: absent and masked tokens are already removed, and
the remaining ones are right-padded to the longest sample of the batch;
`pad_mask` (B, L) marks real tokens so padding is never attended to.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class SwiGLU(nn.Module):
    """Linear(D, H) * SiLU(Linear(D, H)) -> Linear(H, D), with H = 8D/3 for a 4x FFN budget."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = int(2 * mlp_ratio * dim / 3)
        hidden = 8 * ((hidden + 7) // 8)  # round up for friendlier matmul shapes
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.dropout(self.down(F.silu(gate) * up))


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of x (B, heads, L, head_dim) by angles given as cos/sin (B, 1, L, head_dim/2)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.flatten(-2)


class Attention(nn.Module):
    """Grouped-query attention through F.scaled_dot_product_attention.

    `kv_heads` < `heads` shares each key/value head among heads/kv_heads query
    heads; kv_heads == heads is standard multi-head attention.
    """

    def __init__(self, dim: int, heads: int, kv_heads: int | None = None, dropout: float = 0.0, qk_norm: bool = False) -> None:
        super().__init__()
        kv_heads = kv_heads or heads
        if dim % heads or heads % kv_heads:
            raise ValueError(f"dim {dim} must divide by heads {heads}, and heads by kv_heads {kv_heads}")
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * kv_heads * self.head_dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.dropout = dropout

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, attn_mask: torch.Tensor | None) -> torch.Tensor:
        B, L, D = x.shape
        q = self.q(x).view(B, L, self.heads, self.head_dim).transpose(1, 2)  # (B, H, L, hd)
        k, v = self.kv(x).view(B, L, 2, self.kv_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, KV, L, hd)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.kv_heads != self.heads,
        )  # fmt: skip
        return self.proj(out.transpose(1, 2).reshape(B, L, D))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int | None = None, mlp_ratio: float = 4.0, dropout: float = 0.0, qk_norm: bool = False) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(dim)
        self.attn = Attention(dim, heads, kv_heads, dropout, qk_norm)
        self.ffn_norm = RMSNorm(dim)
        self.ffn = SwiGLU(dim, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor, rope, attn_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), rope, attn_mask)
        return x + self.ffn(self.ffn_norm(x))


class TransformerStack(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, kv_heads: int | None = None, mlp_ratio: float = 4.0, dropout: float = 0.0, qk_norm: bool = False) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, heads, kv_heads, mlp_ratio, dropout, qk_norm) for _ in range(depth)
        )
        self.norm = RMSNorm(dim)

    def forward(self, x: torch.Tensor, rope=None, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        attn_mask = None
        if pad_mask is not None and not bool(pad_mask.all()):
            # (B, L) -> (B, 1, L, L): real keys only; every query may also see itself, so a
            # padding row is never fully masked (which would make SDPA return NaN).
            eye = torch.eye(pad_mask.shape[1], dtype=torch.bool, device=pad_mask.device)
            attn_mask = (pad_mask[:, None, None, :] | eye)
        for block in self.blocks:
            x = block(x, rope, attn_mask)
        return self.norm(x)
