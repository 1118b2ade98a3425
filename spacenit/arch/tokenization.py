"""Which bands become which tokens, and band dropout (seed: bandset-merge-experiments.md).

A *token group* (bandset) is a set of bands, named in the sensor's band
names, that one patch embedding turns into one token per patch and timestep.
By default a sensor is tokenized by its own spectral groups (SensorSpec:
Sentinel-2 10m / 20m / 60m, Landsat VNIR / SWIR+TIR). A named `preset`
replaces the groups of some sensors, and `sensors` entries replace them again,
so every bandset variant of the 14 experiments is a config value:

| preset                    | Sentinel-2 L2A                     | Landsat     |
|---------------------------|------------------------------------|-------------|
| `default`                 | 3 bandsets: 10m (4), 20m (6), 60m (2) | 2 bandsets |
| `single_bandset_all12`    | 1 bandset, all 12 bands            | 1 bandset   |
| `single_bandset_no60m`    | 1 bandset, 10m + 20m (10 bands)    | 1 bandset   |
| `single_bandset_10m_only` | 1 bandset, 10m (4 bands)           | 1 bandset   |
| `two_bandsets_10m_20m`    | 2 bandsets: 10m (4), 20m (6)       | 1 bandset   |
| `single_bandset`          | 1 bandset, all 12 (L1C: all 13)    | 1 bandset   |

`single_bandset` is `single_bandset_all12` for Sentinel-2 L1C as well: a third
of the tokens of `default`, so about 2.5x the steps in a CPU budget (the preset
of the EuroSAT benchmark, docs/evaluation.md).

Bands a variant leaves out (the 60m bands of `no60m`) are never read.
Entries for sensors a model does not have are ignored, so one variant serves
an S2-only model as well as an S2 + Landsat one.

Band dropout (experiments 5, 6, 13, 14): while training, the online encoder
zeroes each band of a multi-band group with probability `band_dropout` (the
inputs are standardized, so zero is the band's mean), keeping at least one
band per group and sample; with `random_band_dropout` each sample draws its
own rate from Uniform(0, band_dropout).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from spacenit.config import Config
from spacenit.sensors import SENTINEL2_L1C, SensorSpec


@dataclass
class TokenGroup(Config):
    """Bands tokenized together, by name."""

    name: str
    bands: list[str]


@dataclass
class SensorTokenization(Config):
    """The token groups of one sensor, replacing its SensorSpec groups."""

    sensor: str
    groups: list[TokenGroup]


S2_10M = ["B02", "B03", "B04", "B08"]
S2_20M = ["B05", "B06", "B07", "B8A", "B11", "B12"]
S2_ALL = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
LANDSAT_ALL = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11"]


def _s2_and_single_landsat(*s2_groups: TokenGroup) -> list[SensorTokenization]:
    return [SensorTokenization("sentinel2_l2a", list(s2_groups)),
            SensorTokenization("landsat", [TokenGroup("all", LANDSAT_ALL)])]  # fmt: skip


TOKENIZATION_PRESETS: dict[str, list[SensorTokenization]] = {
    "default": [],
    "single_bandset_all12": _s2_and_single_landsat(TokenGroup("all", S2_ALL)),
    "single_bandset_no60m": _s2_and_single_landsat(TokenGroup("no60m", S2_10M + S2_20M)),
    "single_bandset_10m_only": _s2_and_single_landsat(TokenGroup("10m", S2_10M)),
    "two_bandsets_10m_20m": _s2_and_single_landsat(TokenGroup("10m", S2_10M), TokenGroup("20m", S2_20M)),
    "single_bandset": [*_s2_and_single_landsat(TokenGroup("all", S2_ALL)),
                       SensorTokenization("sentinel2_l1c", [TokenGroup("all", list(SENTINEL2_L1C.bands))])],  # fmt: skip
}


@dataclass
class TokenizationConfig(Config):
    #: A name from TOKENIZATION_PRESETS.
    preset: str = "default"
    #: Per-sensor groups applied over the preset's.
    sensors: list[SensorTokenization] = field(default_factory=list)
    #: Probability of zeroing each band of a multi-band group while training (0 = off).
    band_dropout: float = 0.0
    #: Draw each sample's dropout rate from Uniform(0, band_dropout) instead of using it as is.
    random_band_dropout: bool = False
    #: Sensors band dropout applies to.
    band_dropout_sensors: list[str] = field(default_factory=lambda: ["sentinel2_l2a", "sentinel2_l1c", "landsat"])

    def __post_init__(self) -> None:
        if self.preset not in TOKENIZATION_PRESETS:
            raise ValueError(f"unknown tokenization preset {self.preset!r}; presets: {sorted(TOKENIZATION_PRESETS)}")
        if not 0.0 <= self.band_dropout < 1.0:
            raise ValueError(f"band_dropout must be in [0, 1), got {self.band_dropout}")

    def groups_for(self, sensor: SensorSpec) -> list[TokenGroup]:
        """The token groups of `sensor`, checked against its band names."""
        groups = [TokenGroup(g.name, list(g.bands)) for g in sensor.groups]
        for entry in [*TOKENIZATION_PRESETS[self.preset], *self.sensors]:
            if entry.sensor == sensor.name:
                groups = entry.groups
        names = [g.name for g in groups]
        bands = [b for g in groups for b in g.bands]
        if not groups or any(not g.bands for g in groups):
            raise ValueError(f"sensor {sensor.name!r}: every token group needs at least one band, got {groups}")
        if len(set(names)) != len(names) or len(set(bands)) != len(bands):
            raise ValueError(f"sensor {sensor.name!r}: token groups repeat a name or a band: {groups}")
        sensor.band_index(bands)  # unknown band names fail loudly here
        return groups


def band_dropout_keep(batch: int, channels: int, rate: float, random_rate: bool, device: torch.device) -> torch.Tensor:
    """(batch, channels) bool: bands kept by band dropout; at least one per sample."""
    rates = torch.rand(batch, 1, device=device) * rate if random_rate else torch.full((batch, 1), rate, device=device)
    keep = torch.rand(batch, channels, device=device) >= rates  # (B, C)
    rescue = torch.nn.functional.one_hot(torch.randint(channels, (batch,), device=device), channels).bool()
    return keep | (rescue & ~keep.any(dim=1, keepdim=True))
