"""Trained probes (linear, attentive) and the results store, on data whose answer is known."""

from __future__ import annotations

import numpy as np

from spacenit.evaluation.attentive import attentive_probe_scores
from spacenit.evaluation.heads import HeadConfig
from spacenit.evaluation.linear import linear_probe_scores
from spacenit.evaluation.results import Result, ResultKey, ResultsStore

FAST = HeadConfig(epochs=40, min_steps=100, lrs=(1e-2, 1e-1))


def blobs(n: int, dim: int, classes: int, seed: int, spread: float = 0.5):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 3
    y = rng.integers(0, classes, n)
    return (centres[y] + spread * rng.normal(size=(n, dim))).astype(np.float32), y


def test_linear_probe_separates_blobs_and_picks_a_rate_from_the_grid() -> None:
    x, y = blobs(300, 12, 4, seed=0)
    scores, chosen = linear_probe_scores(x[:200], y[:200], x[200:], num_classes=4, seed=0, config=FAST)
    assert (scores.argmax(axis=1) == y[200:]).mean() > 0.95
    assert chosen["lr"] in FAST.lrs
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
    again, _ = linear_probe_scores(x[:200], y[:200], x[200:], num_classes=4, seed=0, config=FAST)
    np.testing.assert_allclose(scores, again)  # seeded: the same numbers


def test_linear_probe_multilabel() -> None:
    x, y = blobs(300, 12, 3, seed=1)
    multi = np.stack([y == 0, y != 2, y == 1], axis=1).astype(np.int64)  # each label is a union of blobs
    scores, _ = linear_probe_scores(x[:200], multi[:200], x[200:], num_classes=3, seed=0, config=FAST)
    assert ((scores >= 0.5) == multi[200:].astype(bool)).mean() > 0.95


def test_attentive_probe_finds_the_one_informative_token() -> None:
    # One token of 16 carries the class; the rest is noise that a mean dilutes 16x.
    rng = np.random.default_rng(2)
    n, tokens, dim = 240, 16, 16
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, tokens, dim)).astype(np.float32)
    where = rng.integers(0, tokens, n)
    x[np.arange(n), where, 0] = 10.0  # a marker the query can find
    x[np.arange(n), where, 1] = np.where(y == 1, 2.0, -2.0)
    x[:, 3, :][rng.random(n) < 0.2] = np.nan  # missing tokens are masked, not propagated
    cfg = HeadConfig(epochs=40, batch_size=32, lrs=(3e-2,))
    scores, _ = attentive_probe_scores(x[:160], y[:160], x[160:], num_classes=2, seed=0, config=cfg)
    assert np.isfinite(scores).all()
    attentive = (scores.argmax(axis=1) == y[160:]).mean()
    mean_scores, _ = linear_probe_scores(np.nanmean(x[:160], axis=1), y[:160], np.nanmean(x[160:], axis=1), num_classes=2, seed=0, config=cfg)
    assert attentive > 0.9 and attentive > (mean_scores.argmax(axis=1) == y[160:]).mean() + 0.1


def test_results_store_round_trip_and_keys(tmp_path) -> None:
    store = ResultsStore(tmp_path / "r.sqlite")
    key = ResultKey("eurosat", "nano", "knn", -1, 0)
    assert not store.has(key)
    store.put(Result(key, {"accuracy": {"value": 0.5, "low": 0.4, "high": 0.6}}, {"num_test": 10}))
    assert store.has(key) and not store.has(ResultKey("eurosat", "nano", "knn", 5, 0))
    again = ResultsStore(tmp_path / "r.sqlite").get(key)  # a second process sees it
    assert again.metrics["accuracy"]["value"] == 0.5 and again.details == {"num_test": 10}
    store.put(Result(key, {"accuracy": {"value": 0.7, "low": 0.6, "high": 0.8}}, {}))  # replaces
    assert len(store.query(task="eurosat")) == 1 and store.get(key).metrics["accuracy"]["value"] == 0.7
