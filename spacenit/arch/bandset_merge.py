"""Bandset merge and unmerge (seed: bandset-merge-experiments.md, "Architecture: Bandset Merge/Unmerge").

A sensor tokenized into n bandsets gives n tokens per (timestep, patch).
BandsetMerge folds them into one, before the transformer (experiment 9) or
after layer k (experiment 10), so the rest of the encoder runs on a sequence
n times shorter for that sensor, while every bandset keeps its own
resolution-aware patch embedding. For each position:

1. tokens of bandsets the encoder may not see are zeroed (no leakage of
   tokens to predict under per-bandset masking);
2. scale = n / number of visible bandsets;
3. merged = Linear(n * D, D)(concat(tokens)) * scale.

The Linear starts as [I/n | ... | I/n] with zero bias, so at initialization
the merge is the mean of the visible bandsets; a merged token is visible when
any of its bandsets was. BandsetUnmerge (in the predictor) expands a merged
token back to n tokens with Linear(D, n * D), initialized to copy it to each.
"""

from __future__ import annotations

import torch
from torch import nn

from spacenit.arch.layout import TokenLayout


class BandsetMerge(nn.Module):
    def __init__(self, dim: int, num_bandsets: int) -> None:
        super().__init__()
        self.num_bandsets = num_bandsets
        self.proj = nn.Linear(num_bandsets * dim, dim)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(dim).repeat(1, num_bandsets) / num_bandsets)  # [I/n | ... | I/n]
            self.proj.bias.zero_()

    def forward(self, tokens: torch.Tensor, visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, M, n, D), visible (B, M, n) -> merged (B, M, D), merged visible (B, M)."""
        tokens = tokens * visible.unsqueeze(-1).to(tokens.dtype)  # 1. zero what the encoder may not see
        scale = self.num_bandsets / visible.sum(dim=-1, keepdim=True).clamp(min=1).to(tokens.dtype)  # 2. (B, M, 1)
        return self.proj(tokens.flatten(-2)) * scale, visible.any(dim=-1)  # 3. (B, M, D)


class BandsetUnmerge(nn.Module):
    def __init__(self, dim: int, num_bandsets: int) -> None:
        super().__init__()
        self.num_bandsets = num_bandsets
        self.proj = nn.Linear(dim, num_bandsets * dim)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(dim).repeat(num_bandsets, 1))  # each bandset starts as a copy
            self.proj.bias.zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, M, D) -> (B, M, n, D)."""
        return self.proj(tokens).unflatten(-1, (self.num_bandsets, -1))


def merge_sequence(merges: nn.ModuleDict, x: torch.Tensor, visible: torch.Tensor,
                   layout: TokenLayout) -> tuple[torch.Tensor, torch.Tensor, TokenLayout]:  # fmt: skip
    """Merge the bandsets of every multi-bandset sensor of a flat sequence.

    x (B, N, D), visible (B, N) -> (B, N', D), (B, N'), merged layout.
    """
    if layout.merged:
        raise ValueError("the sequence is already merged")
    xs, vis = [], []
    for block, start, stop in layout.spans():
        n = len(block.groups)
        if n == 1:
            xs.append(x[:, start:stop])
            vis.append(visible[:, start:stop])
            continue
        tokens = x[:, start:stop].unflatten(1, (n, -1)).transpose(1, 2)  # (B, M, n, D), M = T*h*w
        merged, merged_visible = merges[block.sensor](tokens, visible[:, start:stop].unflatten(1, (n, -1)).transpose(1, 2))
        xs.append(merged)  # (B, M, D)
        vis.append(merged_visible)  # (B, M)
    return torch.cat(xs, dim=1), torch.cat(vis, dim=1), layout.merge()


def unmerge_sequence(unmerges: nn.ModuleDict, x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Inverse shape of `merge_sequence`: x (B, N', D) on the merged `layout.merge()` -> (B, N, D) on `layout`."""
    merged = layout.merge()
    if x.shape[1] != merged.num_tokens:
        raise ValueError(f"expected {merged.num_tokens} merged tokens, got {x.shape[1]}")
    xs = []
    for block, (_, m_start, m_stop) in zip(layout.blocks, merged.spans(), strict=True):
        if len(block.groups) == 1:
            xs.append(x[:, m_start:m_stop])
            continue
        expanded = unmerges[block.sensor](x[:, m_start:m_stop])  # (B, M, n, D)
        xs.append(expanded.transpose(1, 2).flatten(1, 2))  # (B, n*M, D)
    return torch.cat(xs, dim=1)
