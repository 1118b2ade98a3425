"""The `probe` stage: probes on frozen embeddings, metrics with bootstrap CIs, logged to MLflow.

Train/test come from the dataset's own splits when it has both (split names
normalized: `validation`, `dev`, ... are `val`; unknown names are refused);
otherwise a seeded stratified split, which the console is told about. With
`test_embeddings`, the probe trains on one set of embeddings and is tested
on another (data the model and the probe never saw): the training set's
train/val samples (all of them when it has no split) against the test set's
test samples (all of them when it has none), classes matched by name.
kNN follows OlmoEarth: cosine similarity on
L2-normalized features, the k nearest vote with weight exp(sim / 0.07). The
linear probe is BatchNorm + Linear with a learning rate chosen on a
validation split (see `linear.py`). Every metric comes with its 95%
bootstrap interval (`<metric>_ci_low`, `<metric>_ci_high`), and each probe's
confusion matrix goes to MLflow as a PNG.

For a whole benchmark (several models, few-shot, fine-tuning, a results
store) use `spacenit evaluate` (benchmark.py); this stage probes one set of
embeddings, as the pipeline's last step.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from spacenit.data.format import write_json_atomic
from spacenit.evaluation.bootstrap import bootstrap_metrics
from spacenit.evaluation.embed import Embeddings, load_embeddings
from spacenit.evaluation.errors import ProbeError
from spacenit.evaluation.knn import knn_predict, knn_scores
from spacenit.evaluation.linear import linear_probe_scores
from spacenit.evaluation.metrics import confusion_matrix
from spacenit.evaluation.prototypical import prototypical_scores
from spacenit.evaluation.splits import normalize_splits

__all__ = ["ProbeError", "Split", "cross_split", "knn_predict", "make_split", "probe"]

log = logging.getLogger(__name__)


@dataclass
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str  # "dataset" or "stratified(seed=...)"
    classes: list[str] | None = None


def make_split(x: np.ndarray, labels: list, splits: list, *, test_fraction: float, seed: int, where: str = "") -> Split:
    keep = np.array([lbl is not None for lbl in labels])
    if keep.sum() == 0:
        raise ProbeError(
            "the embeddings carry no labels; convert a labelled dataset (labels.csv or class folders). "
            "Multi-label datasets (`labels`) are probed by `spacenit evaluate DATASET_DIR`"
        )
    classes = sorted({lbl for lbl in labels if lbl is not None})
    if len(classes) < 2:
        raise ProbeError(f"probing needs at least two classes, found {classes}")
    y = np.array([classes.index(lbl) if lbl is not None else -1 for lbl in labels])
    split_arr = np.array([s or "" for s in normalize_splits(list(splits), where=where)])
    train, test = keep & np.isin(split_arr, ["train", "val"]), keep & (split_arr == "test")
    if train.any() and test.any():
        return Split(x[train], y[train], x[test], y[test], "dataset", classes)
    idx = np.flatnonzero(keep)
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=y[idx])
    log.warning("%s has no train/test split: probing on a seeded stratified %d/%d split of its %d labelled "
                "samples (seed %d); give the samples a split for a fixed test set", where or "the data",
                round(100 * (1 - test_fraction)), round(100 * test_fraction), len(idx), seed)  # fmt: skip
    return Split(x[tr], y[tr], x[te], y[te], f"stratified(seed={seed})", classes)


def _side(emb: Embeddings, wanted: tuple[str, ...], where: str) -> tuple[np.ndarray, str]:
    """Labelled samples of `emb` whose split is in `wanted`, or every labelled one when none is named."""
    labelled = np.array([lbl is not None for lbl in emb.labels])
    if not labelled.any():
        raise ProbeError(f"{where} carries no labels; probing needs labelled embeddings")
    split = np.array([s or "" for s in normalize_splits(list(emb.splits), where=where)])
    named = labelled & np.isin(split, wanted)
    if named.any():
        return np.flatnonzero(named), "/".join(wanted)
    return np.flatnonzero(labelled), "all"


def cross_split(train_emb: Embeddings, test_emb: Embeddings, *, train_where: str, test_where: str) -> Split:
    """Train on `train_emb`'s train/val samples (all when it has no split), test on `test_emb`'s test
    samples (all when it has none); classes are the training side's, matched by name."""
    if train_emb.vectors.shape[1] != test_emb.vectors.shape[1]:
        raise ProbeError(f"{train_where} has {train_emb.vectors.shape[1]}-d embeddings, {test_where} "
                         f"{test_emb.vectors.shape[1]}-d: embed both datasets with the same model")  # fmt: skip
    train, train_part = _side(train_emb, ("train", "val"), train_where)
    test, test_part = _side(test_emb, ("test",), test_where)
    classes = sorted({train_emb.labels[i] for i in train})
    if len(classes) < 2:
        raise ProbeError(f"probing needs at least two classes in the training side ({train_where}), found {classes}")
    unseen = sorted({test_emb.labels[i] for i in test} - set(classes))
    if unseen:
        raise ProbeError(f"{test_where} has classes the training side ({train_where}) lacks: {unseen}; "
                         f"a probe can only predict {classes}")  # fmt: skip
    y_train = np.array([classes.index(train_emb.labels[i]) for i in train])
    y_test = np.array([classes.index(test_emb.labels[i]) for i in test])
    source = f"train: {train_where} ({train_part}), test: {test_where} ({test_part})"
    return Split(train_emb.vectors[train], y_train, test_emb.vectors[test], y_test, source, classes)


