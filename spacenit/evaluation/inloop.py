"""In-loop evaluation (spec section 4.4): a trainer callback that runs a kNN probe, and optionally a
linear probe beside it, every N steps.

The pretraining loss says little about whether features are getting better
for downstream use (a collapsing JEPA can have a falling loss); a kNN probe
on a small labelled set every N steps says it directly, for the price of one
forward pass over that set. The spec's diagram runs a linear probe on the same
features too (`linear=True`): it sees what a kNN misses (features that are
linearly separable but not close in cosine), for the price of training a small
head on the set (`linear.py`'s protocol: a learning rate chosen on a validation
split). `pooling` picks the vector probed ("mean", "cls", "both": `pooling.py`).
Metrics go to the active MLflow run as `eval/knn_accuracy` and
`eval/linear_accuracy` (with their CI bounds) at the training step.

The labelled set is read once, at the start, into memory (it should be
small: hundreds to a few thousand samples). Its sensors are bound to the
model's by band name, so a model pretrained on several sensors can be probed
on a single-sensor benchmark like EuroSAT (`sensor_map`, missing bands = no data).

Hooks run on the main process only (they return at once elsewhere), and
with DDP the other ranks simply wait at the next all-reduce. The results go
to MLflow directly (`log_to="mlflow"`, when a run is active in this process)
or into the metrics dict of the trainer's next `on_log` call (`log_to="metrics"`),
for trainers whose MLflow callback logs through that dict.

Wiring (in the pretraining setup):

    from spacenit.evaluation.inloop import KnnProbeCallback
    callbacks.append(KnnProbeCallback("eval/eurosat-dataset", stats, patch_size=tc.patch_size, every_n_steps=500,
                                      linear=True))
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from spacenit.data.stats import SensorStats
from spacenit.evaluation.bootstrap import bootstrap_metrics
from spacenit.evaluation.datasets import task_from_dataset
from spacenit.evaluation.embed import ModelInputDataset, collate_inputs, to_device
from spacenit.evaluation.heads import HeadConfig
from spacenit.evaluation.inputs import ModelInputs, bind_sensors
from spacenit.evaluation.knn import knn_scores
from spacenit.evaluation.linear import linear_probe_scores
from spacenit.evaluation.pooling import check_pooling, pooled_embeddings
from spacenit.evaluation.splits import holdout_folds

log = logging.getLogger(__name__)


class KnnProbeCallback:
    """Every `every_n_steps` steps (and at the end): kNN (and, with `linear`, linear-probe) accuracy of the
    current encoder on a labelled dataset."""

    def __init__(
        self,
        dataset_dir: str | Path,
        stats: Mapping[str, SensorStats],
        *,
        patch_size: int,
        every_n_steps: int = 500,
        k: int = 20,
        test_fraction: float = 0.3,
        seed: int = 0,
        batch_size: int = 64,
        sensor_map: Mapping[str, str] | None = None,
        prefix: str = "eval/knn",
        num_resamples: int = 200,
        log_to: str = "mlflow",
        linear: bool = False,
        linear_prefix: str = "eval/linear",
        linear_config: HeadConfig | None = None,
        pooling: str = "mean",
    ) -> None:
        if log_to not in ("mlflow", "metrics"):
            raise ValueError(f"log_to must be 'mlflow' or 'metrics', got {log_to!r}")
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.dataset_dir, self.stats = Path(dataset_dir), dict(stats)
        self.patch_size, self.every_n_steps, self.k = patch_size, every_n_steps, k
        self.test_fraction, self.seed, self.batch_size = test_fraction, seed, batch_size
        self.sensor_map, self.prefix, self.num_resamples, self.log_to = sensor_map, prefix, num_resamples, log_to
        self.linear, self.linear_prefix, self.linear_config = linear, linear_prefix, linear_config
        self.pooling = check_pooling(pooling)
        self.history: list[tuple[int, dict[str, float]]] = []
        self._pending: dict[str, float] = {}
        self._batches: list[dict] = []
        self._last_step = -1

    def on_train_start(self, trainer) -> None:
        if not trainer.accelerator.is_main_process:
            return
        model = self._model(trainer)
        check_pooling(self.pooling, model)
        task = task_from_dataset(self.dataset_dir)
        data = ModelInputDataset(self.dataset_dir, self._inputs(model))
        items = [data[i] for i in range(len(data))]
        self._batches = [collate_inputs(items[i : i + self.batch_size]) for i in range(0, len(items), self.batch_size)]
        self._gsd_m = data.reader.info.gsd_m
        self._targets = task.targets
        (self._fold,) = holdout_folds(task.targets, task.splits, test_fraction=self.test_fraction, seed=self.seed)

    def _inputs(self, model) -> ModelInputs:
        from spacenit.data.format import load_dataset_info

        info = load_dataset_info(self.dataset_dir)
        bindings = bind_sensors(model.sensors, {n: s.bands for n, s in info.sensors.items()},
                                sensor_map=self.sensor_map, allow_missing_bands=self.sensor_map is not None)  # fmt: skip
        return ModelInputs(bindings, self.stats)

    @staticmethod
    def _model(trainer):
        """The SpaceNitModel being trained: trainer.unwrapped (or the unwrapped module / objective).model."""
        unwrapped = getattr(trainer, "unwrapped", None)
        if unwrapped is None:
            module = getattr(trainer, "module", None) or trainer.objective
            unwrapped = trainer.accelerator.unwrap_model(module)
        return unwrapped.model

    def on_step_end(self, trainer, step: int, metrics: dict[str, float]) -> None:
        if trainer.accelerator.is_main_process and step % self.every_n_steps == 0:
            self.evaluate(trainer, step)

    def on_log(self, trainer, step: int, metrics: dict[str, float]) -> None:
        metrics.update(self._pending)
        self._pending = {}

    def on_nonfinite(self, trainer, step: int, report: dict) -> None:
        pass

    def on_checkpoint(self, trainer, step: int, path) -> None:
        pass

    def on_train_end(self, trainer) -> None:
        if trainer.accelerator.is_main_process and trainer.step != self._last_step:
            self.evaluate(trainer, trainer.step)

    def evaluate(self, trainer, step: int) -> dict[str, float]:
        """Embed the labelled set with the current weights, probe it, log to MLflow; returns the metrics."""
        model = self._model(trainer)
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        try:
            pooled = [
                pooled_embeddings(model, to_device(b["images"], device), to_device(b["months"], device), self.patch_size,
                                  gsd_m=self._gsd_m, pooling=self.pooling)[0].float().cpu().numpy()
                if self.pooling != "mean" else
                model.embed(to_device(b["images"], device), to_device(b["months"], device), self.patch_size, gsd_m=self._gsd_m)
                .float().cpu().numpy()
                for b in self._batches
            ]  # fmt: skip
        finally:
            model.train(was_training)
        x, y, fold = np.concatenate(pooled), self._targets, self._fold
        num_classes = int(y.max()) + 1
        probes = {self.prefix: knn_scores(x[fold.train], y[fold.train], x[fold.test], k=self.k, num_classes=num_classes)}
        if self.linear:
            probes[self.linear_prefix], _ = linear_probe_scores(x[fold.train], y[fold.train], x[fold.test], num_classes=num_classes,
                                                                seed=self.seed, config=self.linear_config)  # fmt: skip
        result = {}
        for prefix, scores in probes.items():
            est = bootstrap_metrics(y[fold.test], scores, num_resamples=self.num_resamples, seed=self.seed)["accuracy"]
            result.update({f"{prefix}_accuracy": est.value, f"{prefix}_accuracy_ci_low": est.low,
                           f"{prefix}_accuracy_ci_high": est.high})  # fmt: skip
        self.history.append((step, result))
        self._last_step = step
        if self.log_to == "metrics":
            self._pending.update(result)
        else:
            import mlflow

            if mlflow.active_run() is not None:
                mlflow.log_metrics(result, step=step)
        log.info("step %d: %s", step, result)
        return result
