"""Prototypical probe: nearest class prototype on L2-normalized features (Snell et al., 2017).

No training and no hyperparameter to tune, which makes it the probe of choice
for few-shot settings (1 or 5 samples per class) where a linear head
overfits. A class prototype is the normalized mean of its normalized training
features; a sample scores softmax(cos / temperature) over the prototypes.

For multi-label truth each label has two prototypes, the mean of the samples
with it and of those without it; a label's score is
sigmoid((cos(x, with) - cos(x, without)) / temperature), so it is predicted
when the sample is closer to the samples carrying it.
"""

from __future__ import annotations

import numpy as np

from spacenit.evaluation.errors import ProbeError


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def prototypical_scores(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    *,
    num_classes: int,
    temperature: float = 0.07,
) -> np.ndarray:
    """Scores (n_test, C): class probabilities, or label probabilities for 0/1 truth (N, C)."""
    a, q = _unit(x_train), _unit(x_test)
    if y_train.ndim == 1:
        counts = np.bincount(y_train, minlength=num_classes)
        if counts.min() == 0:
            missing = np.flatnonzero(counts == 0).tolist()
            raise ProbeError(f"prototypical probe: classes {missing} have no training sample")
        protos = _unit(np.stack([a[y_train == c].mean(axis=0) for c in range(num_classes)]))  # (C, D)
        logits = q @ protos.T / temperature  # (n_test, C)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)
    y = np.asarray(y_train, dtype=bool)
    scores = np.full((len(q), y.shape[1]), 0.0)
    for c in range(y.shape[1]):
        if not y[:, c].any() or y[:, c].all():
            # A label always absent (or always present) in training is predicted that way.
            scores[:, c] = float(y[:, c].all())
            continue
        with_c, without_c = _unit(a[y[:, c]].mean(axis=0)), _unit(a[~y[:, c]].mean(axis=0))
        scores[:, c] = 1.0 / (1.0 + np.exp(-(q @ with_c - q @ without_c) / temperature))
    return scores.astype(np.float32)
