"""Fine-tuning: the whole encoder plus a linear head on its mean-pooled tokens, trained end to end.

Frozen-feature probes measure what pretraining put in the features;
fine-tuning measures how good a starting point the weights are. The encoder
is a copy (the adapter's model is untouched) trained with a 10x lower
learning rate than the head, AdamW, warm-up + cosine. No augmentation, no
layer-wise decay: a plain, reproducible protocol rather than a tuned one.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from spacenit.arch.models import SpaceNitModel
from spacenit.evaluation.embed import ModelInputDataset, collate_inputs


@dataclass
class FinetuneConfig:
    epochs: int = 10
    batch_size: int = 16
    head_lr: float = 1e-3
    #: Encoder learning rate; 10x below the head's so pretrained features are adapted, not overwritten.
    encoder_lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1


class FinetuneModel(nn.Module):
    def __init__(self, model: SpaceNitModel, num_classes: int) -> None:
        super().__init__()
        self.encoder = copy.deepcopy(model.encoder)
        self.head = nn.Sequential(nn.LayerNorm(model.config.dim), nn.Linear(model.config.dim, num_classes))

    def forward(self, images, months, patch_size: int) -> torch.Tensor:
        encoded, keep, _ = self.encoder(images, months, patch_size)  # (B, N, D), (B, N)
        weight = keep.unsqueeze(-1).to(encoded.dtype)
        pooled = (encoded * weight).sum(1) / weight.sum(1).clamp_min(1.0)  # (B, D)
        return self.head(pooled)  # (B, C)


def finetune_scores(
    model: SpaceNitModel,
    patch_size: int,
    dataset: ModelInputDataset,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    targets: np.ndarray,
    *,
    num_classes: int,
    seed: int = 0,
    config: FinetuneConfig | None = None,
) -> np.ndarray:
    """Train on `train_idx`, return class (softmax) or label (sigmoid) probabilities on `test_idx`."""
    config = config or FinetuneConfig()
    multilabel = targets.ndim == 2
    torch.manual_seed(seed)
    net = FinetuneModel(model, num_classes)
    optimizer = torch.optim.AdamW(
        [{"params": net.encoder.parameters(), "lr": config.encoder_lr}, {"params": net.head.parameters(), "lr": config.head_lr}],
        weight_decay=config.weight_decay,
    )
    loader = DataLoader(Subset(dataset, train_idx.tolist()), batch_size=min(config.batch_size, len(train_idx)), shuffle=True,
                        collate_fn=collate_inputs, generator=torch.Generator().manual_seed(seed))  # fmt: skip
    total = config.epochs * len(loader)
    warmup = max(1, int(config.warmup_fraction * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(total - warmup, 1)))
    )
    loss_fn = nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss()
    y_all = torch.as_tensor(targets, dtype=torch.float32 if multilabel else torch.long)
    net.train()
    for _ in range(config.epochs):
        for batch in loader:
            logits = net(batch["images"], batch["months"], patch_size)
            loss = loss_fn(logits, y_all[batch["index"]])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            schedule.step()
    net.eval()
    scores = []
    test_loader = DataLoader(Subset(dataset, test_idx.tolist()), batch_size=config.batch_size * 2, collate_fn=collate_inputs)
    with torch.no_grad():
        for batch in test_loader:
            logits = net(batch["images"], batch["months"], patch_size)
            scores.append((logits.sigmoid() if multilabel else logits.softmax(dim=1)).numpy())
    return np.concatenate(scores)
