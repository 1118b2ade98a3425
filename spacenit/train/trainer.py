"""The training loop, on accelerate; everything optional is a callback.

One optimizer step = `accum_steps` micro-batches on every rank, gradients
synchronized once (DDP `no_sync` on the others), clipped, then the update.
Micro-batch j of step s is masked, augmented and dropout-seeded from
(seed, s, j) alone, so 1 rank with 2 accumulation steps computes what
2 ranks do, and a resumed run what an uninterrupted one does.

A step whose gradient norm is not finite (NaN or inf in a loss, a batch, an
overflow) does not touch the weights, the optimizer or the EMA target; it is
reported to the callbacks (`on_nonfinite`), and the NaN guard decides whether
training goes on. The gradient norm is computed from the all-reduced
gradients, so every rank takes the same decision without extra communication.

Callback hooks, called on every rank in list order (a callback that logs
checks `trainer.accelerator.is_main_process` itself):

    on_train_start(trainer)                        before the first step
    on_step_end(trainer, step, metrics)            after each step; `step` counts finished steps
    on_log(trainer, step, metrics)                 then, every `log_every` steps and at the last:
                                                   metrics averaged over the interval and the ranks
                                                   (mutable: later callbacks see what earlier ones add)
    on_nonfinite(trainer, step, report)            a step was skipped
    on_checkpoint(trainer, step, path)             a training checkpoint was written
    on_train_end(trainer)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device
from torch import nn

from spacenit.train.module import full_tensor

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Training produced non-finite gradients too many times in a row; the weights were never touched."""


