"""The SpaceNit model: encoder + latent predictor, built by config from named presets (spec section 5).

    model = create_model("spacenit_nano", sensors=[SENTINEL2_L2A], depth=2)

Presets follow the specification's table (encoder dim, depth, heads;
decoder depth; FFN 4x SwiGLU). The table gives no decoder width: nano and
tiny decode at the encoder's width, base and large at 384 and 512, which
keeps each model's total within 15% of the table's "Approx. params"
(docs/architecture.md has the counts and how the table is read).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from spacenit.arch.encoder import Encoder
from spacenit.arch.model_config import ModelConfig
from spacenit.arch.pooling import mean_pool
from spacenit.arch.predictor import Predictor
from spacenit.sensors import SensorSpec

PRESETS: dict[str, ModelConfig] = {
    "spacenit_nano": ModelConfig(dim=128, depth=4, heads=8, decoder_dim=128, decoder_depth=4, decoder_heads=8),
    "spacenit_tiny": ModelConfig(dim=192, depth=12, heads=3, decoder_dim=192, decoder_depth=12, decoder_heads=3),
    "spacenit_base": ModelConfig(dim=768, depth=12, heads=12, decoder_dim=384, decoder_depth=4, decoder_heads=12),
    "spacenit_large": ModelConfig(dim=1024, depth=24, heads=16, decoder_dim=512, decoder_depth=4, decoder_heads=16),
}


class SpaceNitModel(nn.Module):
    def __init__(self, config: ModelConfig, sensors: list[SensorSpec]) -> None:
        super().__init__()
        self.config = config
        self.sensors = list(sensors)
        self.encoder = Encoder(config, self.sensors)
        self.predictor = Predictor(config, {s: len(gs) for s, gs in self.encoder.tokenizer.groups.items()})

    @torch.no_grad()
    def embed(self, images: dict[str, torch.Tensor], months: dict[str, torch.Tensor], patch_size: int,
              gsd_m: float | None = None) -> torch.Tensor:  # fmt: skip
        """Pooled per-sample embedding (B, D): mean over every present token."""
        encoded, keep, _ = self.encoder(images, months, patch_size, gsd_m=gsd_m)
        return mean_pool(encoded, keep)


def create_model(name: str, sensors: list[SensorSpec], **overrides) -> SpaceNitModel:
    """Build a preset by name; `overrides` are ModelConfig fields (unknown names fail in `replace`)."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; presets: {sorted(PRESETS)}")
    return SpaceNitModel(replace(PRESETS[name], **overrides), sensors)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
