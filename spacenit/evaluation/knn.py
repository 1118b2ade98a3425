"""Weighted kNN on frozen features, as in OlmoEarth (and DINO before it).

Cosine similarity on L2-normalized features; each of the k nearest training
samples votes for its label(s) with weight exp(sim / temperature). Scores are
the votes divided by their sum, so for one label per sample they are class
probabilities (prediction = argmax), and for multi-label truth they are the
weighted fraction of neighbours carrying each label (predicted when >= 0.5).

Exact search by one matrix product per block of queries (torch, float32):
its cost is 2 * n_test * n_train * dim flops, so the speed is the BLAS's.
"""

from __future__ import annotations

import numpy as np
import torch

#: Queries per block: bounds the (block, n_train) similarity matrix held at once.
QUERY_BLOCK = 4096


def _normalized(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float32)
    return t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)


def knn_scores(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
) -> np.ndarray:
    """Vote shares (n_test, C) of the k nearest training samples.

    y_train is (n_train,) integer classes or (n_train, C) 0/1 labels.
    """
    if len(x_train) == 0:
        raise ValueError("kNN needs at least one training sample")
    y = torch.as_tensor(np.asarray(y_train))
    if y.ndim == 1:
        num_classes = num_classes or int(y.max()) + 1
        targets = torch.nn.functional.one_hot(y.long(), num_classes).float()  # (n_train, C)
    else:
        targets = y.float()
    bank = _normalized(x_train)  # (n_train, D)
    queries = _normalized(x_test)  # (n_test, D)
    k = min(k, len(bank))
    out = torch.empty(len(queries), targets.shape[1])
    with torch.no_grad():
        for start in range(0, len(queries), QUERY_BLOCK):
            sim = queries[start : start + QUERY_BLOCK] @ bank.T  # (b, n_train)
            top_sim, top_idx = sim.topk(k, dim=1)  # (b, k), sorted, the nearest first
            # exp((s - s_max) / T) is exp(s / T) up to a per-query factor that the share cancels;
            # it cannot overflow.
            weights = torch.exp((top_sim - top_sim[:, :1]) / temperature)  # (b, k)
            votes = torch.einsum("bk,bkc->bc", weights, targets[top_idx])  # (b, C)
            out[start : start + len(votes)] = votes / weights.sum(dim=1, keepdim=True)
    return out.numpy()


def knn_predict(x_train, y_train, x_test, *, k: int = 20, temperature: float = 0.07, num_classes: int | None = None) -> np.ndarray:
    """Predicted class (n_test,) of single-label data."""
    return knn_scores(x_train, y_train, x_test, k=k, temperature=temperature, num_classes=num_classes).argmax(axis=1)
