"""Linear probe: BatchNorm (no affine) + Linear on frozen pooled features (MAE's linear probing).

The parameter-free BatchNorm standardizes each feature with training-set
statistics, so one learning-rate grid fits features of any scale; the head is
trained with AdamW, warm-up + cosine, and a learning rate chosen on a
validation split (see `heads.py`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from spacenit.evaluation.heads import HeadConfig, fit_with_lr_sweep, predict_scores


class LinearHead(nn.Module):
    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False)
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x))  # (B, D) -> (B, C)


def linear_probe_scores(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    *,
    num_classes: int,
    seed: int = 0,
    config: HeadConfig | None = None,
) -> tuple[np.ndarray, dict]:
    """Scores (n_test, C) of a linear probe, and what was chosen ({"lr": ...})."""
    config = config or HeadConfig()
    inputs = torch.as_tensor(x_train, dtype=torch.float32)
    head, lr = fit_with_lr_sweep(lambda: LinearHead(inputs.shape[1], num_classes), inputs, y_train, config=config, seed=seed)
    scores = predict_scores(head, torch.as_tensor(x_test, dtype=torch.float32), multilabel=y_train.ndim == 2)
    return scores, {"lr": lr}
