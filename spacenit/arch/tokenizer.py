"""Multi-sensor tokenizer (spec section 2.2, "Per-Sensor Tokenization" and "Sequence assembly").

Every (sensor, token group, timestep, patch) becomes one token: the group's
AdaptivePatchEmbed of its bands, plus a learned embedding of the (sensor,
group) pair and the cyclic month embedding of its timestep. A token whose
pixels are all missing (the sentinel, in every band of its group) is
*absent*; the encoder removes absent tokens before the transformer.

Band groups come from the TokenizationConfig and select bands by name.
Spatial sensors arrive as (B, T, C, H, W), all on one pixel grid (dataset
format: one grid per sample); a non-spatial sensor (ERA5) arrives as
(B, T, C) and its group embedding is a Linear of the group's bands.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from spacenit.arch.layout import SensorBlock, TokenLayout
from spacenit.arch.month_embed import CyclicMonthEmbed
from spacenit.arch.patch_embed import AdaptivePatchEmbed
from spacenit.arch.tokenization import TokenizationConfig, band_dropout_keep
from spacenit.sensors import SENTINEL, SensorSpec


@dataclass
class Tokens:
    tokens: torch.Tensor  # (B, N, D)
    absent: torch.Tensor  # (B, N) True where the token has no data
    layout: TokenLayout


class MultiSensorTokenizer(nn.Module):
    def __init__(self, sensors: list[SensorSpec], tokenization: TokenizationConfig, dim: int,
                 base_patch_size: int, reference_gsd_m: float) -> None:  # fmt: skip
        super().__init__()
        if not any(s.spatial for s in sensors):
            raise ValueError(f"the model needs at least one spatial sensor; got {[s.name for s in sensors]}")
        self.sensors = list(sensors)
        self.tokenization = tokenization
        self.reference_gsd_m = reference_gsd_m
        #: Band dropout runs in training mode only, and only where enabled (never in the EMA target encoder).
        self.band_dropout_enabled = True
        self.groups = {s.name: tokenization.groups_for(s) for s in sensors}
        self.group_keys = [(s.name, g.name) for s in sensors for g in self.groups[s.name]]
        self.patch_embed = nn.ModuleDict({
            f"{s.name}__{g.name}": AdaptivePatchEmbed(len(g.bands), dim, base_patch_size) if s.spatial else nn.Linear(len(g.bands), dim)
            for s in sensors for g in self.groups[s.name]
        })  # fmt: skip
        self.group_embed = nn.Parameter(torch.zeros(len(self.group_keys), dim))
        nn.init.trunc_normal_(self.group_embed, std=0.02)
        self.month_embed = CyclicMonthEmbed(dim)
        for s in sensors:
            for g in self.groups[s.name]:
                self.register_buffer(f"bands__{s.name}__{g.name}", torch.tensor(s.band_index(g.bands)), persistent=False)

    def forward(self, images: dict[str, torch.Tensor], months: dict[str, torch.Tensor], patch_size: int,
                gsd_m: float | None = None) -> Tokens:  # fmt: skip
        """images {sensor: (B, T, C, H, W)}, months {sensor: (B, T)} -> Tokens; `gsd_m`: pixel size (default: reference)."""
        shapes = {s.name: tuple(images[s.name].shape[-2:]) for s in self.sensors if s.spatial and s.name in images}
        missing = [s.name for s in self.sensors if s.name not in images or s.name not in months]
        if missing or len(set(shapes.values())) != 1:
            raise ValueError(f"the model needs images and months of sensors {[s.name for s in self.sensors]}, the spatial "
                             f"ones on one pixel grid; missing {missing}, image sizes {shapes}")  # fmt: skip
        H, W = next(iter(shapes.values()))
        if H % patch_size or W % patch_size:
            raise ValueError(f"tile {H}x{W} px does not divide by patch size {patch_size}")
        tokens, absent, blocks, gi = [], [], [], 0
        for sensor in self.sensors:
            x = images[sensor.name]  # (B, T, C, H, W), or (B, T, C) when not spatial
            if x.ndim != (5 if sensor.spatial else 3) or x.shape[2] != sensor.num_bands:
                raise ValueError(f"{sensor.name}: expected (B, T, {sensor.num_bands}{', H, W' if sensor.spatial else ''}) "
                                 f"images, got {tuple(x.shape)}")  # fmt: skip
            B, T = x.shape[:2]
            month_emb = self.month_embed(months[sensor.name])[:, :, None, :]  # (B, T, 1, D)
            for group in self.groups[sensor.name]:
                xg = x.index_select(2, getattr(self, f"bands__{sensor.name}__{group.name}"))  # (B, T, Cg, H, W) / (B, T, Cg)
                is_missing = xg == SENTINEL
                xg = self._band_dropout(sensor.name, xg.masked_fill(is_missing, 0.0))
                embed = self.patch_embed[f"{sensor.name}__{group.name}"]
                if sensor.spatial:
                    emb = embed(xg.flatten(0, 1), patch_size).unflatten(0, (B, T))  # (B, T, h*w, D)
                    # Absent: every pixel of every band of the group is missing.
                    all_missing = F.avg_pool2d(is_missing.all(dim=2).flatten(0, 1).float(), patch_size) >= 1.0  # (B*T, h, w)
                else:
                    emb = embed(xg).unsqueeze(2)  # (B, T, 1, D)
                    all_missing = is_missing.all(dim=2)  # (B, T)
                tokens.append((emb + month_emb + self.group_embed[gi]).flatten(1, 2))  # (B, T*h*w, D)
                absent.append(all_missing.reshape(B, -1))  # (B, T*h*w)
                gi += 1
            names = tuple(g.name for g in self.groups[sensor.name])
            blocks.append(SensorBlock(sensor.name, names, gi - len(names), T, sensor.spatial))
        scale = (gsd_m if gsd_m is not None else self.reference_gsd_m) / self.reference_gsd_m
        layout = TokenLayout(tuple(blocks), (H // patch_size, W // patch_size), patch_size, scale)
        return Tokens(torch.cat(tokens, dim=1), torch.cat(absent, dim=1), layout)  # (B, N, D), (B, N)

    def _band_dropout(self, sensor: str, x: torch.Tensor) -> torch.Tensor:
        cfg = self.tokenization
        B, C = x.shape[0], x.shape[2]
        if not (self.training and self.band_dropout_enabled and cfg.band_dropout > 0 and C > 1
                and sensor in cfg.band_dropout_sensors):  # fmt: skip
            return x
        keep = band_dropout_keep(B, C, cfg.band_dropout, cfg.random_band_dropout, x.device)  # (B, C)
        return x * keep.view(B, 1, C, *([1] * (x.ndim - 3))).to(x.dtype)
