"""Classification metrics in plain numpy, fast enough to recompute on a thousand bootstrap resamples.

Single-label (one class per sample): accuracy, macro F1, confusion matrix.
Multi-label (BigEarthNet-style, a 0/1 row per sample): mean average precision
over the labels, micro and macro F1.

Conventions follow scikit-learn so numbers compare with published ones:
macro F1 averages over the classes present in the truth or the predictions
(`f1_score(average="macro")`); average precision is the step-wise
`sum_n (R_n - R_{n-1}) P_n` over distinct score thresholds
(`average_precision_score`), and mAP averages it over the labels that have at
least one positive (a label without positives has no defined AP).
"""

from __future__ import annotations

import numpy as np


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts; rows are true classes, columns predicted ones."""
    flat = np.asarray(y_true) * num_classes + np.asarray(y_pred)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Unweighted mean F1 over the classes that occur in `y_true` or `y_pred`."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(cm).astype(np.float64)
    fp, fn = cm.sum(axis=0) - tp, cm.sum(axis=1) - tp
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    return float(_f1_from_counts(tp, fp, fn)[present].mean())


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """AP of one label: y_true (N,) 0/1, scores (N,); tied scores form one threshold."""
    y_true, scores = np.asarray(y_true, dtype=bool), np.asarray(scores, dtype=np.float64)
    positives = y_true.sum()
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], y_true[order]
    # The last position of each run of equal scores is where a threshold falls.
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(t)[last]
    precision = tp / (last + 1)
    recall_gain = np.diff(np.r_[0, tp]) / positives
    return float((recall_gain * precision).sum())


def mean_average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """mAP over the labels of y_true (N, C) that have a positive; scores (N, C)."""
    aps = [average_precision(y_true[:, c], scores[:, c]) for c in range(y_true.shape[1]) if y_true[:, c].any()]
    return float(np.mean(aps)) if aps else float("nan")


def multilabel_f1(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """(micro F1, macro F1) of 0/1 matrices (N, C); macro over labels true or predicted somewhere."""
    y_true, y_pred = np.asarray(y_true, dtype=bool), np.asarray(y_pred, dtype=bool)
    tp = (y_true & y_pred).sum(axis=0).astype(np.float64)
    fp = (~y_true & y_pred).sum(axis=0).astype(np.float64)
    fn = (y_true & ~y_pred).sum(axis=0).astype(np.float64)
    micro = float(_f1_from_counts(tp.sum(), fp.sum(), fn.sum()))
    present = (y_true | y_pred).any(axis=0)
    macro = float(_f1_from_counts(tp, fp, fn)[present].mean()) if present.any() else 0.0
    return micro, macro


def single_label_metrics(y_true: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Metrics of class scores (N, C) against integer labels (N,); prediction = argmax."""
    y_pred = scores.argmax(axis=1)
    return {"accuracy": accuracy(y_true, y_pred), "macro_f1": macro_f1(y_true, y_pred, scores.shape[1])}


def multi_label_metrics(y_true: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Metrics of label probabilities (N, C) against 0/1 truth (N, C); predicted = score >= threshold."""
    micro, macro = multilabel_f1(y_true, scores >= threshold)
    return {"map": mean_average_precision(y_true, scores), "micro_f1": micro, "macro_f1": macro}


def metrics_for(y_true: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Single- or multi-label metrics, chosen by the shape of the truth."""
    return multi_label_metrics(y_true, scores) if y_true.ndim == 2 else single_label_metrics(y_true, scores)


def primary_metric(multilabel: bool) -> str:
    """The headline number of a task: accuracy (single-label) or mAP (multi-label)."""
    return "map" if multilabel else "accuracy"
