"""Latent prediction (spec section 2.4): predict an EMA target encoder's latents at masked tokens.

The online encoder sees the visible tokens; the predictor places mask tokens
at the positions to predict; the target encoder (an exponential moving
average of the online encoder, no gradients) encodes every present token.
Loss: smooth L1 between predictions and layer-normalized targets, over the
predicted tokens only. Absent tokens are never visible and never predicted.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from spacenit.arch.models import SpaceNitModel


def random_visibility(absent: torch.Tensor, mask_ratio: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, hide `mask_ratio` of the present tokens.

    absent (B, N) -> (visible, predict), both (B, N) bool, disjoint, never absent.
    At least one token stays visible and one is predicted when two are present.
    """
    present = ~absent
    n_present = present.sum(dim=1, keepdim=True)
    n_visible = (n_present.float() * (1.0 - mask_ratio)).round().long().clamp(min=1)
    n_visible = torch.minimum(n_visible, (n_present - 1).clamp(min=1))
    scores = torch.rand(absent.shape, generator=generator).to(absent.device)
    scores = scores.masked_fill(absent, 2.0)  # absent tokens sort last
    rank = scores.argsort(dim=1).argsort(dim=1)
    visible = (rank < n_visible) & present
    return visible, present & ~visible


class LatentPrediction(nn.Module):
    def __init__(self, model: SpaceNitModel, mask_ratio: float = 0.5, ema_momentum: float = 0.996,
                 ema_momentum_end: float = 1.0, ema_warmup_steps: int = 1000) -> None:  # fmt: skip
        super().__init__()
        self.model = model
        self.target_encoder = copy.deepcopy(model.encoder).requires_grad_(False)
        self.mask_ratio = mask_ratio
        self.ema_momentum, self.ema_momentum_end, self.ema_warmup_steps = ema_momentum, ema_momentum_end, ema_warmup_steps
        # Persisted so a resumed run continues the momentum schedule where it stopped.
        self.register_buffer("ema_step", torch.zeros((), dtype=torch.long))

    def forward(self, batch: dict, patch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        images, months = batch["images"], batch["months"]
        tok = self.model.encoder.tokenizer(images, months, patch_size)
        visible, predict = random_visibility(tok.absent, self.mask_ratio, generator)
        encoded, _ = self.model.encoder.encode(tok, visible)
        predicted = self.model.predictor(encoded, visible, predict, tok.layout)
        with torch.no_grad():
            target, _, _ = self.target_encoder(images, months, patch_size)
            target = F.layer_norm(target, target.shape[-1:])
        loss = F.smooth_l1_loss(predicted[predict], target[predict])
        return {"loss": loss, "visible_tokens": visible.sum() / visible.shape[0], "predicted_tokens": predict.sum() / predict.shape[0]}

    def momentum(self) -> float:
        frac = min(int(self.ema_step) / max(self.ema_warmup_steps, 1), 1.0)
        return self.ema_momentum + (self.ema_momentum_end - self.ema_momentum) * frac

    @torch.no_grad()
    def update_target(self) -> None:
        m = self.momentum()
        for target, online in zip(self.target_encoder.parameters(), self.model.encoder.parameters(), strict=True):
            target.lerp_(online.detach(), 1.0 - m)
        self.ema_step += 1
