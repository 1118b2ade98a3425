"""Percentile bootstrap confidence intervals over test samples.

A probe's number on a few hundred test samples moves by several points from
one draw of the test set to another; a bare number invites reading noise as
progress. Every metric is therefore reported as value [low, high]: resample
the test set with replacement `num_resamples` times, recompute the metric, and
take the alpha/2 and 1 - alpha/2 quantiles (Efron's percentile interval).

Two models scored on the same test samples are compared by `paired_difference`:
the same resamples for both, so the interval of the difference leaves out the
between-sample variation the two share. It is narrower than what two separate
intervals suggest, and the right test of "is A better than B on this set";
whether two separate intervals overlap is the stricter, conservative one.

The interval covers test-set sampling only. With cross-fitted predictions
(every sample predicted by a probe that did not see it) it also ignores the
variation of the probe's training set, so it is somewhat narrow for small
training sets; repeat with several seeds to see that part.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from spacenit.evaluation.metrics import metrics_for


@dataclass(frozen=True)
class Estimate:
    """A metric with its confidence interval."""

    value: float
    low: float
    high: float

    def overlaps(self, other: Estimate) -> bool:
        return self.low <= other.high and other.low <= self.high

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def bootstrap_metrics(
    y_true: np.ndarray,
    scores: np.ndarray,
    *,
    metric_fn: Callable[[np.ndarray, np.ndarray], dict[str, float]] = metrics_for,
    num_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Estimate]:
    """Each metric of `metric_fn(y_true, scores)` with its (1 - alpha) percentile interval."""
    if len(y_true) == 0:
        raise ValueError("no test samples to compute metrics on")
    point = metric_fn(y_true, scores)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {name: [] for name in point}
    n = len(y_true)
    for _ in range(num_resamples):
        idx = rng.integers(0, n, n)
        for name, value in metric_fn(y_true[idx], scores[idx]).items():
            draws[name].append(value)
    out = {}
    for name, value in point.items():
        values = np.asarray(draws[name], dtype=np.float64)
        values = values[np.isfinite(values)]  # a resample can lack every positive of a label
        if len(values) == 0:
            out[name] = Estimate(value, float("nan"), float("nan"))
            continue
        low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
        out[name] = Estimate(float(value), float(low), float(high))
    return out


def paired_difference(
    y_true: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    metric: str = "accuracy",
    *,
    metric_fn: Callable[[np.ndarray, np.ndarray], dict[str, float]] = metrics_for,
    num_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> Estimate:
    """`metric` of A minus that of B on the same samples, with its paired percentile interval."""
    if not len(y_true) == len(scores_a) == len(scores_b):
        raise ValueError(f"paired scores need the same samples: {len(y_true)}, {len(scores_a)} and {len(scores_b)} rows")
    if len(y_true) == 0:
        raise ValueError("no test samples to compute metrics on")

    def difference(idx: np.ndarray) -> float:
        return metric_fn(y_true[idx], scores_a[idx])[metric] - metric_fn(y_true[idx], scores_b[idx])[metric]

    rng = np.random.default_rng(seed)
    n = len(y_true)
    draws = np.array([difference(rng.integers(0, n, n)) for _ in range(num_resamples)])
    low, high = np.quantile(draws[np.isfinite(draws)], [alpha / 2, 1 - alpha / 2])
    return Estimate(difference(np.arange(n)), float(low), float(high))
