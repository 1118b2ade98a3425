"""Multi-sensor tokenizer (spec section 2.2, "Per-Sensor Tokenization" and "Sequence assembly").

Every (sensor, token group, timestep, patch) becomes one token: the group's
AdaptivePatchEmbed of its bands, plus a learned embedding of the (sensor,
group) pair and the cyclic month embedding of its timestep. A token whose
pixels are all missing (the sentinel, in every band of its group) is
*absent*; the encoder removes absent tokens before the transformer.

Native resolution (spec core ideas 1 and 2). A sensor arrives as one array per
grid, {Grid: (B, T, C_g, H_g, W_g)} (`spacenit.data.images`), every grid over
the same footprint at its own pixel size; or as one (B, T, C, H, W) array of
every band at `gsd_m`. Tokens are patches of the ground: one ground patch size
P = patch_size x gsd_m metres (patch_size counts pixels of the reference grid
`gsd_m`), and every group and sensor is cut into the same h x w patches of P,
so a spatial or block mask hides the same ground everywhere and RoPE places
tokens by where they lie on the ground. A grid of pixel size g gives k = P / g
pixels per patch side (8 at 10 m, 4 at 20 m for P = 80 m) at its native
resolution. Where P / g is not whole (60 m bands, 30 m Landsat with P = 80 m)
the grid is resampled (bilinear, missing pixels kept out) to ceil(P / g)
pixels per patch: the fewest whole pixels that lose none of its resolution.

Band groups come from the TokenizationConfig and select bands by name; a
group may draw bands from several grids (`AdaptivePatchEmbed.forward_grids`).
A non-spatial sensor (ERA5) arrives as (B, T, C) and its group embedding is a
Linear of the group's bands.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from spacenit.arch.layout import SensorBlock, TokenLayout
from spacenit.arch.month_embed import CyclicMonthEmbed
from spacenit.arch.patch_embed import AdaptivePatchEmbed
from spacenit.arch.tokenization import TokenizationConfig, band_dropout_keep
from spacenit.data.images import as_grids, pixels_per_patch, resample_sentinel
from spacenit.sensors import SENTINEL, Grid, SensorSpec, metres


@dataclass
class GroupPixels:
    """The pixels one token group was embedded from, on one grid, as tokenized: targets of
    pixel reconstruction at the resolution the encoder saw."""

    sensor: str
    group: str
    #: Positions of these bands among the group's bands.
    channels: torch.Tensor
    #: Pixels per patch side on this grid; 0 for a non-spatial sensor.
    pixels_per_patch: int
    #: (B, T, C_g, h*k, w*k) with the sentinel where missing; (B, T, C_g) for a non-spatial sensor.
    values: torch.Tensor


@dataclass
class Tokens:
    tokens: torch.Tensor  # (B, N, D)
    absent: torch.Tensor  # (B, N) True where the token has no data
    layout: TokenLayout
    #: What each group was embedded from, per grid (in layout order).
    pixels: list[GroupPixels]


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

    def forward(self, images: dict, months: dict[str, torch.Tensor], patch_size: int,
                gsd_m: float | None = None) -> Tokens:  # fmt: skip
        """images {sensor: {Grid: (B, T, C_g, H_g, W_g)} or (B, T, C, H, W)}, months {sensor: (B, T)} -> Tokens.

        `patch_size` counts pixels of `gsd_m` metres (default: the model's reference GSD);
        a plain array per sensor is every band on a grid of that size.
        """
        missing = [s.name for s in self.sensors if s.name not in images or s.name not in months]
        if missing:
            raise ValueError(f"the model needs images and months of sensors {[s.name for s in self.sensors]}; "
                             f"missing {missing}")  # fmt: skip
        gsd_m = gsd_m if gsd_m is not None else self.reference_gsd_m
        patch_m = patch_size * gsd_m
        grids = {s.name: as_grids(images[s.name], s, gsd_m) for s in self.sensors}
        h, w = self._patch_grid(grids, patch_m, patch_size)
        tokens, absent, blocks, pixels, gi = [], [], [], [], 0
        for sensor in self.sensors:
            sensor_grids = grids[sensor.name]
            B, T = next(iter(sensor_grids.values())).shape[:2]
            month_emb = self.month_embed(months[sensor.name])[:, :, None, :]  # (B, T, 1, D)
            for group in self.groups[sensor.name]:
                embed = self.patch_embed[f"{sensor.name}__{group.name}"]
                parts = self._group_parts(sensor, group.bands, sensor_grids, patch_m, h, w)
                keep = self._band_dropout_keep(sensor.name, B, len(group.bands), parts[0][0].device)
                if sensor.spatial:
                    emb, all_missing = _embed_spatial(embed, parts, keep, B, T)  # (B, T, h*w, D)
                else:
                    emb, all_missing = _embed_nonspatial(sensor.name, embed, parts, keep)  # (B, T, 1, D)
                pixels += [GroupPixels(sensor.name, group.name, channels, k, x) for x, channels, k in parts]
                tokens.append((emb + month_emb + self.group_embed[gi]).flatten(1, 2))  # (B, T*h*w, D)
                absent.append(all_missing.reshape(B, -1))  # (B, T*h*w)
                gi += 1
            names = tuple(g.name for g in self.groups[sensor.name])
            blocks.append(SensorBlock(sensor.name, names, gi - len(names), T, sensor.spatial))
        layout = TokenLayout(tuple(blocks), (h, w), patch_size, gsd_m / self.reference_gsd_m)
        return Tokens(torch.cat(tokens, dim=1), torch.cat(absent, dim=1), layout, pixels)  # (B, N, D), (B, N)

    def _patch_grid(self, grids: dict[str, dict[Grid, torch.Tensor]], patch_m: float, patch_size: int) -> tuple[int, int]:
        """(h, w) patches of `patch_m` metres: the finest grid's extent, which must be a whole number
        of patches; every other grid must cover at least as much ground."""
        extents = []
        for sensor in self.sensors:
            if not sensor.spatial:
                continue
            for grid, x in grids[sensor.name].items():
                if x.ndim != 5:
                    raise ValueError(f"{sensor.name} grid {grid.name}: expected (B, T, C, H, W), got {tuple(x.shape)}")
                extents.append((grid.gsd_m, x.shape[-2] * metres(grid.gsd_m), x.shape[-1] * metres(grid.gsd_m), grid, sensor))
        finest = min(extents, key=lambda e: e[0])
        h, w = finest[1] / metres(patch_m), finest[2] / metres(patch_m)
        if h.denominator != 1 or w.denominator != 1:
            size = finest[3]
            raise ValueError(f"a {finest[1] / metres(size.gsd_m)}x{finest[2] / metres(size.gsd_m)} px tile at "
                             f"{size.gsd_m:g} m does not divide by patch size {patch_size} ({patch_m:g} m)")  # fmt: skip
        for _, height, width, grid, sensor in extents:
            if height < finest[1] or width < finest[2]:
                raise ValueError(f"{sensor.name} grid {grid.name} covers {float(height):g} x {float(width):g} m, less "
                                 f"than the {float(finest[1]):g} x {float(finest[2]):g} m of the finest grid; every "
                                 "grid of a sample covers its whole footprint")  # fmt: skip
        return int(h), int(w)

    def _group_parts(self, sensor: SensorSpec, bands: list[str], grids: dict[Grid, torch.Tensor], patch_m: float,
                     h: int, w: int) -> list[tuple[torch.Tensor, torch.Tensor, int]]:  # fmt: skip
        """[(pixels (B, T, C_g, h*k, w*k), channels in the group, k)] of the grids holding the group's bands."""
        parts, found = [], set()
        for grid, x in grids.items():
            here = [(i, b) for i, b in enumerate(bands) if b in grid.bands]
            if not here:
                continue
            found.update(b for _, b in here)
            index = torch.tensor([grid.bands.index(b) for _, b in here], device=x.device)
            channels = torch.tensor([i for i, _ in here], device=x.device)
            x = x.index_select(2, index)  # (B, T, C_g, H_g, W_g) / (B, T, C_g)
            if not sensor.spatial:
                parts.append((x, channels, 0))
                continue
            k = pixels_per_patch(patch_m, grid.gsd_m)
            parts.append((_on_patch_grid(x, k, h, w), channels, math.ceil(k)))
        if len(found) != len(bands):
            raise ValueError(f"{sensor.name}: the images hold no band(s) {sorted(set(bands) - found)} of token group "
                             f"{bands}; give them (all sentinel where missing)")  # fmt: skip
        return parts

    def _band_dropout_keep(self, sensor: str, batch: int, channels: int, device: torch.device) -> torch.Tensor | None:
        """(B, C) bands of a group kept by band dropout, or None when it is off. One draw per group
        band, so a group spread over several grids loses the same bands on each."""
        cfg = self.tokenization
        if not (self.training and self.band_dropout_enabled and cfg.band_dropout > 0 and channels > 1
                and sensor in cfg.band_dropout_sensors):  # fmt: skip
            return None
        return band_dropout_keep(batch, channels, cfg.band_dropout, cfg.random_band_dropout, device)


def _drop_bands(x: torch.Tensor, keep: torch.Tensor | None, channels: torch.Tensor) -> torch.Tensor:
    """Zero the bands (axis 2) that band dropout drops; `channels` are x's positions in the group."""
    if keep is None:
        return x
    B = x.shape[0]
    return x * keep[:, channels].view(B, 1, -1, *([1] * (x.ndim - 3))).to(x.dtype)


def _embed_spatial(embed: AdaptivePatchEmbed, parts, keep: torch.Tensor | None, B: int, T: int):
    """-> tokens (B, T, h*w, D), absent (B*T, h, w): every pixel of every band missing."""
    inputs, all_missing = [], None
    for x, channels, k in parts:
        is_missing = x == SENTINEL  # (B, T, C_g, h*k, w*k)
        x = _drop_bands(x.masked_fill(is_missing, 0.0), keep, channels)
        inputs.append((x.flatten(0, 1), channels, k))
        grid_missing = F.avg_pool2d(is_missing.all(dim=2).flatten(0, 1).float(), k) >= 1.0  # (B*T, h, w)
        all_missing = grid_missing if all_missing is None else all_missing & grid_missing
    return embed.forward_grids(inputs).unflatten(0, (B, T)), all_missing


def _embed_nonspatial(sensor: str, embed: nn.Linear, parts, keep: torch.Tensor | None):
    """-> tokens (B, T, 1, D), absent (B, T)."""
    (x, channels, _), *rest = parts
    if rest:  # a non-spatial sensor has one grid: its values
        raise ValueError(f"{sensor}: a non-spatial sensor takes one (B, T, C) array, got {len(parts)}")
    order = torch.argsort(channels)
    x = x.index_select(2, order)  # (B, T, C) in the group's band order
    is_missing = x == SENTINEL
    x = _drop_bands(x.masked_fill(is_missing, 0.0), keep, channels[order])
    return embed(x).unsqueeze(2), is_missing.all(dim=2)


def _on_patch_grid(x: torch.Tensor, k: Fraction, h: int, w: int) -> torch.Tensor:
    """A grid's pixels cut to the h x w patches (whose side is k of its pixels), at ceil(k) pixels per
    patch: as they are when k is whole, resampled by ceil(k) / k otherwise."""
    pixels = math.ceil(k)
    if k.denominator != 1:
        # Exact geometry from the top-left; the 1e-9 keeps float rounding from flooring a whole
        # number of output pixels one short.
        x = resample_sentinel(x, (0, 0), "bilinear", scale=float(pixels / k) * (1 + 1e-9))
    return x[..., : h * pixels, : w * pixels]
