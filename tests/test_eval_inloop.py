"""The in-loop kNN callback, driven through its hooks as a trainer does, logging to a real MLflow store."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
import torch
from accelerate import PartialState
from mlflow.tracking import MlflowClient

from spacenit.data.loader import GeoTileDataset, collate
from spacenit.evaluation.datasets import task_from_dataset
from spacenit.evaluation.inloop import KnnProbeCallback
from spacenit.evaluation.knn import knn_scores
from spacenit.train.checkpoint import load_checkpoint


def reference_accuracy(model, meta, dataset_dir: Path) -> float:
    """Embed the dataset's train/test split with the current weights; kNN accuracy on test."""
    task = task_from_dataset(dataset_dir)
    batch = collate([GeoTileDataset(dataset_dir, meta.stats)[i] for i in range(len(task.ids))])
    with torch.no_grad():
        x = model.embed(batch["images"], batch["months"], meta.patch_size).numpy()
    train = np.array([s in ("train", "val") for s in task.splits])
    scores = knn_scores(x[train], task.targets[train], x[~train], k=20, num_classes=task.num_classes)
    return float((scores.argmax(1) == task.targets[~train]).mean())


def test_knn_callback_runs_every_n_steps_and_logs_to_the_active_run(pretrained, synthetic_dataset: Path, tmp_path: Path) -> None:
    result, uri = pretrained
    model, meta = load_checkpoint(result.checkpoint_dir)
    model.train()
    trainer = SimpleNamespace(accelerator=PartialState(), unwrapped=SimpleNamespace(model=model), step=0)
    callback = KnnProbeCallback(synthetic_dataset, meta.stats, patch_size=meta.patch_size, every_n_steps=2, num_resamples=50)
    mlflow.set_tracking_uri(uri)
    experiment_id = MlflowClient(uri).create_experiment("inloop-test", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment_id) as run:
        callback.on_train_start(trainer)
        for step in range(1, 6):
            with torch.no_grad():  # stands in for an optimizer step: the weights move
                for p in model.encoder.parameters():
                    p.add_(0.05 * torch.randn_like(p))
            trainer.step = step
            callback.on_step_end(trainer, step, {"loss": 1.0})
        callback.on_train_end(trainer)
    assert [s for s, _ in callback.history] == [2, 4, 5]
    assert model.training  # handed back in the mode it was in
    model.eval()
    expected = reference_accuracy(model, meta, synthetic_dataset)
    assert callback.history[-1][1]["eval/knn_accuracy"] == pytest.approx(expected)
    logged = MlflowClient(uri).get_metric_history(run.info.run_id, "eval/knn_accuracy")
    assert [m.step for m in logged] == [2, 4, 5] and logged[-1].value == pytest.approx(expected)


def test_knn_callback_can_hand_its_metrics_to_the_next_log(pretrained, synthetic_dataset: Path) -> None:
    result, _ = pretrained
    model, meta = load_checkpoint(result.checkpoint_dir)
    trainer = SimpleNamespace(accelerator=PartialState(), unwrapped=SimpleNamespace(model=model), step=3)
    callback = KnnProbeCallback(synthetic_dataset, meta.stats, patch_size=meta.patch_size, every_n_steps=3, log_to="metrics", num_resamples=20)
    callback.on_train_start(trainer)
    callback.on_step_end(trainer, 3, {})
    logged = {"loss": 0.5}
    callback.on_log(trainer, 3, logged)
    assert set(logged) == {"loss", "eval/knn_accuracy", "eval/knn_accuracy_ci_low", "eval/knn_accuracy_ci_high"}
    again = {}
    callback.on_log(trainer, 4, again)
    assert again == {}  # delivered once
