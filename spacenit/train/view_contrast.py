"""Two-view contrast (SimCLR-style), optionally beside latent prediction.

Masked views of one tile share their pixels, so telling samples apart from
them needs no class-level feature (docs/evaluation.md: a tenfold contrastive
weight drove that InfoNCE to 0.02 and the kNN probe nowhere). Here the two
views are different pixels: each is a random crop of the tile
(`objective.view_crop_scale` of its area), resized to the tile's size or
(`objective.view_resize=false`) kept at the native resolution, under a
random D4 symmetry, with each band's gain and offset jittered
(`objective.view_spectral_jitter`, off by default). Both are encoded whole
by the online encoder, mean-pooled exactly as `embed` pools, projected, and
pulled together by a symmetric InfoNCE against the other samples of the
micro-batch; so the pooled embedding itself learns what survives cropping,
rotation and jitter.

With `objective.latent_weight` > 0 the first view is also masked and its
hidden tokens predicted from the EMA target encoder's latents
(`LatentPrediction`), reusing that view's tokens; with 0 the EMA target
is never run.

    objective.name=view_contrast objective.view_weight=1.0 objective.latent_weight=0
"""

from __future__ import annotations

import math

import torch

from spacenit.arch.models import SpaceNitModel
from spacenit.arch.pooling import mean_pool
from spacenit.data.augmentations import augmented_view, spectral_jitter
from spacenit.data.images import as_grids
from spacenit.data.masking import MaskingStrategy
from spacenit.train import losses
from spacenit.train.module import ObjectiveConfig
from spacenit.train.objectives import LatentPrediction


class ViewContrast(LatentPrediction):
    def __init__(self, model: SpaceNitModel, config: ObjectiveConfig | None = None, masking: MaskingStrategy | None = None,
                 *, total_steps: int = 1000) -> None:  # fmt: skip
        config = config or ObjectiveConfig(name="view_contrast")
        super().__init__(model, config, masking, total_steps=total_steps)
        if self.projection is None:
            self.build_projection()
        self._continuous = {s.name for s in model.sensors if not s.categorical}  # what spectral jitter may touch
        if config.latent_weight == 0:
            # Without latent prediction the predictor is not trained; frozen, it stays out of DDP's gradient sync.
            model.predictor.requires_grad_(False)

    def forward(self, batch: dict, patch_size: int, generator: torch.Generator, step: int = 0) -> dict[str, torch.Tensor]:
        c, encoder = self.config, self.model.encoder
        scale = tuple(c.view_crop_scale)
        months, gsd_m = batch["months"], batch.get("gsd_m")
        reference = gsd_m or self.model.config.reference_gsd_m
        images = {s.name: as_grids(batch["images"][s.name], s, reference) for s in self.model.sensors}
        views = [augmented_view(images, generator, scale, resize=c.view_resize, multiple=patch_size) for _ in range(2)]
        views = [spectral_jitter(v, generator, c.view_spectral_jitter, self._continuous) for v in views]
        pooled, toks, tokens = [], [], 0
        for images in views:
            toks.append(tok := encoder.tokenizer(images, months, patch_size, gsd_m))
            encoded, keep, _ = encoder.encode(tok)
            pooled.append(mean_pool(encoded, keep))  # (B, D), as `embed` pools
            tokens = tokens + keep.sum().float()
        scale_param = self.logit_scale.clamp(max=math.log(100.0))
        contrast = losses.info_nce(self.projection(pooled[0]), self.projection(pooled[1]), scale_param)
        out = {"view_loss": contrast, "loss": c.view_weight * contrast, "tokens": tokens}
        if c.latent_weight > 0:
            view, tok = {**batch, "images": views[0]}, toks[0]
            visible, predict = self.mask(tok, generator, step)
            encoded, _, encoded_layout = encoder.encode(tok, visible)
            latent = self.latent_terms(view, tok, encoded, encoded_layout, visible, predict, patch_size)
            out.update(latent, tokens=tokens + latent["tokens"])
            out["loss"] = out["loss"] + out.pop("weighted_loss")
        return out

    def after_optimizer_step(self) -> None:
        if self.config.latent_weight > 0:
            self.update_target()
