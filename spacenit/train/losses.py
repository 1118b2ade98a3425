"""Losses of the pretraining objectives (spec section 2.4; bandset-merge-experiments.md).

All work in float32 whatever the autocast dtype, take boolean token masks
(B, N) rather than pre-selected tensors, and return a zero that still carries
the graph when nothing is selected, so an empty mask never produces NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _empty(x: torch.Tensor) -> torch.Tensor:
    return x.float().sum() * 0.0


def latent_smooth_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Smooth L1 (Huber, beta 1) between predicted and target latents over the masked tokens.

    pred, target (B, N, D); mask (B, N).
    """
    if not mask.any():
        return _empty(pred)
    return F.smooth_l1_loss(pred[mask].float(), target[mask].float())


def _gather_selected(x: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """The first k selected tokens of each sample, in order: (B, N, D), (B, N) -> (B, k, D)."""
    index = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :k]
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def patch_discrimination(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, group_of_token: torch.Tensor,
                         *, tau: float = 0.1, same_target_threshold: float | None = None,
                         masked_negative_groups: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Contrastive patch discrimination, per sample and per token group (sensor).

    Inside each sample and group, every predicted token must pick its own
    target among the targets of the other predicted tokens (InfoNCE over
    cosine similarities / tau). With `same_target_threshold`, the
    masked-negatives variant: a negative whose target is nearly the same as the
    positive's (cosine above the threshold, e.g. a decode-only sensor that is
    constant over the tile) is removed instead of being pushed away. It applies
    to the groups flagged in `masked_negative_groups` (default: all).

    pred, target (B, N, D); mask (B, N); group_of_token (N,) in [0, G).
    Returns the sum over groups of the mean over samples of the mean over tokens, times 2 tau.
    """
    total = _empty(pred)
    B = pred.shape[0]
    for g in torch.unique(group_of_token).tolist():
        sel = mask & (group_of_token == g)[None, :]  # (B, N)
        count = sel.sum(1)  # (B,)
        k = int(count.max())
        if k == 0:
            continue
        p = F.normalize(_gather_selected(pred, sel, k).float(), dim=-1)  # (B, k, D)
        t = F.normalize(_gather_selected(target, sel, k).float(), dim=-1)
        valid = torch.arange(k, device=pred.device)[None, :] < count[:, None]  # (B, k)
        scores = p @ t.transpose(1, 2) / tau  # (B, k, k)
        very_low = torch.finfo(scores.dtype).min
        drop = ~valid[:, None, :]
        if same_target_threshold is not None and (masked_negative_groups is None or bool(masked_negative_groups[g])):
            same = (t @ t.transpose(1, 2)) > same_target_threshold
            drop = drop | (same & ~torch.eye(k, dtype=torch.bool, device=pred.device))
        scores = scores.masked_fill(drop, very_low)
        labels = torch.arange(k, device=pred.device).expand(B, k)
        per_token = F.cross_entropy(scores.reshape(B * k, k), labels.reshape(-1), reduction="none").reshape(B, k)
        per_sample = (per_token * valid).sum(1) / count.clamp(min=1)
        has = count > 0
        total = total + per_sample[has].mean() * (2 * tau)
    return total


def info_nce(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between L2-normalized rows of a and b (B, D); row i of a pairs with row i of b.

    `logit_scale` is the log inverse temperature, a scalar or shape (1,)."""
    logit_scale = logit_scale.reshape(())
    if a.shape[0] < 2:
        return _empty(a) + logit_scale * 0.0
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    logits = logit_scale.exp() * a @ b.T
    labels = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def gaussian_uniformity(z: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """Wang & Isola's uniformity: log E[exp(-t |zi - zj|^2)] over pairs of L2-normalized rows."""
    if z.shape[0] < 2:
        return _empty(z)
    z = F.normalize(z.float(), dim=-1)
    return torch.pdist(z, p=2).pow(2).mul(-t).exp().mean().log()


def reconstruction(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, *, kind: str = "mse",
                   normalize_target: bool = True, eps: float = 1e-6) -> torch.Tensor:  # fmt: skip
    """Pixel loss of predicted patches.

    pred, target (M, P) for M patches of P values each; valid (M, P) marks real
    (non-sentinel) pixels, the only ones that count. With `normalize_target`,
    each target patch is standardized by its own mean and std (MAE/Pixio).
    """
    if pred.numel() == 0 or not valid.any():
        return _empty(pred)
    pred, target, w = pred.float(), target.float(), valid.float()
    if normalize_target:
        n = w.sum(-1, keepdim=True).clamp(min=1)
        mean = (target * w).sum(-1, keepdim=True) / n
        var = ((target - mean).pow(2) * w).sum(-1, keepdim=True) / n
        target = (target - mean) / (var + eps).sqrt()
    target = torch.where(valid, target, torch.zeros_like(target))
    if kind == "mse":
        err = (pred - target).pow(2)
    elif kind == "l1":
        err = (pred - target).abs()
    elif kind == "smooth_l1":
        err = F.smooth_l1_loss(pred, target, reduction="none")
    else:
        raise ValueError(f"unknown reconstruction loss {kind!r}; use mse, l1 or smooth_l1")
    return (err * w).sum() / w.sum()