def _scores(name: str, split: Split, num_classes: int, *, k: int, seed: int) -> tuple[np.ndarray, dict]:
    if name == "knn":
        return knn_scores(split.x_train, split.y_train, split.x_test, k=k, num_classes=num_classes), {}
    if name == "linear":
        return linear_probe_scores(split.x_train, split.y_train, split.x_test, num_classes=num_classes, seed=seed)
    if name == "prototypical":
        return prototypical_scores(split.x_train, split.y_train, split.x_test, num_classes=num_classes), {}
    raise ProbeError(f"unknown probe {name!r}; this stage runs knn, linear and prototypical (attentive and fine-tuning: `spacenit evaluate`)")


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
    probes: Sequence[str] = ("knn", "linear"),
    num_resamples: int = 1000,
    test_embeddings: str | Path | None = None,
) -> dict[str, float]:
    """Run the probes, write the metrics JSON to `output_path`, log them to MLflow; return them (flat scalars).

    With `test_embeddings`, train on `embeddings_path` and test on `test_embeddings` (`cross_split`).
    """
    emb = load_embeddings(embeddings_path)
    if test_embeddings is not None:
        split = cross_split(emb, load_embeddings(test_embeddings), train_where=str(embeddings_path), test_where=str(test_embeddings))
    else:
        split = make_split(emb.vectors, emb.labels, emb.splits, test_fraction=test_fraction, seed=seed, where=str(embeddings_path))
    num_classes = len(split.classes)
    majority = np.bincount(split.y_train, minlength=num_classes).argmax()
    metrics: dict[str, float] = {}
    confusions, chosen = {}, {}
    for name in probes:
        scores, info = _scores(name, split, num_classes, k=k, seed=seed)
        chosen[name] = info
        for metric, est in bootstrap_metrics(split.y_test, scores, num_resamples=num_resamples, seed=seed).items():
            metrics[f"{name}_{metric}"] = est.value
            metrics[f"{name}_{metric}_ci_low"] = est.low
            metrics[f"{name}_{metric}_ci_high"] = est.high
        confusions[name] = confusion_matrix(split.y_test, scores.argmax(axis=1), num_classes)
    metrics.update({
        "majority_accuracy": float((split.y_test == majority).mean()),
        "num_train": int(len(split.y_train)),
        "num_test": int(len(split.y_test)),
        "num_classes": num_classes,
    })  # fmt: skip
    write_json_atomic(Path(output_path), {
        **metrics, "split": split.source, "k": k, "seed": seed, "classes": split.classes, "chosen": chosen,
        "confusion_matrices": {n: c.tolist() for n, c in confusions.items()},
    })  # fmt: skip
    if log_to_mlflow:
        _log(metrics, confusions, split, embeddings_path=str(embeddings_path), k=k, seed=seed, tracking_uri=tracking_uri,
             experiment=experiment, test_embeddings=test_embeddings)  # fmt: skip
    return metrics


def _log(metrics, confusions, split: Split, *, embeddings_path: str, k: int, seed: int, tracking_uri, experiment,
         test_embeddings) -> None:  # fmt: skip
    import mlflow

    from spacenit.evaluation.plots import confusion_figure
    from spacenit.train.tracking import start_run

    with start_run(tracking_uri, experiment, run_name="probe", tags={"spacenit.stage": "probe"}):
        mlflow.log_params({"k": k, "seed": seed, "split": split.source, "embeddings": embeddings_path,
                           **({"test_embeddings": str(test_embeddings)} if test_embeddings is not None else {})})  # fmt: skip
        mlflow.log_metrics(metrics)
        for name, matrix in confusions.items():
            mlflow.log_figure(confusion_figure(matrix, split.classes, f"{name} probe"), f"confusion_{name}.png")
