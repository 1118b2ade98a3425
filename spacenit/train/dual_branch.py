"""Dual branch (spec section 2.4, "DualBranch"): latent prediction and pixel reconstruction at once.

One online encoder pass over the visible tokens feeds two decoders: the
model's latent predictor (against the EMA target encoder, with the
contrastive and uniformity terms of `LatentPrediction`) and the pixel
decoder of `AutoEncoder`. The loss is the weighted sum of both branches.
"""

from __future__ import annotations

import torch

from spacenit.arch.models import SpaceNitModel
from spacenit.data.masking import MaskingStrategy
from spacenit.train.autoencoder import PixelBranch
from spacenit.train.module import ObjectiveConfig
from spacenit.train.objectives import LatentPrediction


class DualBranch(LatentPrediction):
    def __init__(self, model: SpaceNitModel, config: ObjectiveConfig | None = None, masking: MaskingStrategy | None = None,
                 *, total_steps: int = 1000) -> None:  # fmt: skip
        config = config or ObjectiveConfig(name="dual_branch")
        super().__init__(model, config, masking, total_steps=total_steps)
        self.pixel = PixelBranch(model, config)

    def forward(self, batch: dict, patch_size: int, generator: torch.Generator, step: int = 0) -> dict[str, torch.Tensor]:
        tok = self.model.encoder.tokenizer(batch["images"], batch["months"], patch_size, batch.get("gsd_m"))
        visible, predict = self.mask(tok, generator, step)
        encoded, _, encoded_layout, registers = self.model.encoder.encode_with_registers(tok, visible)
        out = self.latent_terms(batch, tok, encoded, encoded_layout, visible, predict, patch_size)
        recon = self.pixel(tok, encoded, visible, predict, registers)
        out["reconstruction_loss"] = recon
        out["loss"] = out.pop("weighted_loss") + self.config.reconstruction_weight * recon
        return out
