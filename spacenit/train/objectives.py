"""Latent prediction (spec section 2.4, "LatentPredictor"): predict an EMA target encoder's latents.

The online encoder sees the visible tokens; the predictor places mask tokens
at the positions to predict; the target encoder (an exponential moving
average of the online encoder, no gradients) encodes every present token.
Losses, each with its weight in `ObjectiveConfig`:

- latent: smooth L1 between predictions and layer-normalized targets, or
  patch discrimination (InfoNCE among the predicted tokens of a sample and
  sensor), optionally with masked negatives (bandset-merge-experiments.md);
- contrastive: InfoNCE between the mean-pooled, projected, L2-normalized
  predictions and targets of the batch, with a learnable temperature;
- uniformity: Gaussian potential of the online projections.

The EMA momentum warms up from `ema_momentum` to `ema_momentum_end`; its step
is a persisted buffer, so a resumed run continues the schedule.

Bandset merge (bandset-merge-experiments.md, "Target encoder"): the target
encoder is a copy of the online one with merging and band dropout turned off,
so it gives one target per bandset; its merge modules stay, so the EMA update
pairs parameters one to one. Hybrid patch size (hybrid-patch-size-plan.md):
with `output_patch_size` set, the predictions are made at the processing
patch size, upsampled to the output patch size (masks nearest), and compared
with a target encoded at the output patch size.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from spacenit.arch.heads import ProjectionHead
from spacenit.arch.models import SpaceNitModel
from spacenit.arch.pooling import mean_pool
from spacenit.arch.upsampler import upsample_mask
from spacenit.data.masking import MaskingStrategy, assign_by_rank
from spacenit.train import losses
from spacenit.train.module import ObjectiveConfig, TrainModule, full_tensor
from spacenit.train.schedules import linear_warmup


def random_visibility(absent: torch.Tensor, mask_ratio: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, hide `mask_ratio` of the present tokens and predict them all.

    absent (B, N) -> (visible, predict), both (B, N) bool, disjoint, never absent.
    At least one token stays visible and one is predicted when two are present.
    """
    present = ~absent
    states = assign_by_rank(torch.rand(absent.shape, generator=generator), present.cpu(), 1.0 - mask_ratio, mask_ratio)
    states = states.to(absent.device)
    return states == 0, present & (states != 0)


