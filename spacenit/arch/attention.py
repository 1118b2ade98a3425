"""Grouped-query self-attention (spec section 2.3, "Attention"), through F.scaled_dot_product_attention.

`kv_heads` < `heads` shares each key/value head among heads / kv_heads query
heads (GQA); kv_heads == heads is standard multi-head attention. Optional
QK-norm (RMSNorm over each head's queries and keys) and RoPE on queries and keys.
`scale` replaces SDPA's 1/sqrt(head_dim) softmax scale (muP: ModelConfig.attention_scale).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spacenit.arch.norm import RMSNorm
from spacenit.arch.rope import apply_rope


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int | None = None, dropout: float = 0.0, qk_norm: bool = False,
                 scale: float | None = None) -> None:  # fmt: skip
        super().__init__()
        kv_heads = kv_heads or heads
        if dim % heads or heads % kv_heads:
            raise ValueError(f"dim {dim} must divide by heads {heads}, and heads by kv_heads {kv_heads}")
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        # Rows: the heads' queries, then keys, then values (nn.MultiheadAttention's in_proj order).
        self.qkv = nn.Linear(dim, (heads + 2 * kv_heads) * self.head_dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.dropout, self.scale = dropout, scale

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, L, D); rope: complex rotations (B, 1, L, head_dim/2); attn_mask (B, 1, 1 or L, L) bool, True = may attend."""
        B, L, D = x.shape
        qkv = self.qkv(x).view(B, L, self.heads + 2 * self.kv_heads, self.head_dim).transpose(1, 2)  # (B, H+2KV, L, hd)
        q, k, v = qkv.split((self.heads, self.kv_heads, self.kv_heads), dim=1)  # (B, H, L, hd), (B, KV, L, hd) x2
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        out = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.kv_heads != self.heads,
            scale=self.scale,
        )  # (B, H, L, hd)  # fmt: skip
        return self.proj(out.transpose(1, 2).reshape(B, L, D))  # (B, L, D)
