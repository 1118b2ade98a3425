"""The benchmark harness: every (model, probe, n_train, seed) cell of a task, scored with CIs, stored, logged.

    task = load_task("eurosat", data_root="../shared/data", work_dir="eval-work")
    model = SpaceNitAdapter.from_checkpoint("out/checkpoint", name="nano")
    run_benchmark(task, [model, model.random_twin(), RawPixelAdapter()], store=ResultsStore("results.sqlite"))

Each cell: features of the task (once per model), the task's folds (hold-out
or cross-fitted), a few-shot subset of each fold's training part, the probe's
scores on the fold's test part, then metrics with bootstrap CIs over all
tested samples. A cell already in the store is skipped before any feature is
computed. Each new cell is one MLflow run (nested under one `evaluate` run)
with its metrics, CI bounds, parameters and, for single-label tasks, the
confusion matrix as a PNG.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from spacenit.evaluation.adapters import EncoderAdapter, Features, SpaceNitAdapter
from spacenit.evaluation.attentive import attentive_probe_scores
from spacenit.evaluation.bootstrap import bootstrap_metrics
from spacenit.evaluation.datasets import CROSSFIT, SEGMENTATION, TRANSFER, Task
from spacenit.evaluation.errors import ProbeError
from spacenit.evaluation.finetune import FinetuneConfig, finetune_scores
from spacenit.evaluation.knn import knn_scores
from spacenit.evaluation.linear import linear_probe_scores
from spacenit.evaluation.metrics import confusion_matrix
from spacenit.evaluation.prototypical import prototypical_scores
from spacenit.evaluation.results import Result, ResultKey, ResultsStore
from spacenit.evaluation.splits import ALL, Fold, crossfit_folds, few_shot_subset, holdout_folds

log = logging.getLogger(__name__)

PROBES = ("knn", "linear", "prototypical", "attentive", "finetune")
FEW_SHOT = (1, 5, 10, ALL)


@dataclass
class BenchmarkOptions:
    probes: Sequence[str] = PROBES
    #: Training samples per class; -1 (ALL) = the whole training part.
    n_train: Sequence[int] = (ALL,)
    seeds: Sequence[int] = (0,)
    k: int = 20
    test_fraction: float = 0.3
    num_resamples: int = 1000
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


def task_folds(task: Task, seed: int, test_fraction: float) -> list[Fold]:
    if task.protocol == TRANSFER:
        return [task.fold]
    if task.protocol == CROSSFIT:
        return crossfit_folds(task.targets, num_folds=task.num_folds, seed=seed)
    return holdout_folds(task.targets, task.splits, test_fraction=test_fraction, seed=seed)


def task_features(adapter: EncoderAdapter, task: Task, *, patch_tokens: bool) -> Features:
    """The adapter's features of every sample of `task`; a transfer task's parts one after the other."""
    if task.parts is None:
        return adapter.features(task, patch_tokens=patch_tokens)
    parts = [adapter.features(part, patch_tokens=patch_tokens) for part in task.parts]
    tokens = None
    if patch_tokens:
        shapes = {p.tokens.shape[1:] for p in parts}
        if len(shapes) != 1:
            raise ProbeError(f"{task.name}: the datasets give {sorted(shapes)} patch tokens per sample; the attentive "
                             "probe needs tiles of one size on both sides")  # fmt: skip
        tokens = np.concatenate([p.tokens for p in parts])
    return Features(np.concatenate([p.pooled for p in parts]), tokens)


def probe_scores(probe: str, features: Features, targets: np.ndarray, train: np.ndarray, test: np.ndarray,
                 *, num_classes: int, seed: int, k: int) -> tuple[np.ndarray, dict]:  # fmt: skip
    """Scores (len(test), C) of one frozen-feature probe trained on `train`; and what it chose."""
    x, y = features.pooled, targets
    if probe == "knn":
        return knn_scores(x[train], y[train], x[test], k=k, num_classes=num_classes), {"k": k}
    if probe == "linear":
        return linear_probe_scores(x[train], y[train], x[test], num_classes=num_classes, seed=seed)
    if probe == "prototypical":
        return prototypical_scores(x[train], y[train], x[test], num_classes=num_classes), {}
    if probe == "attentive":
        if features.tokens is None:
            raise ProbeError("the attentive probe needs patch tokens")
        return attentive_probe_scores(features.tokens[train], y[train], features.tokens[test], num_classes=num_classes, seed=seed)
    raise ProbeError(f"unknown probe {probe!r}; probes: {list(PROBES)}")


def cell_scores(task: Task, adapter: EncoderAdapter, features: Features | None, probe: str, n_train: int, seed: int,
                options: BenchmarkOptions) -> tuple[np.ndarray, list[dict], list[int]]:  # fmt: skip
    """Scores (N, C) of one cell over all folds, NaN for samples no fold tested; what each fold chose; its train sizes."""
    y = task.targets
    scores = np.full((len(y), task.num_classes), np.nan, dtype=np.float32)
    chosen, sizes = [], []
    for fold in task_folds(task, seed, options.test_fraction):
        train = few_shot_subset(fold.train, y, n_train, seed)
        sizes.append(len(train))
        if probe == "finetune":
            if not isinstance(adapter, SpaceNitAdapter):
                raise ProbeError(f"fine-tuning needs a SpaceNit model; {adapter.name} has no trainable encoder here")
            if task.parts is not None:
                raise ProbeError(f"{task.name}: fine-tuning reads one dataset; it does not run across datasets")
            dataset = adapter.inputs_dataset(task)
            scores[fold.test] = finetune_scores(adapter.model, adapter.meta.patch_size, dataset, train, fold.test, y,
                                                num_classes=task.num_classes, seed=seed, config=options.finetune)  # fmt: skip
            info = {}
        else:
            scores[fold.test], info = probe_scores(probe, features, y, train, fold.test, num_classes=task.num_classes, seed=seed, k=options.k)
        chosen.append(info)
    return scores, chosen, sizes


def score_cell(task: Task, adapter: EncoderAdapter, features: Features | None, probe: str, n_train: int, seed: int,
               options: BenchmarkOptions) -> Result:  # fmt: skip
    """Run one cell over all folds and compute its metrics with CIs."""
    y = task.targets
    scores, chosen, sizes = cell_scores(task, adapter, features, probe, n_train, seed, options)
    tested = ~np.isnan(scores).any(axis=1)
    estimates = bootstrap_metrics(y[tested], scores[tested], num_resamples=options.num_resamples, seed=seed)
    details = {
        "protocol": task.protocol if task.protocol in (CROSSFIT, TRANSFER) else "holdout",
        "num_folds": len(sizes),
        "num_train_per_fold": sizes,
        "num_test": int(tested.sum()),
        "num_classes": task.num_classes,
        "class_names": task.class_names,
        "multilabel": task.multilabel,
        "chosen": chosen,
    }
    if not task.multilabel:
        details["confusion_matrix"] = confusion_matrix(y[tested], scores[tested].argmax(axis=1), task.num_classes).tolist()
    metrics = {name: {"value": e.value, "low": e.low, "high": e.high} for name, e in estimates.items()}
    return Result(ResultKey(task.name, adapter.name, probe, n_train, seed), metrics, details)


def run_benchmark(
    task: Task,
    adapters: Sequence[EncoderAdapter],
    *,
    store: ResultsStore,
    options: BenchmarkOptions | None = None,
    tracking_uri: str | None = None,
    experiment: str = "spacenit-eval",
    log_to_mlflow: bool = True,
) -> list[Result]:
    """Fill the missing cells of the grid for `task`; returns the new results."""
    if task.kind == SEGMENTATION:
        raise ProbeError(f"{task.name} is a segmentation task (label rasters); its probes are the dense task "
                         "type's (spacenit.evaluation.dense), not these classification probes")  # fmt: skip
    options = options or BenchmarkOptions()
    new: list[Result] = []
    run = None  # started with the first new cell: a re-run with nothing to do logs nothing
    try:
        for adapter in adapters:
            features: Features | None = None
            for probe in options.probes:
                for n_train in options.n_train:
                    for seed in options.seeds:
                        key = ResultKey(task.name, adapter.name, probe, n_train, seed)
                        if store.has(key):
                            log.info("skip %s: already in %s", key, store.path)
                            continue
                        if probe == "finetune" and (not isinstance(adapter, SpaceNitAdapter) or task.parts is not None):
                            continue  # nothing to fine-tune in a baseline without weights, nor across datasets
                        if features is None and probe != "finetune":
                            needs_tokens = "attentive" in options.probes
                            features = task_features(adapter, task, patch_tokens=needs_tokens)
                        result = score_cell(task, adapter, features, probe, n_train, seed, options)
                        store.put(result)
                        new.append(result)
                        if log_to_mlflow:
                            run = run or _start_parent_run(tracking_uri, experiment, task)
                            _log_result(result)
    finally:
        if run is not None:
            import mlflow

            mlflow.end_run()
    return new


def _start_parent_run(tracking_uri: str | None, experiment: str, task: Task):
    from spacenit.train.tracking import start_run

    return start_run(tracking_uri, experiment, run_name=f"evaluate-{task.name}", tags={"spacenit.stage": "evaluate"})


def flat_metrics(result: Result) -> dict[str, float]:
    """{"accuracy": v, "accuracy_ci_low": lo, "accuracy_ci_high": hi, ...}: MLflow and KFP take flat scalars."""
    out = {}
    for name, m in result.metrics.items():
        out[name], out[f"{name}_ci_low"], out[f"{name}_ci_high"] = m["value"], m["low"], m["high"]
    return out


def _log_result(result: Result) -> None:
    import mlflow

    from spacenit.evaluation.plots import confusion_figure

    k = result.key
    name = f"{k.model}/{k.probe}/n={'all' if k.n_train == ALL else k.n_train}/seed={k.seed}"
    with mlflow.start_run(run_name=name, nested=True, tags={"spacenit.stage": "evaluate"}):
        mlflow.log_params({"task": k.task, "model": k.model, "probe": k.probe, "n_train": k.n_train, "seed": k.seed,
                           "protocol": result.details["protocol"], "num_test": result.details["num_test"]})  # fmt: skip
        mlflow.log_metrics({m: v for m, v in flat_metrics(result).items() if np.isfinite(v)})
        mlflow.log_dict(result.details, "details.json")
        if "confusion_matrix" in result.details:
            matrix = np.asarray(result.details["confusion_matrix"])
            fig = confusion_figure(matrix, result.details["class_names"], f"{k.task}: {k.model} {k.probe}")
            mlflow.log_figure(fig, "confusion_matrix.png")
