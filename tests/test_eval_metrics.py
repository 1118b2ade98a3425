"""Metrics, bootstrap CIs, kNN, prototypes, splits: against scikit-learn and brute-force loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score
from sklearn.metrics import confusion_matrix as sk_confusion

from spacenit.evaluation.bootstrap import bootstrap_metrics, paired_difference
from spacenit.evaluation.errors import ProbeError
from spacenit.evaluation.knn import knn_scores
from spacenit.evaluation.metrics import (
    average_precision,
    confusion_matrix,
    macro_f1,
    mean_average_precision,
    multilabel_f1,
)
from spacenit.evaluation.prototypical import prototypical_scores
from spacenit.evaluation.splits import ALL, crossfit_folds, few_shot_subset, holdout_folds


def test_single_label_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    p[:100] = y[:100]
    p[p == 4] = 3  # class 4 never predicted: still counted, as sklearn does
    np.testing.assert_array_equal(confusion_matrix(y, p, 5), sk_confusion(y, p, labels=range(5)))
    assert macro_f1(y, p, 5) == pytest.approx(f1_score(y, p, average="macro"))
    assert macro_f1(y[y < 3], p[y < 3], 5) == pytest.approx(f1_score(y[y < 3], p[y < 3], average="macro"))


def test_average_precision_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, (80, 6))
    y[:, 5] = 0  # a label without positives is left out of the mean
    scores = np.round(rng.random((80, 6)) + 0.3 * y, 1)  # rounding makes many ties
    for c in range(5):
        assert average_precision(y[:, c], scores[:, c]) == pytest.approx(average_precision_score(y[:, c], scores[:, c]))
    assert math.isnan(average_precision(y[:, 5], scores[:, 5]))
    expected = np.mean([average_precision_score(y[:, c], scores[:, c]) for c in range(5)])
    assert mean_average_precision(y, scores) == pytest.approx(expected)


def test_multilabel_f1_matches_sklearn() -> None:
    rng = np.random.default_rng(2)
    y, pred = rng.integers(0, 2, (50, 7)), rng.integers(0, 2, (50, 7))
    y[:, 6] = pred[:, 6] = 0  # neither true nor predicted: not part of the macro mean
    micro, macro = multilabel_f1(y, pred)
    assert micro == pytest.approx(f1_score(y, pred, average="micro"))
    assert macro == pytest.approx(f1_score(y, pred, average="macro", labels=range(6)))


def test_bootstrap_interval_agrees_with_the_normal_approximation() -> None:
    rng = np.random.default_rng(3)
    n, p = 2000, 0.8
    y = np.zeros(n, dtype=np.int64)
    correct = rng.random(n) < p
    scores = np.stack([correct, ~correct], axis=1).astype(np.float32)  # argmax = 0 where correct
    est = bootstrap_metrics(y, scores, num_resamples=1000, seed=0)["accuracy"]
    acc = correct.mean()
    half = 1.96 * math.sqrt(acc * (1 - acc) / n)
    assert est.value == pytest.approx(acc)
    assert est.low == pytest.approx(acc - half, abs=0.25 * half) and est.high == pytest.approx(acc + half, abs=0.25 * half)
    again = bootstrap_metrics(y, scores, num_resamples=1000, seed=0)["accuracy"]
    assert again == est  # seeded


def test_paired_difference_is_tight_where_separate_intervals_overlap() -> None:
    # B repeats A's predictions except on 12 of 200 samples, where A is right and B wrong:
    # separate intervals (each about +-0.07) overlap, the paired one is about 12/200 +- 0.03.
    rng = np.random.default_rng(3)
    n = 200
    y = np.zeros(n, dtype=np.int64)
    a_right = rng.random(n) < 0.6
    b_right = a_right.copy()
    b_right[np.flatnonzero(a_right)[:12]] = False
    as_scores = lambda right: np.stack([right, ~right], axis=1).astype(np.float32)  # noqa: E731
    a, b = as_scores(a_right), as_scores(b_right)
    separate = [bootstrap_metrics(y, s, num_resamples=1000, seed=0)["accuracy"] for s in (a, b)]
    assert separate[0].overlaps(separate[1])
    diff = paired_difference(y, a, b, "accuracy", num_resamples=1000, seed=0)
    assert diff.value == pytest.approx(12 / n)
    half = 1.96 * math.sqrt((12 / n) * (1 - 12 / n) / n)  # the normal interval of a proportion of discordant pairs
    assert diff.low == pytest.approx(12 / n - half, abs=0.3 * half) and diff.high == pytest.approx(12 / n + half, abs=0.3 * half)
    assert diff.low > 0
    same = paired_difference(y, a, a, "accuracy", num_resamples=200, seed=0)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same samples"):
        paired_difference(y, a, b[:-1])


def reference_knn_shares(x_train, y_train, x_test, k, temperature=0.07):
    """Loop-by-loop weighted vote shares; y_train (n, C) 0/1."""
    out = []
    for q in x_test:
        sims = [float(np.dot(q, t) / (np.linalg.norm(q) * np.linalg.norm(t))) for t in x_train]
        order = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        w = [math.exp(sims[i] / temperature) for i in order]
        out.append([sum(wi * y_train[i][c] for wi, i in zip(w, order, strict=True)) / sum(w) for c in range(y_train.shape[1])])
    return np.array(out)


def test_knn_scores_match_reference_for_single_and_multi_label() -> None:
    rng = np.random.default_rng(4)
    x_train, x_test = rng.normal(size=(70, 6)), rng.normal(size=(15, 6))
    y_multi = rng.integers(0, 2, (70, 4))
    np.testing.assert_allclose(knn_scores(x_train, y_multi, x_test, k=7), reference_knn_shares(x_train, y_multi, x_test, 7), rtol=1e-4)
    y_single = rng.integers(0, 3, 70)
    shares = knn_scores(x_train, y_single, x_test, k=7, num_classes=3)
    np.testing.assert_allclose(shares, reference_knn_shares(x_train, np.eye(3)[y_single], x_test, 7), rtol=1e-4)
    np.testing.assert_allclose(shares.sum(axis=1), 1.0, rtol=1e-5)


def test_prototypical_scores_match_a_loop() -> None:
    rng = np.random.default_rng(5)
    x_train, y_train, x_test = rng.normal(size=(40, 5)), rng.integers(0, 3, 40), rng.normal(size=(9, 5))
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    protos = [unit(np.mean([unit(x) for x, y in zip(x_train, y_train, strict=True) if y == c], axis=0)) for c in range(3)]
    expected = [int(np.argmax([unit(q) @ p for p in protos])) for q in x_test]
    np.testing.assert_array_equal(prototypical_scores(x_train, y_train, x_test, num_classes=3).argmax(axis=1), expected)
    with pytest.raises(ProbeError, match="no training sample"):
        prototypical_scores(x_train[y_train < 2], y_train[y_train < 2], x_test, num_classes=3)
    # multi-label: a label is predicted when the sample is closer to the samples that carry it
    y_multi = np.stack([y_train == 0, y_train != 2], axis=1).astype(int)
    scores = prototypical_scores(x_train, y_multi, x_test, num_classes=2)
    for c in range(2):
        with_c = unit(np.mean([unit(x) for x in x_train[y_multi[:, c] == 1]], axis=0))
        without = unit(np.mean([unit(x) for x in x_train[y_multi[:, c] == 0]], axis=0))
        np.testing.assert_array_equal(scores[:, c] >= 0.5, [unit(q) @ with_c >= unit(q) @ without for q in x_test])


def test_crossfit_folds_partition_and_stratify() -> None:
    y = np.repeat(np.arange(4), [10, 12, 15, 20])
    folds = crossfit_folds(y, num_folds=5, seed=0)
    tested = np.concatenate([f.test for f in folds])
    assert sorted(tested.tolist()) == list(range(len(y)))
    for f in folds:
        assert not set(f.train) & set(f.test)
        assert all(np.sum(y[f.test] == c) in (np.sum(y == c) // 5, np.sum(y == c) // 5 + 1) for c in range(4))
    with pytest.raises(ProbeError, match="rarest"):
        crossfit_folds(np.array([0, 0, 1, 1, 1, 1]), num_folds=5, seed=0)


def test_holdout_uses_the_dataset_split_when_complete() -> None:
    y = np.array([0, 1] * 10)
    splits = ["train"] * 12 + ["val"] * 2 + ["test"] * 6
    (fold,) = holdout_folds(y, splits, test_fraction=0.3, seed=0)
    assert fold.test.tolist() == list(range(14, 20)) and fold.train.tolist() == list(range(14))
    (fold,) = holdout_folds(y, [None] * 20, test_fraction=0.3, seed=0)
    assert len(fold.test) == 6 and np.bincount(y[fold.test]).tolist() == [3, 3]


def test_few_shot_subsets() -> None:
    y = np.repeat(np.arange(3), 10)
    train = np.arange(30)
    for n in (1, 5):
        sub = few_shot_subset(train, y, n, seed=0)
        assert np.bincount(y[sub]).tolist() == [n, n, n]
    assert few_shot_subset(train, y, ALL, seed=0) is train
    assert few_shot_subset(train, y, 5, seed=0).tolist() == few_shot_subset(train, y, 5, seed=0).tolist()
    multi = np.random.default_rng(6).integers(0, 2, (30, 4))
    sub = few_shot_subset(train, multi, 2, seed=1)
    assert (multi[sub].sum(axis=0) >= np.minimum(2, multi.sum(axis=0))).all()
