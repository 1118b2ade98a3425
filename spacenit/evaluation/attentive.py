"""Attentive probe: a learnable query cross-attends over the frozen patch tokens (V-JEPA's pooling).

Mean pooling dilutes what occupies a small part of a tile (a road, a river);
a learned query lets the probe weight the patches itself. V-JEPA 2 reports
that the gain comes from the attentive pooling, not from probe depth, so this
is the single-block version: LayerNorm -> cross-attention (one learnable
query, 4 heads) -> LayerNorm -> Linear. Tokens that carry no data arrive as
NaN rows and are masked out of the attention.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spacenit.evaluation.heads import HeadConfig, fit_with_lr_sweep, predict_scores


def prepare_tokens(tokens: np.ndarray) -> torch.Tensor:
    """(N, L, D) tokens, NaN rows where missing -> (N, L, D + 1): layer-normalized tokens (0 where
    missing) and a last channel flagging the missing ones.

    The input LayerNorm runs once here instead of at every step: its affine
    part would be redundant anyway (the scale folds into the queries and the
    value projection, the shift cancels in the softmax and joins the bias).
    """
    t = torch.as_tensor(tokens, dtype=torch.float32)
    missing = t.isnan().any(dim=-1, keepdim=True)  # (N, L, 1)
    x = F.layer_norm(t.nan_to_num(0.0), t.shape[-1:]).masked_fill(missing, 0.0)
    return torch.cat([x, missing.float()], dim=-1)


class AttentiveHead(nn.Module):
    """Multi-head cross-attention with one learnable query, computed in the token space.

    With a single query, q W_q^T W_k x folds into one vector per head dotted
    with the tokens, and the value projection commutes with the attention
    average, so it is applied once to the pooled vector. Same function class
    as nn.MultiheadAttention with one query, without projecting every
    token's key and value: O(L D) per head instead of O(L D^2).
    Input: `prepare_tokens` output (B, L, D + 1).
    """

    def __init__(self, dim: int, num_classes: int, heads: int = 4) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(dim, heads))  # one key-space query per head
        nn.init.trunc_normal_(self.query, std=0.02)
        self.value = nn.Linear(heads * dim, dim)  # per-head value projections, concatenated
        self.norm_out = nn.LayerNorm(dim)
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        x, missing = packed[..., :-1], packed[..., -1] > 0.5  # (B, L, D), (B, L)
        B, L, D = x.shape
        # A sample without any valid token attends to all (zero) tokens rather than to nothing (NaN).
        missing = missing & ~missing.all(dim=1, keepdim=True)
        logits = (x.reshape(B * L, D) @ self.query).reshape(B, L, -1).transpose(1, 2) / D**0.5  # (B, H, L)
        attention = logits.masked_fill(missing[:, None, :], float("-inf")).softmax(dim=-1)
        pooled = (attention @ x).flatten(1)  # (B, H, L) @ (B, L, D) -> (B, H*D)
        return self.linear(self.norm_out(self.value(pooled)))  # (B, C)


def attentive_probe_scores(
    tokens_train: np.ndarray,
    y_train: np.ndarray,
    tokens_test: np.ndarray,
    *,
    num_classes: int,
    seed: int = 0,
    config: HeadConfig | None = None,
) -> tuple[np.ndarray, dict]:
    """Scores (n_test, C) from patch tokens (N, L, D), NaN rows where missing; and the chosen learning rate."""
    config = config or HeadConfig(epochs=50, batch_size=64, lrs=(1e-3, 3e-3, 1e-2, 3e-2))
    inputs = prepare_tokens(tokens_train)
    dim = inputs.shape[-1] - 1
    head, lr = fit_with_lr_sweep(lambda: AttentiveHead(dim, num_classes), inputs, y_train, config=config, seed=seed)
    scores = predict_scores(head, prepare_tokens(tokens_test), multilabel=y_train.ndim == 2)
    return scores, {"lr": lr}
