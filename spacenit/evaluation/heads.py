"""Training a small head on frozen features: AdamW, linear warm-up + cosine decay, a learning-rate sweep.

Shared by the linear and the attentive probe. The learning rate matters more
than anything else for a probe and its best value moves with the features, so
it is chosen per (features, task) on a validation split carved out of the
training set (stratified, seeded), then the head is refit on the whole
training set with that rate. Training sets too small to hold a validation
sample of every class (1-shot) use `default_lr` instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import nn

from spacenit.evaluation.metrics import metrics_for, primary_metric

#: Learning rates tried by the sweep (log-spaced).
DEFAULT_LRS: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)


@dataclass
class HeadConfig:
    """How a probe head is trained."""

    #: Passes over the training set.
    epochs: int = 100
    #: At least this many optimizer steps: small (few-shot) sets get more passes instead of a handful of steps.
    min_steps: int = 300
    #: Samples per step; the whole set when it is smaller.
    batch_size: int = 256
    weight_decay: float = 1e-4
    #: Fraction of the steps with linearly rising learning rate.
    warmup_fraction: float = 0.1
    #: Rates tried by the sweep; one entry means no sweep.
    lrs: tuple[float, ...] = DEFAULT_LRS
    #: Rate used when the training set is too small to hold out a validation split.
    default_lr: float = 1e-3
    #: Fraction of the training set held out to choose the learning rate.
    val_fraction: float = 0.2


#: Below this many input numbers per step, training runs on one thread: for tiny matrices the
#: thread pool's synchronization costs more than it saves, and far more on a busy machine.
SINGLE_THREAD_BELOW = 2_000_000


@contextmanager
def threads_for(batch_numel: int) -> Iterator[None]:
    """Use one intra-op thread for small batches, restoring the previous setting afterwards."""
    previous = torch.get_num_threads()
    if batch_numel < SINGLE_THREAD_BELOW:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _loss_fn(multilabel: bool) -> nn.Module:
    return nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss()


def train_head(head: nn.Module, inputs: torch.Tensor, targets: np.ndarray, *, lr: float, config: HeadConfig, seed: int) -> nn.Module:
    """Fit `head` on (inputs (N, ...), targets (N,) int or (N, C) 0/1) and return it in eval mode."""
    multilabel = targets.ndim == 2
    y = torch.as_tensor(targets, dtype=torch.float32 if multilabel else torch.long)
    loss_fn = _loss_fn(multilabel)
    n = len(inputs)
    batch = min(config.batch_size, n)
    steps_per_epoch = math.ceil(n / batch)
    epochs = max(config.epochs, math.ceil(config.min_steps / steps_per_epoch))
    total = epochs * steps_per_epoch
    warmup = max(1, int(config.warmup_fraction * total))
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(total - warmup, 1)))
    )
    generator = torch.Generator().manual_seed(seed)
    head.train()
    with threads_for(batch * inputs[0].numel()):
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, batch):
                idx = order[start : start + batch]
                if len(idx) < 2 and n >= 2:
                    continue  # BatchNorm cannot train on a single sample
                loss = loss_fn(head(inputs[idx]), y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
    return head.eval()


def predict_scores(head: nn.Module, inputs: torch.Tensor, multilabel: bool) -> np.ndarray:
    """Class probabilities (softmax) or label probabilities (sigmoid), (N, C)."""
    with torch.no_grad():
        logits = head(inputs)
    return (logits.sigmoid() if multilabel else logits.softmax(dim=1)).numpy()


def _validation_split(targets: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    n = len(targets)
    idx = np.arange(n)
    if targets.ndim == 1:
        counts = np.bincount(targets)
        present = counts[counts > 0]
        n_val = max(int(round(fraction * n)), len(present))
        if present.min() < 2 or n - n_val < len(present):
            return None
        return tuple(train_test_split(idx, test_size=n_val, random_state=seed, stratify=targets))  # type: ignore[return-value]
    if n < 10:
        return None
    return tuple(train_test_split(idx, test_size=fraction, random_state=seed))  # type: ignore[return-value]


def fit_with_lr_sweep(
    make_head: Callable[[], nn.Module],
    inputs: torch.Tensor,
    targets: np.ndarray,
    *,
    config: HeadConfig,
    seed: int,
) -> tuple[nn.Module, float]:
    """Choose the learning rate on a validation split, refit on everything; returns (head, lr)."""
    lr = config.default_lr
    split = _validation_split(targets, config.val_fraction, seed) if len(config.lrs) > 1 else None
    if split is not None:
        tr, va = split
        multilabel = targets.ndim == 2
        key = primary_metric(multilabel)
        best = -math.inf
        for candidate in config.lrs:
            torch.manual_seed(seed)
            head = train_head(make_head(), inputs[tr], targets[tr], lr=candidate, config=config, seed=seed)
            score = metrics_for(targets[va], predict_scores(head, inputs[va], multilabel))[key]
            if score > best:  # ties keep the smaller rate
                best, lr = score, candidate
    elif len(config.lrs) == 1:
        lr = config.lrs[0]
    torch.manual_seed(seed)
    return train_head(make_head(), inputs, targets, lr=lr, config=config, seed=seed), lr
