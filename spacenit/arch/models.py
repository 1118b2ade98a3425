"""The SpaceNit model: encoder + latent predictor, built by config from named presets.

    model = create_model("spacenit_nano", sensors=[SENTINEL2_L2A], depth=2)

Sizes follow the specification's table (section 5).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from spacenit.arch.encoder import Encoder, Predictor, mean_pool
from spacenit.config import Config
from spacenit.sensors import SensorSpec


@dataclass
class ModelConfig(Config):
    """Sizes of the encoder and predictor. Defaults are the nano preset."""

    dim: int = 128
    depth: int = 4
    heads: int = 8
    #: Key/value heads for grouped-query attention; None = one per query head.
    kv_heads: int | None = None
    mlp_ratio: float = 4.0
    decoder_dim: int = 128
    decoder_depth: int = 4
    decoder_heads: int = 8
    #: Patch size (pixels) the patch-embedding kernels are stored at; others are resized from it.
    base_patch_size: int = 8
    dropout: float = 0.0
    qk_norm: bool = False


PRESETS: dict[str, ModelConfig] = {
    "spacenit_nano": ModelConfig(),
    "spacenit_tiny": ModelConfig(dim=192, depth=12, heads=3, decoder_dim=192, decoder_depth=12, decoder_heads=3),
    "spacenit_base": ModelConfig(dim=768, depth=12, heads=12, decoder_dim=512, decoder_depth=4, decoder_heads=16),
    "spacenit_large": ModelConfig(dim=1024, depth=24, heads=16, decoder_dim=512, decoder_depth=4, decoder_heads=16),
}


class SpaceNitModel(nn.Module):
    def __init__(self, config: ModelConfig, sensors: list[SensorSpec]) -> None:
        super().__init__()
        self.config = config
        self.sensors = list(sensors)
        c = config
        self.encoder = Encoder(self.sensors, c.dim, c.depth, c.heads, c.kv_heads, c.mlp_ratio, c.base_patch_size, c.dropout, c.qk_norm)
        self.predictor = Predictor(
            len(self.encoder.tokenizer.group_keys), c.dim, c.decoder_dim, c.decoder_depth, c.decoder_heads, c.mlp_ratio
        )

    @torch.no_grad()
    def embed(self, images, months, patch_size: int) -> torch.Tensor:
        """Pooled per-sample embedding (B, D): mean over every present token."""
        encoded, keep, _ = self.encoder(images, months, patch_size)
        return mean_pool(encoded, keep)


def create_model(name: str, sensors: list[SensorSpec], **overrides) -> SpaceNitModel:
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; presets: {sorted(PRESETS)}")
    return SpaceNitModel(replace(PRESETS[name], **overrides), sensors)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
