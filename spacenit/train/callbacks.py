"""Trainer callbacks: everything optional about a training run lives here, not in the loop."""

from __future__ import annotations

from typing import Any

import mlflow
from tqdm import tqdm

from spacenit.train.tracking import flatten


class ProgressBar:
    def __init__(self, total: int) -> None:
        self.bar = tqdm(total=total, desc="pretrain", unit="step")

    def on_train_start(self, trainer) -> None:
        pass

    def on_step_end(self, trainer, step: int, metrics: dict[str, float]) -> None:
        self.bar.update()
        self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}")

    def on_train_end(self, trainer) -> None:
        self.bar.close()


class MLflowCallback:
    """Logs the resolved config as params and the step metrics, from the main process only."""

    def __init__(self, config_dict: dict[str, Any], log_every: int = 10) -> None:
        self.config_dict = config_dict
        self.log_every = log_every

    def on_train_start(self, trainer) -> None:
        mlflow.log_params(flatten(self.config_dict))
        mlflow.log_params({"world_size": trainer.accelerator.num_processes})
        mlflow.log_dict(self.config_dict, "config.json")

    def on_step_end(self, trainer, step: int, metrics: dict[str, float]) -> None:
        if step % self.log_every == 0 or step == trainer.total_steps:
            mlflow.log_metrics({f"train/{k}": v for k, v in metrics.items()}, step=step)

    def on_train_end(self, trainer) -> None:
        pass
