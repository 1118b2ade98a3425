"""The transformer block and stack (spec section 2.3).

    x = x + Attention(RMSNorm(x), rope)
    x = x + SwiGLU(RMSNorm(x))

The spec's table calls this "post-norm", but its formula (the one implemented)
normalizes each branch's input: pre-norm, as in LLaMA. The final RMSNorm is
applied by the encoder and the predictor after their last block.
"""

from __future__ import annotations

import torch
from torch import nn

from spacenit.arch.attention import Attention
from spacenit.arch.ffn import SwiGLU
from spacenit.arch.norm import RMSNorm


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int | None = None, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, qk_norm: bool = False, attn_scale: float | None = None) -> None:  # fmt: skip
        super().__init__()
        self.attn_norm = RMSNorm(dim)
        self.attn = Attention(dim, heads, kv_heads, dropout, qk_norm, attn_scale)
        self.ffn_norm = RMSNorm(dim)
        self.ffn = SwiGLU(dim, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None, attn_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), rope, attn_mask)
        return x + self.ffn(self.ffn_norm(x))


class TransformerStack(nn.Module):
    """`depth` blocks; `forward` runs blocks[start:stop] so a caller can act between layers (mid-layer merge).

    Matrices start at std 0.02 whatever the width (muP rescales them: spacenit.train.mup);
    `attn_scale` is the attention softmax scale (None: 1/sqrt(head_dim)).
    """

    def __init__(self, dim: int, depth: int, heads: int, kv_heads: int | None = None, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, qk_norm: bool = False, attn_scale: float | None = None) -> None:  # fmt: skip
        super().__init__()
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, kv_heads, mlp_ratio, dropout, qk_norm, attn_scale)
                                    for _ in range(depth))  # fmt: skip
        for name, p in self.named_parameters():
            if p.ndim == 2:
                nn.init.trunc_normal_(p, std=0.02)
            if name.endswith(("attn.proj.weight", "ffn.down.weight")):
                p.data /= (2 * depth) ** 0.5  # residual branches: keep the stream's variance flat with depth

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None, attn_mask: torch.Tensor | None,
                start: int = 0, stop: int | None = None) -> torch.Tensor:  # fmt: skip
        for block in self.blocks[start:stop]:
            x = block(x, rope, attn_mask)
        return x
