"""The `probe` stage: kNN and linear probes on frozen embeddings, logged to MLflow.

Train/test come from the dataset's own splits when it has both; otherwise a
seeded stratified split. kNN follows OlmoEarth: cosine similarity on
L2-normalized features, the k nearest vote with weight exp(sim / 0.07).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from spacenit.data.format import write_json_atomic
from spacenit.evaluation.embed import load_embeddings


class ProbeError(ValueError):
    """Embeddings that cannot be probed (no labels, one class, too few samples)."""


@dataclass
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str  # "dataset" or "stratified(seed=...)"


def make_split(x: np.ndarray, labels: list, splits: list, *, test_fraction: float, seed: int) -> Split:
    keep = np.array([lbl is not None for lbl in labels])
    if keep.sum() == 0:
        raise ProbeError("the embeddings carry no labels; convert a labelled dataset (labels.csv or class folders)")
    classes = sorted({lbl for lbl in labels if lbl is not None})
    if len(classes) < 2:
        raise ProbeError(f"probing needs at least two classes, found {classes}")
    y = np.array([classes.index(lbl) if lbl is not None else -1 for lbl in labels])
    split_arr = np.array([s or "" for s in splits])
    train, test = keep & (split_arr == "train"), keep & (split_arr == "test")
    if train.any() and test.any():
        return Split(x[train], y[train], x[test], y[test], "dataset")
    idx = np.flatnonzero(keep)
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=y[idx])
    return Split(x[tr], y[tr], x[te], y[te], f"stratified(seed={seed})")


def knn_predict(x_train, y_train, x_test, *, k: int = 20, temperature: float = 0.07, num_classes: int | None = None) -> np.ndarray:
    num_classes = num_classes or int(y_train.max()) + 1
    a = x_train / np.linalg.norm(x_train, axis=1, keepdims=True).clip(1e-12)
    b = x_test / np.linalg.norm(x_test, axis=1, keepdims=True).clip(1e-12)
    sim = b @ a.T  # (n_test, n_train)
    k = min(k, len(x_train))
    top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    top_sim = np.take_along_axis(sim, top, axis=1)
    votes = np.zeros((len(x_test), num_classes))
    np.add.at(votes, (np.arange(len(x_test))[:, None], y_train[top]), np.exp(top_sim / temperature))
    return votes.argmax(axis=1)


def linear_predict(x_train, y_train, x_test, *, seed: int) -> np.ndarray:
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    clf.fit(x_train, y_train)
    return clf.predict(x_test)


def probe(
    embeddings_path: str | Path,
    output_path: str | Path,
    *,
    k: int = 20,
    seed: int = 0,
    test_fraction: float = 0.3,
    tracking_uri: str | None = None,
    experiment: str = "spacenit",
    log_to_mlflow: bool = True,
) -> dict[str, float]:
    """Run the probes, write the metrics JSON to `output_path`, log them to MLflow; return them."""
    emb = load_embeddings(embeddings_path)
    split = make_split(emb.vectors, emb.labels, emb.splits, test_fraction=test_fraction, seed=seed)
    num_classes = int(max(split.y_train.max(), split.y_test.max())) + 1
    knn = knn_predict(split.x_train, split.y_train, split.x_test, k=k, num_classes=num_classes)
    lin = linear_predict(split.x_train, split.y_train, split.x_test, seed=seed)
    majority = np.bincount(split.y_train, minlength=num_classes).argmax()
    metrics = {
        "knn_accuracy": float((knn == split.y_test).mean()),
        "linear_accuracy": float((lin == split.y_test).mean()),
        "majority_accuracy": float((split.y_test == majority).mean()),
        "num_train": int(len(split.y_train)),
        "num_test": int(len(split.y_test)),
        "num_classes": num_classes,
    }
    write_json_atomic(Path(output_path), {**metrics, "split": split.source, "k": k, "seed": seed})
    if log_to_mlflow:
        import mlflow

        from spacenit.train.tracking import start_run

        with start_run(tracking_uri, experiment, run_name="probe", tags={"spacenit.stage": "probe"}):
            mlflow.log_params({"k": k, "seed": seed, "split": split.source, "embeddings": str(embeddings_path)})
            mlflow.log_metrics(metrics)
    return metrics
