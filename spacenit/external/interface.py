"""The one interface every external encoder implements, and the input checks they share.

    encoder = load_external("galileo_nano")          # or "presto"
    out = encoder.encode({"sentinel2_l2a": s2},      # (B, T, C, H, W) raw values, the sensor's band order
                         months={"sentinel2_l2a": m},  # (B, T), 1-12, 0 = unknown
                         gsd_m=10.0)                  # pixel size of the grid all spatial sensors share
    out.pooled   # (B, pooled_dim)   one vector per sample
    out.patches  # (B, h, w, patch_dim) one vector per patch of `patch_size_px` pixels
    out.valid    # (B, h, w) bool: patches the model saw data in (the others are NaN)

Inputs are raw sensor values in the units SpaceNit stores (reflectance x 10000,
dB, metres, K); each model applies its own band mapping and normalization.
Missing values are the SpaceNit sentinel (-99999) or NaN. Non-spatial sensors
(ERA5) are (B, T, C). Band names come from the sensor registry, or `bands`
when a dataset orders them differently. `latlon` (B, H, W, 2), degrees
(latitude, longitude) per pixel, is used by the models that take a location.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from spacenit.sensors import SENTINEL, get_sensor


@dataclass
class ExternalEmbeddings:
    pooled: np.ndarray  # (B, pooled_dim) float32
    patches: np.ndarray  # (B, h, w, patch_dim) float32, NaN where not valid
    valid: np.ndarray  # (B, h, w) bool


class ExternalEncoder(Protocol):
    #: Identifies the weights (and any setting that changes the outputs) in results stores.
    name: str
    patch_size_px: int
    pooled_dim: int
    patch_dim: int
    #: SpaceNit sensors the model reads; others in the input are ignored.
    sensors: tuple[str, ...]

    def encode(self, images: Mapping[str, np.ndarray | torch.Tensor], months: Mapping[str, np.ndarray | torch.Tensor],
               gsd_m: float, *, latlon: np.ndarray | torch.Tensor | None = None,
               bands: Mapping[str, Sequence[str]] | None = None) -> ExternalEmbeddings: ...  # fmt: skip

    def random_twin(self, seed: int = 0) -> ExternalEncoder:
        """The same architecture and input mapping at the authors' initialization: what the weights must beat."""
        ...


class ExternalInputError(ValueError):
    """Arrays handed to an external encoder that do not fit together; the message names the array."""


@dataclass
class RawInputs:
    """Checked inputs: float32 tensors with NaN wherever a value is missing."""

    images: dict[str, torch.Tensor]  # sensor -> (B, T, C, H, W), or (B, T, C) for non-spatial sensors
    months: dict[str, torch.Tensor]  # sensor -> (B, T) int64, 1-12, 0 = unknown
    bands: dict[str, tuple[str, ...]]
    gsd_m: float
    latlon: torch.Tensor | None  # (B, H, W, 2) degrees
    batch_size: int
    height: int
    width: int

    def band(self, sensor: str, band: str) -> torch.Tensor | None:
        """(B, T, H, W) or (B, T) values of one band, None when the sensor or band is absent."""
        if sensor not in self.images or band not in self.bands[sensor]:
            return None
        return self.images[sensor][:, :, self.bands[sensor].index(band)]