class LatentPrediction(TrainModule):
    def __init__(self, model: SpaceNitModel, config: ObjectiveConfig | None = None, masking: MaskingStrategy | None = None,
                 *, total_steps: int = 1000) -> None:  # fmt: skip
        config = config or ObjectiveConfig()
        super().__init__(model, config, masking, total_steps)
        self.target_encoder = copy.deepcopy(model.encoder).requires_grad_(False)
        self.target_encoder.merge_enabled = False
        self.target_encoder.tokenizer.band_dropout_enabled = False
        self.ema_warmup_steps = config.ema_warmup_steps or total_steps
        # Persisted so a resumed run continues the momentum schedule where it stopped.
        self.register_buffer("ema_step", torch.zeros((), dtype=torch.long))
        self.projection = None
        if config.contrastive_weight > 0 or config.uniformity_weight > 0:
            self.build_projection()
        sensor_names = [s.name for s in model.sensors]
        masked = config.mask_negatives_for_sensors
        self.register_buffer(
            "masked_negative_sensors", torch.tensor([masked is None or s in masked for s in sensor_names]), persistent=False
        )
        self._sensor_index = {s: i for i, s in enumerate(sensor_names)}

    def build_projection(self) -> None:
        """The projection head of the pooled InfoNCE and uniformity terms, and its temperature."""
        c = self.config
        self.projection = ProjectionHead(self.model.config.dim, self.model.config.dim, c.projection_dim, normalize=True)
        # CLIP-style log inverse temperature; exp() of it multiplies the cosine similarities.
        # Shape (1,), not a scalar: FSDP2 cannot shard 0-d parameters.
        scale = torch.tensor([math.log(1.0 / c.contrastive_temperature)])
        self.logit_scale = nn.Parameter(scale, requires_grad=c.learn_temperature)

    def forward(self, batch: dict, patch_size: int, generator: torch.Generator, step: int = 0) -> dict[str, torch.Tensor]:
        images, months = batch["images"], batch["months"]
        tok = self.model.encoder.tokenizer(images, months, patch_size, batch.get("gsd_m"))
        visible, predict = self.mask(tok, generator, step)
        encoded, _, encoded_layout = self.model.encoder.encode(tok, visible)
        out = self.latent_terms(batch, tok, encoded, encoded_layout, visible, predict, patch_size)
        out["loss"] = out.pop("weighted_loss")
        return out

    def latent_terms(self, batch, tok, encoded, encoded_layout, visible, predict, patch_size) -> dict[str, torch.Tensor]:
        """The latent-prediction losses from one online encoder pass; "weighted_loss" is their weighted sum."""
        c, encoder = self.config, self.model.encoder
        predicted = self.model.predictor(encoded, visible, predict, tok.layout, encoded_layout)  # (B, N, D)
        out = {"visible_tokens": visible.sum() / visible.shape[0], "predicted_tokens": predict.sum() / predict.shape[0],
               "tokens": (~tok.absent).sum().float()}  # fmt: skip
        layout = tok.layout
        target_patch_size = self.model.config.output_patch_size or patch_size
        if target_patch_size != patch_size:  # hybrid: upsample the predictions, not the predictor's input
            predicted, layout = encoder.upsampler(predicted, tok.layout, target_patch_size)  # (B, N_fine, D)
            predict = upsample_mask(predict, tok.layout, target_patch_size)  # (B, N_fine)
        with torch.no_grad():
            target, target_keep, _ = self.target_encoder(batch["images"], batch["months"], target_patch_size,
                                                         gsd_m=batch.get("gsd_m"))  # fmt: skip
            target = F.layer_norm(target.float(), target.shape[-1:])
        predict = predict & target_keep  # never a target without data
        if c.latent_loss == "smooth_l1":
            latent = losses.latent_smooth_l1(predicted, target, predict)
        else:
            sensor_of_group = torch.tensor([self._sensor_index[b.sensor] for b in layout.blocks for _ in b.groups])
            sensor_of_token = sensor_of_group[layout.group_index(torch.device("cpu"))].to(predict.device)
            latent = losses.patch_discrimination(
                predicted, target, predict, sensor_of_token, tau=c.patch_discrimination_tau,
                same_target_threshold=c.same_target_threshold, masked_negative_groups=self.masked_negative_sensors,
            )  # fmt: skip
        out["latent_loss"] = latent
        total = c.latent_weight * latent
        if self.projection is not None:
            online = self.projection(mean_pool(predicted.float(), predict))  # (B, P)
            with torch.no_grad():
                pooled_target = mean_pool(target, predict)
            target_proj = self.projection(pooled_target)
            if c.contrastive_weight > 0:
                contrastive = losses.info_nce(online, target_proj, self.logit_scale.clamp(max=math.log(100.0)))
                out["contrastive_loss"] = contrastive
                total = total + c.contrastive_weight * contrastive
            if c.uniformity_weight > 0:
                uniformity = losses.gaussian_uniformity(online, c.uniformity_t)
                out["uniformity_loss"] = uniformity
                total = total + c.uniformity_weight * uniformity
        out["weighted_loss"] = total
        return out

    def momentum(self) -> float:
        return linear_warmup(self.config.ema_momentum, self.config.ema_momentum_end, self.ema_warmup_steps, int(self.ema_step))

    @torch.no_grad()
    def update_target(self) -> None:
        m = self.momentum()
        for target, online in zip(self.target_encoder.parameters(), self.model.encoder.parameters(), strict=True):
            target.lerp_(online.detach(), 1.0 - m)
        self.ema_step += 1

    def after_optimizer_step(self) -> None:
        self.update_target()

    def scalars(self) -> dict[str, float]:
        out = {"ema_momentum": self.momentum()}
        if self.projection is not None and self.config.contrastive_weight > 0:
            out["temperature"] = float(1.0 / full_tensor(self.logit_scale.detach()).clamp(max=math.log(100.0)).exp())
        return out
