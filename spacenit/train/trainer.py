"""One training loop, driven by accelerate; everything optional is a callback.

Callbacks get `on_train_start(trainer)`, `on_step_end(trainer, step, metrics)`
and `on_train_end(trainer)`, on the main process only.
"""

from __future__ import annotations

import math
import time
from typing import Protocol

import torch
from accelerate import Accelerator
from torch import nn


class Callback(Protocol):
    def on_train_start(self, trainer: Trainer) -> None: ...
    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None: ...
    def on_train_end(self, trainer: Trainer) -> None: ...


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stops before the weights are touched."""


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on norms, biases and embeddings (1-D parameters, tables)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "embed" in name.rsplit(".", 1)[-1] or name.endswith("mask_token") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float = 0.1):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


class Trainer:
    def __init__(
        self,
        objective: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        dataloader,
        accelerator: Accelerator,
        *,
        total_steps: int,
        patch_size: int,
        seed: int,
        max_grad_norm: float,
        callbacks: list[Callback] | tuple = (),
    ) -> None:
        self.objective, self.optimizer, self.scheduler = objective, optimizer, scheduler
        self.dataloader, self.accelerator = dataloader, accelerator
        self.total_steps, self.patch_size, self.seed = total_steps, patch_size, seed
        self.max_grad_norm = max_grad_norm
        self.callbacks = list(callbacks)
        self.step = 0
        self.last_metrics: dict[str, float] = {}

    def _emit(self, event: str, *args) -> None:
        if self.accelerator.is_main_process:
            for cb in self.callbacks:
                getattr(cb, event)(self, *args)

    def _mask_generator(self) -> torch.Generator:
        # Masks depend only on (seed, step, rank): reproducible, and different per rank.
        rank = self.accelerator.process_index
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.step * 1_009 + rank)

    def fit(self) -> dict[str, float]:
        objective = self.accelerator.unwrap_model(self.objective)
        params = [p for p in self.objective.parameters() if p.requires_grad]
        self._emit("on_train_start")
        epoch = 0
        tick = time.perf_counter()
        while self.step < self.total_steps:
            if hasattr(self.dataloader, "set_epoch"):
                self.dataloader.set_epoch(epoch)
            for batch in self.dataloader:
                self.step += 1
                self.objective.train()
                with self.accelerator.autocast():
                    out = self.objective(batch, self.patch_size, self._mask_generator())
                loss = out["loss"]
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(f"loss is {loss.item()} at step {self.step}; stopping before the update")
                self.accelerator.backward(loss)
                grad_norm = self.accelerator.clip_grad_norm_(params, self.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                objective.update_target()

                now = time.perf_counter()
                batch_size = next(iter(batch["images"].values())).shape[0] * self.accelerator.num_processes
                metrics = {
                    "loss": self.accelerator.reduce(loss.detach(), "mean").item(),
                    "lr": self.scheduler.get_last_lr()[0],
                    "grad_norm": float(grad_norm),
                    "ema_momentum": objective.momentum(),
                    "samples_per_s": batch_size / max(now - tick, 1e-9),
                }
                tick = now
                self.last_metrics = metrics
                self._emit("on_step_end", self.step, metrics)
                if self.step >= self.total_steps:
                    break
            epoch += 1
        self._emit("on_train_end")
        return self.last_metrics