def prepare_inputs(images: Mapping[str, np.ndarray | torch.Tensor], months: Mapping[str, np.ndarray | torch.Tensor],
                   gsd_m: float, *, sensors: Sequence[str], latlon: np.ndarray | torch.Tensor | None = None,
                   bands: Mapping[str, Sequence[str]] | None = None) -> RawInputs:  # fmt: skip
    """Keep the `sensors` a model reads, check shapes, bands and months, and turn sentinel values into NaN."""
    used = [s for s in images if s in sensors]
    if not used:
        raise ExternalInputError(f"none of the given sensors {sorted(images)} is read by this model; it reads {list(sensors)}")
    if not gsd_m > 0:
        raise ExternalInputError(f"gsd_m must be the pixel size in metres (> 0), got {gsd_m}")
    out, out_months, out_bands, shapes = {}, {}, {}, {}
    for name in used:
        spec = get_sensor(name)
        names = tuple(bands[name]) if bands and name in bands else spec.bands
        x = torch.as_tensor(np.asarray(images[name]) if not isinstance(images[name], torch.Tensor) else images[name])
        x = x.float()
        want = 5 if spec.spatial else 3
        if x.ndim != want or x.shape[2] != len(names):
            layout = "(B, T, C, H, W)" if spec.spatial else "(B, T, C)"
            raise ExternalInputError(f"{name}: expected {layout} with C = {len(names)} bands {names}, got shape {tuple(x.shape)}")
        if name in months:
            m = torch.as_tensor(np.asarray(months[name]) if not isinstance(months[name], torch.Tensor) else months[name]).long()
        elif not spec.temporal:
            m = torch.zeros(x.shape[:2], dtype=torch.long)  # a static sensor has no acquisition month
        else:
            raise ExternalInputError(f"{name}: no months given; pass months[{name!r}] (B, T), 1-12 or 0 for unknown")
        if m.shape != x.shape[:2] or bool(((m < 0) | (m > 12)).any()):
            raise ExternalInputError(f"{name}: months must be (B, T) = {tuple(x.shape[:2])} in 0..12, got {tuple(m.shape)}")
        out[name] = torch.where(x == SENTINEL, torch.nan, x)
        out_months[name], out_bands[name] = m, names
        shapes[name] = (x.shape[0], *x.shape[3:])
    batch = {s[0] for s in shapes.values()}
    spatial = {s[1:] for s in shapes.values() if len(s) == 3}
    if len(batch) != 1 or len(spatial) > 1:
        raise ExternalInputError(f"sensors disagree on batch size or pixel grid: {shapes}; put every spatial sensor on one grid")
    if not spatial:
        raise ExternalInputError(f"the encoder needs at least one spatial sensor among {list(sensors)}; got {used}")
    ((height, width),), (batch_size,) = spatial, batch
    lat_lon = None
    if latlon is not None:
        lat_lon = torch.as_tensor(np.asarray(latlon) if not isinstance(latlon, torch.Tensor) else latlon).float()
        if lat_lon.shape != (batch_size, height, width, 2):
            raise ExternalInputError(f"latlon must be (B, H, W, 2) = {(batch_size, height, width, 2)}, got {tuple(lat_lon.shape)}")
    return RawInputs(out, out_months, out_bands, float(gsd_m), lat_lon, batch_size, height, width)


def stack_bands(raw: RawInputs, table: Sequence[tuple[str, Sequence[tuple[str, str]]]], timesteps: int,
                *, spatial: bool = True) -> torch.Tensor:  # fmt: skip
    """Model bands from SpaceNit (sensor, band) candidates, first match wins -> (B, T, C, H, W) or (B, T, C), NaN if absent.

    Static sensors (T = 1) are repeated over the `timesteps`; temporal ones must have exactly that many.
    """
    B, H, W = raw.batch_size, raw.height, raw.width
    shape = (B, timesteps, H, W) if spatial else (B, timesteps)
    channels = []
    for model_band, candidates in table:
        values = next((v for s, b in candidates if (v := raw.band(s, b)) is not None and (v.ndim == 4) == spatial), None)
        if values is None:
            channels.append(torch.full(shape, torch.nan))
            continue
        if values.shape[1] not in (1, timesteps):
            raise ExternalInputError(
                f"{model_band} has {values.shape[1]} timesteps, other sensors {timesteps}: put the sensors on one timeline first"
            )
        channels.append(values.expand(shape))
    return torch.stack(channels, dim=2)


def slope_degrees(elevation: torch.Tensor, gsd_m: float) -> torch.Tensor:
    """(..., H, W) elevation in metres -> slope in degrees from the 4-connected neighbours (central differences,
    one-sided at the edges), as Earth Engine's ee.Terrain.slope computes the SRTM slope both models were trained on."""
    d_row, d_col = torch.gradient(elevation, spacing=float(gsd_m), dim=(-2, -1))
    return torch.rad2deg(torch.atan(torch.hypot(d_row, d_col)))


def timeline(raw: RawInputs, temporal_sensors: Sequence[str]) -> tuple[int, torch.Tensor]:
    """(T, months (B, T)) of the model's timeline: the temporal sensors' common T; per timestep the first known month."""
    used = [s for s in temporal_sensors if s in raw.images]
    lengths = {s: raw.images[s].shape[1] for s in used}
    if len(set(lengths.values())) > 1:
        raise ExternalInputError(f"temporal sensors have different numbers of timesteps {lengths}; resample them to one timeline")
    T = next(iter(lengths.values()), 1)
    months = torch.zeros(raw.batch_size, T, dtype=torch.long)
    for s in used:
        months = torch.where(months == 0, raw.months[s], months)
    return T, months