class Callback:
    """No-op base: override the hooks you need."""

    def on_train_start(self, trainer: Trainer) -> None: ...
    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None: ...
    def on_log(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None: ...
    def on_nonfinite(self, trainer: Trainer, step: int, report: dict[str, Any]) -> None: ...
    def on_checkpoint(self, trainer: Trainer, step: int, path) -> None: ...
    def on_train_end(self, trainer: Trainer) -> None: ...


#: Module outputs that count things per micro-batch (summed over a step, not averaged).
COUNTERS = ("tokens",)


def micro_batch_seed(seed: int, step: int, micro_index: int) -> int:
    """The seed of everything random about micro-batch `micro_index` of `step` (masks, dropout)."""
    return int(np.random.SeedSequence([seed, step, micro_index, 0xA5]).generate_state(1, dtype=np.uint64)[0] >> 1)


class Trainer:
    def __init__(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        make_loader: Callable[[int], Iterable[dict]],
        accelerator: Accelerator,
        *,
        total_steps: int,
        accum_steps: int,
        seed: int,
        max_grad_norm: float | None,
        log_every: int = 10,
        callbacks: list[Callback] | tuple = (),
    ) -> None:
        """`module` and `optimizer` come from `accelerator.prepare`; the scheduler does not (accelerate
        would step it once per process). `make_loader(start_step)` gives this rank's micro-batches."""
        self.module, self.optimizer, self.scheduler = module, optimizer, scheduler
        self.make_loader, self.accelerator = make_loader, accelerator
        self.total_steps, self.accum_steps, self.seed = total_steps, accum_steps, seed
        self.max_grad_norm, self.log_every = max_grad_norm, log_every
        self.callbacks = list(callbacks)
        self.step = 0  # finished optimizer steps; a resume sets it
        self.nonfinite_steps: list[int] = []
        self.last_metrics: dict[str, float] = {}
        self._params = [p for p in module.parameters() if p.requires_grad]
        self._sums: dict[str, torch.Tensor] = {}
        self._steps_in_interval = 0
        self._last_lr = float("nan")

    @property
    def unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.module)

    def is_log_step(self, step: int) -> bool:
        return step % self.log_every == 0 or step == self.total_steps

    def emit(self, event: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self, *args)

    def fit(self) -> dict[str, float]:
        self.emit("on_train_start")
        batches = iter(self.make_loader(self.step))
        while self.step < self.total_steps:
            self.run_step(batches)
        self.emit("on_train_end")
        return self.last_metrics

    def run_step(self, batches: Iterator[dict]) -> None:
        """One step with its callbacks: the unit `fit` repeats (and benchmarks time)."""
        metrics = self.train_step(batches)
        self.step += 1
        self.emit("on_step_end", self.step, metrics)
        if self.is_log_step(self.step):
            self.last_metrics = self._interval_metrics()
            self.emit("on_log", self.step, self.last_metrics)

    def train_step(self, batches: Iterator[dict]) -> dict[str, float]:
        """One optimizer step over `accum_steps` micro-batches; returns this rank's raw step metrics."""
        acc, module = self.accelerator, self.module
        module.train()
        step_sums: dict[str, torch.Tensor] = {}
        plans = []
        for a in range(self.accum_steps):
            batch = next(batches)
            if batch["step"] != self.step:
                raise RuntimeError(f"the loader is at step {batch['step']}, the trainer at {self.step}")
            plans.append({k: batch[k] for k in ("micro_index", "patch_size")} | {"index": batch["index"].tolist()})
            seed = micro_batch_seed(self.seed, self.step, batch["micro_index"])
            torch.manual_seed(seed)  # dropout and band dropout, identical on 1 rank or N
            masks = torch.Generator().manual_seed(seed)
            batch = send_to_device(batch, acc.device, non_blocking=True)
            sync = a == self.accum_steps - 1
            with contextlib.nullcontext() if sync else acc.no_sync(module):
                with acc.autocast():
                    out = module(batch, batch["patch_size"], masks, self.step)
                acc.backward(out["loss"] / self.accum_steps)
            for k, v in out.items():
                # Losses average over micro-batches; counters (tokens) add up.
                v = v.detach().float() if k in COUNTERS else v.detach().float() / self.accum_steps
                step_sums[k] = step_sums.get(k, 0.0) + v
        grad_norm = full_tensor(acc.clip_grad_norm_(self._params, self.max_grad_norm or float("inf")))
        finite = bool(torch.isfinite(grad_norm))
        if finite:
            self.optimizer.step()
            self.unwrapped.after_optimizer_step()
        self.optimizer.zero_grad(set_to_none=True)
        # The rate this step used; muP groups run at multiples (`lr_scale`) of it.
        lr = self._last_lr = self.scheduler.get_last_lr()[0] / self.optimizer.param_groups[0].get("lr_scale", 1.0)
        self.scheduler.step()
        step_metrics = {"loss": float(step_sums["loss"]), "grad_norm": float(grad_norm), "lr": lr}
        if not finite:
            report = {"step": self.step + 1, "rank": acc.process_index, "micro_batches": plans,
                      "losses": {k: float(v) for k, v in step_sums.items()}, "grad_norm": float(grad_norm)}  # fmt: skip
            self.nonfinite_steps.append(self.step + 1)
            log.warning("step %d: gradient norm %s, update skipped (micro-batches %s)", self.step + 1, float(grad_norm), plans)
            self.emit("on_nonfinite", self.step + 1, report)
            return step_metrics
        step_sums["grad_norm"] = grad_norm.detach().float()
        step_sums["samples"] = torch.tensor(float(sum(len(p["index"]) for p in plans)), device=acc.device)
        step_sums["patch_size"] = torch.tensor(float(plans[0]["patch_size"]), device=acc.device)
        for k, v in step_sums.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        self._steps_in_interval += 1
        return step_metrics

    def _interval_metrics(self) -> dict[str, float]:
        """Means over the finite steps since the last log and over ranks; counters summed over ranks."""
        keys = sorted(self._sums)
        metrics: dict[str, float] = {}
        if keys:
            stacked = torch.stack([torch.as_tensor(self._sums[k], device=self.accelerator.device) for k in keys])
            mean = self.accelerator.reduce(stacked, "mean") / max(self._steps_in_interval, 1)
            world = self.accelerator.num_processes
            for k, v in zip(keys, mean.tolist(), strict=True):
                # Counters: global totals per step (every rank did its share).
                metrics[k] = v * world if k in ("samples", *COUNTERS) else v
        metrics["lr"] = self._last_lr
        metrics["nonfinite_steps"] = float(len(self.nonfinite_steps))
        metrics.update(self.unwrapped.scalars())
        metrics["interval_steps"] = float(self._steps_in_interval)
        self._sums, self._steps_in_interval = {}, 0
        return metrics
