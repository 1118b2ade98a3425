"""TrainModule: one objective around a `SpaceNitModel` (spec section 2.4).

A TrainModule owns the model and whatever trains beside it (EMA target
encoder, heads, learnable temperature). The Trainer calls, per micro-batch,

    out = module(batch, patch_size, generator, step)   # {"loss": ..., other scalars}

and after every optimizer step `after_optimizer_step()`; `scalars()` are
logged (temperature, EMA momentum). Masks are drawn from `generator`, seeded
per step and micro-batch by the Trainer, so a micro-batch is masked the same
way on 1 rank or N, and after a resume.

    module = ObjectiveConfig(name="dual_branch").build(model, MaskingConfig().build(), total_steps=1000)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from spacenit.config import Config, ConfigError
from spacenit.data.masking import PREDICTED, VISIBLE, MaskingStrategy, RandomMasking, TokenInfo


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole value of `t`: under FSDP2, parameters outside forward and the gradient norm
    are DTensors (a rank may hold an empty shard of a 1-element one). Collective: every
    rank must call it."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


@dataclass
class ObjectiveConfig(Config):
    """Which objective, and the weights and settings of its losses."""

    #: latent_prediction (EMA target, spec "LatentPredictor"), autoencoder (pixels), dual_branch (both),
    #: view_contrast (InfoNCE between two augmented views, optionally with latent prediction).
    name: str = "latent_prediction"
    # --- latent prediction
    #: "smooth_l1" (regress layer-normed target latents) or "patch_discrimination" (contrast them).
    latent_loss: str = "smooth_l1"
    latent_weight: float = 1.0
    #: Softmax temperature of patch discrimination.
    patch_discrimination_tau: float = 0.1
    #: Masked negatives: drop negatives whose target is this similar (cosine) to the positive's; None = off.
    same_target_threshold: float | None = None
    #: Sensors whose negatives are masked (default: all), e.g. decode-only ERA5.
    mask_negatives_for_sensors: list[str] | None = None
    #: EMA momentum warms up from `ema_momentum` to `ema_momentum_end` over `ema_warmup_steps` (default: all steps).
    ema_momentum: float = 0.996
    ema_momentum_end: float = 1.0
    ema_warmup_steps: int | None = None
    #: InfoNCE between mean-pooled, projected predictions and targets; 0 = off.
    contrastive_weight: float = 0.1
    #: Initial InfoNCE temperature; learned (as a log scale) when `learn_temperature`.
    contrastive_temperature: float = 0.1
    learn_temperature: bool = True
    projection_dim: int = 128
    #: Gaussian-potential uniformity of the online projections; 0 = off.
    uniformity_weight: float = 0.1
    uniformity_t: float = 2.0
    # --- two-view contrast (view_contrast)
    #: InfoNCE between the pooled embeddings of two augmented views of each sample.
    view_weight: float = 1.0
    #: Each view is a random crop covering this range of fractions of the tile's area.
    view_crop_scale: list[float] = field(default_factory=lambda: [0.25, 1.0])
    #: Resize each crop back to the tile's size (SimCLR); false keeps the native resolution, the
    #: one `embed` sees, with a side that is a multiple of the patch size (and fewer tokens).
    view_resize: bool = True
    #: Per-band gain and offset jitter of each view (`spectral_jitter`), in standardized units; 0 = off.
    view_spectral_jitter: float = 0.0
    # --- pixel reconstruction
    #: "mse", "l1" or "smooth_l1" on the pixels of predicted patches.
    reconstruction_loss: str = "mse"
    reconstruction_weight: float = 1.0
    #: Standardize each target patch by its own mean and std (MAE / Pixio).
    normalize_target_patches: bool = True
    #: Pixio: how many of the encoder's register tokens (model.num_registers) are class tokens,
    #: processed with the patches and passed to the pixel decoder.
    num_cls_tokens: int = 0

    def build(self, model, masking: MaskingStrategy, *, total_steps: int) -> TrainModule:
        from spacenit.train.autoencoder import AutoEncoder
        from spacenit.train.dual_branch import DualBranch
        from spacenit.train.objectives import LatentPrediction
        from spacenit.train.view_contrast import ViewContrast

        objectives = {"latent_prediction": LatentPrediction, "autoencoder": AutoEncoder, "dual_branch": DualBranch,
                      "view_contrast": ViewContrast}  # fmt: skip
        if self.name not in objectives:
            raise ConfigError(f"unknown objective {self.name!r}; choose one of {sorted(objectives)}")
        if self.latent_loss not in ("smooth_l1", "patch_discrimination"):
            raise ConfigError(f"objective.latent_loss must be smooth_l1 or patch_discrimination, got {self.latent_loss!r}")
        scale = self.view_crop_scale
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise ConfigError(f"objective.view_crop_scale must be [low, high] with 0 < low <= high <= 1, got {self.view_crop_scale}")
        if not 0 <= self.view_spectral_jitter < 1:
            raise ConfigError(f"objective.view_spectral_jitter must be in [0, 1), got {self.view_spectral_jitter}")
        return objectives[self.name](model, self, masking, total_steps=total_steps)


class TrainModule(nn.Module):
    """Base of the objectives: the model, the masking, and the per-step hooks."""

    def __init__(self, model, config: ObjectiveConfig, masking: MaskingStrategy | None, total_steps: int) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.masking = masking or RandomMasking()
        self.total_steps = total_steps

    def mask(self, tok, generator: torch.Generator, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(visible, predict), both (B, N) bool on the tokens' device."""
        states = self.masking(TokenInfo.of(tok, self.model.sensors), generator, step).to(tok.absent.device)
        return states == VISIBLE, states == PREDICTED

    def after_optimizer_step(self) -> None:
        """Called once after every optimizer step that updated the weights."""

    def scalars(self) -> dict[str, float]:
        """Values worth logging that are not losses (temperature, EMA momentum)."""
        return {}
