"""Masking strategies (spec section 2.5; bandset-merge-experiments.md; Pixio block masking).

A strategy looks at the token layout of a batch and gives every token one of
four states:

    VISIBLE_ENCODER  the online encoder sees it
    PREDICTED        hidden from the encoder; the loss is computed here
    TARGET_ONLY      hidden from the encoder; the target encoder sees it, no loss
    ABSENT           no data (all pixels sentinel); never visible, never predicted

Strategies work on the layout only (`TokenInfo`: which tokens are absent, the
(row, col, t) position and the sensor/group of each token), so they apply
whatever the encoder does inside. Counts are exact: a ratio r of n units means
round(r * n) units, with at least one visible and one predicted unit whenever
two or more are present. Every random choice comes from the `generator`
passed in, so masks depend only on how the caller seeds it.

    masking = MaskingConfig(strategy="block", decode_ratio=0.75, encode_ratio=0.25).build()
    states = masking(TokenInfo.of(tok, model.sensors), generator, step)  # (B, N) int8
    visible, predict = states == VISIBLE_ENCODER, states == PREDICTED
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import IntEnum

import torch

from spacenit.config import Config, ConfigError


class Visibility(IntEnum):
    VISIBLE_ENCODER = 0
    TARGET_ONLY = 1
    PREDICTED = 2
    ABSENT = 3


VISIBLE, TARGET_ONLY, PREDICTED, ABSENT = (int(v) for v in Visibility)


@dataclass
class TokenInfo:
    """What a masking strategy may know about the tokens of a batch."""

    absent: torch.Tensor  # (B, N) bool
    positions: torch.Tensor  # (N, 3): row, column, timestep
    group_index: torch.Tensor  # (N,): index into `group_sensors`
    #: Sensor name of each (sensor, group) index.
    group_sensors: tuple[str, ...]
    #: Sensors without a time axis (static, e.g. SRTM) and without a spatial grid (e.g. ERA5).
    static_sensors: frozenset[str] = frozenset()
    nonspatial_sensors: frozenset[str] = frozenset()

    @classmethod
    def of(cls, tok, sensors) -> TokenInfo:
        """From tokenizer output `tok` (tokens, absent, layout) and the model's SensorSpecs."""
        layout = tok.layout
        group_sensors = {}
        for block in layout.blocks:
            for i in range(len(block.groups)):
                group_sensors[block.first_group + i] = block.sensor
        device = torch.device("cpu")
        return cls(
            absent=tok.absent.cpu(),
            positions=layout.positions(device),
            group_index=layout.group_index(device),
            group_sensors=tuple(group_sensors[g] for g in range(max(group_sensors) + 1)),
            static_sensors=frozenset(s.name for s in sensors if not s.temporal),
            nonspatial_sensors=frozenset(s.name for s in sensors if not s.spatial),
        )

    @property
    def batch_size(self) -> int:
        return self.absent.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.absent.shape[1]

    def sensor_of_token(self) -> list[str]:
        return [self.group_sensors[g] for g in self.group_index.tolist()]

    def tokens_of(self, sensors) -> torch.Tensor:
        """(N,) bool: tokens of any of `sensors`."""
        wanted = torch.tensor([s in set(sensors) for s in self.group_sensors], dtype=torch.bool)
        return wanted[self.group_index] if len(self.group_sensors) else torch.zeros(self.num_tokens, dtype=torch.bool)

    def spatial_cells(self) -> tuple[torch.Tensor, int, int]:
        """(N,) cell index = row_index * width + col_index, and the grid (height, width) in cells."""
        rows, row_idx = torch.unique(self.positions[:, 0], return_inverse=True)
        cols, col_idx = torch.unique(self.positions[:, 1], return_inverse=True)
        return row_idx * len(cols) + col_idx, len(rows), len(cols)

    def timesteps(self) -> tuple[torch.Tensor, int]:
        steps, t_idx = torch.unique(self.positions[:, 2], return_inverse=True)
        return t_idx, len(steps)


# ---------------------------------------------------------------- exact counts


def _counts(n: torch.Tensor, encode_ratio, decode_ratio) -> tuple[torch.Tensor, torch.Tensor]:
    """Units to show and to predict out of n present (per sample); ratios are floats or (B,) tensors."""
    n = n.long()
    n_enc = torch.floor(n * torch.as_tensor(encode_ratio, dtype=torch.float64) + 0.5).long()
    n_dec = torch.floor(n * torch.as_tensor(decode_ratio, dtype=torch.float64) + 0.5).long()
    two = n >= 2
    n_enc = torch.where(two, n_enc.clamp(min=1), n.clamp(max=1))
    n_enc = torch.minimum(n_enc, torch.where(two, n - 1, n))
    n_dec = torch.where(two, n_dec.clamp(min=1), torch.zeros_like(n))
    return n_enc, torch.minimum(n_dec, n - n_enc)


def assign_by_rank(scores: torch.Tensor, eligible: torch.Tensor, encode_ratio, decode_ratio) -> torch.Tensor:
    """States of units (B, U) from random `scores`: the lowest-scored eligible ones are
    visible, the next ones predicted, the rest target-only; ineligible units are ABSENT."""
    n_enc, n_dec = _counts(eligible.sum(1), encode_ratio, decode_ratio)
    rank = scores.masked_fill(~eligible, math.inf).argsort(1).argsort(1)  # (B, U)
    states = torch.full(scores.shape, TARGET_ONLY, dtype=torch.int8)
    states[rank < (n_enc + n_dec)[:, None]] = PREDICTED
    states[rank < n_enc[:, None]] = VISIBLE
    return states.masked_fill(~eligible, ABSENT)


def _unit_states(present: torch.Tensor, unit: torch.Tensor, num_units: int, generator, encode_ratio, decode_ratio,
                 scores: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Mask whole units (cells, timesteps, groups): every token of a unit shares its state.

    present (B, N), unit (N,) -> token states (B, N); a unit is eligible when any of its tokens is present.
    """
    B = present.shape[0]
    index = unit.expand(B, -1)
    unit_present = torch.zeros(B, num_units).scatter_reduce(1, index, present.float(), "amax").bool()
    if scores is None:
        scores = torch.rand(B, num_units, generator=generator)
    return assign_by_rank(scores, unit_present, encode_ratio, decode_ratio).gather(1, index)


def _merge_subset(states: torch.Tensor, subset: torch.Tensor, sub_states: torch.Tensor) -> torch.Tensor:
    """Take `sub_states` (B, n) for the tokens in `subset` (N,) bool."""
    out = states.clone()
    out[:, subset] = sub_states
    return out


# ---------------------------------------------------------------- strategies


@dataclass(frozen=True)
class MaskingStrategy:
    """Base: `__call__` assigns states, then enforces the ABSENT rule for every strategy."""

    encode_ratio: float = 0.5
    decode_ratio: float = 0.5

    def __post_init__(self) -> None:
        if not (0 < self.encode_ratio <= 1 and 0 <= self.decode_ratio < 1):
            raise ConfigError(f"{type(self).__name__}: encode_ratio must be in (0, 1] and decode_ratio in [0, 1), got {self.encode_ratio}, {self.decode_ratio}")
        if self.encode_ratio + self.decode_ratio > 1 + 1e-9:
            raise ConfigError(f"{type(self).__name__}: encode_ratio + decode_ratio = {self.encode_ratio + self.decode_ratio} > 1")

    def __call__(self, info: TokenInfo, generator: torch.Generator, step: int = 0) -> torch.Tensor:
        states = self.assign(info, generator, step)
        if states.shape != info.absent.shape:
            raise AssertionError(f"{type(self).__name__} returned states {tuple(states.shape)}, expected {tuple(info.absent.shape)}")
        return states.masked_fill(info.absent, ABSENT)

    def assign(self, info: TokenInfo, generator: torch.Generator, step: int) -> torch.Tensor:
        raise NotImplementedError

    def _random_tokens(self, present: torch.Tensor, generator) -> torch.Tensor:
        return assign_by_rank(torch.rand(present.shape, generator=generator), present, self.encode_ratio, self.decode_ratio)


@dataclass(frozen=True)
class RandomMasking(MaskingStrategy):
    """Each sample: exactly round(r * n) of its n present tokens per state, chosen uniformly."""

    def assign(self, info, generator, step):
        return self._random_tokens(~info.absent, generator)


@dataclass(frozen=True)
class RangeMasking(MaskingStrategy):
    """Random masking whose ratios are drawn per sample from [min, max] ranges."""

    min_encode_ratio: float = 0.1
    max_encode_ratio: float = 0.5
    min_decode_ratio: float = 0.3
    max_decode_ratio: float = 0.7

    def assign(self, info, generator, step):
        B = info.batch_size
        enc = self.min_encode_ratio + (self.max_encode_ratio - self.min_encode_ratio) * torch.rand(B, generator=generator, dtype=torch.float64)
        dec = self.min_decode_ratio + (self.max_decode_ratio - self.min_decode_ratio) * torch.rand(B, generator=generator, dtype=torch.float64)
        dec = torch.minimum(dec, 1.0 - enc)
        present = ~info.absent
        return assign_by_rank(torch.rand(present.shape, generator=generator), present, enc, dec)


@dataclass(frozen=True)
class SpatialMasking(MaskingStrategy):
    """Mask whole spatial cells: all sensors, groups and timesteps at a (row, col) share a state.

    Tokens of non-spatial sensors are masked randomly with the same ratios.
    """

    def assign(self, info, generator, step):
        present = ~info.absent
        cells, h, w = info.spatial_cells()
        nonspatial = info.tokens_of(info.nonspatial_sensors)
        states = _unit_states(present & ~nonspatial, cells, h * w, generator, self.encode_ratio, self.decode_ratio)
        if nonspatial.any():
            states = _merge_subset(states, nonspatial, self._random_tokens(present[:, nonspatial], generator))
        return states


@dataclass(frozen=True)
class BlockMasking(MaskingStrategy):
    """Spatial masking by contiguous `block_size` x `block_size` blocks of cells, at an exact ratio.

    Blocks are put in random order and cells taken in that order (cells within a
    block in random order): the visible cells are the last ones, the predicted
    cells the ones before them, so each state is whole blocks plus a partial
    block at its ends. That is the Pixio mask with its "adjust to the exact
    count" step.
    """

    block_size: int = 2

    def assign(self, info, generator, step):
        present = ~info.absent
        cells, h, w = info.spatial_cells()
        bh, bw = math.ceil(h / self.block_size), math.ceil(w / self.block_size)
        r, c = torch.arange(h * w) // w, torch.arange(h * w) % w
        block_of_cell = (r // self.block_size) * bw + c // self.block_size  # (h*w,)
        B = info.batch_size
        block_rank = torch.rand(B, bh * bw, generator=generator).argsort(1).argsort(1).double()
        # Lexicographic (block rank, cell noise) puts cells in block order. Negated, `assign_by_rank`
        # shows the last cells and predicts the ones before them: whole blocks and one partial block.
        order = block_rank[:, block_of_cell] + torch.rand(B, h * w, generator=generator, dtype=torch.float64) * 0.5
        nonspatial = info.tokens_of(info.nonspatial_sensors)
        states = _unit_states(present & ~nonspatial, cells, h * w, generator, self.encode_ratio, self.decode_ratio, scores=-order)
        if nonspatial.any():
            states = _merge_subset(states, nonspatial, self._random_tokens(present[:, nonspatial], generator))
        return states

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.block_size < 1:
            raise ConfigError(f"block_size must be >= 1, got {self.block_size}")


@dataclass(frozen=True)
class TemporalMasking(MaskingStrategy):
    """Mask whole timesteps: every token at time t shares a state. Static sensors are masked randomly."""

    def assign(self, info, generator, step):
        present = ~info.absent
        t_idx, T = info.timesteps()
        static = info.tokens_of(info.static_sensors)
        states = _unit_states(present & ~static, t_idx, T, generator, self.encode_ratio, self.decode_ratio)
        if static.any():
            states = _merge_subset(states, static, self._random_tokens(present[:, static], generator))
        return states


@dataclass(frozen=True)
class SpectralMasking(MaskingStrategy):
    """Mask whole spectral groups (bandsets): per sample, some groups are seen, others predicted."""

    def assign(self, info, generator, step):
        return _unit_states(~info.absent, info.group_index, len(info.group_sensors), generator, self.encode_ratio, self.decode_ratio)


@dataclass(frozen=True)
class CrossSensorMasking(MaskingStrategy):
    """`modality_cross_random`: random token masking, then per sample a disjoint choice of
    encoded and decoded bandsets (`unit="group"`) or sensors (`unit="sensor"`).

    Visible tokens of units that are not encoded and predicted tokens of units
    that are not decoded become TARGET_ONLY, so every prediction crosses from
    one bandset to another. Between `min_encoded` and `max_encoded` (default:
    all but one) of the encodable units are encoded; the rest are decoded.
    `decode_only_sensors` are never encoded. A sample with a single present
    unit falls back to plain random masking inside it.
    """

    unit: str = "group"
    min_encoded: int = 2
    max_encoded: int | None = None
    decode_only_sensors: tuple[str, ...] = ()

    def assign(self, info, generator, step):
        present = ~info.absent
        states = self._random_tokens(present, generator)
        unit_of_group, num_units, unit_sensor = _units(info, self.unit)
        unit = unit_of_group[info.group_index]  # (N,)
        unit_present = torch.zeros(info.batch_size, num_units).scatter_reduce(
            1, unit.expand(info.batch_size, -1), present.float(), "amax"
        ).bool()
        encodable = torch.tensor([s not in self.decode_only_sensors for s in unit_sensor])
        for b in range(info.batch_size):
            avail = torch.nonzero(unit_present[b]).flatten().tolist()
            enc_ok = [u for u in avail if encodable[u]]
            if len(avail) < 2 or not enc_ok:
                continue
            upper = min(len(enc_ok) - (1 if len(enc_ok) == len(avail) else 0), self.max_encoded or len(avail))
            lower = min(self.min_encoded, upper)
            k = lower + int(torch.randint(upper - lower + 1, (1,), generator=generator))
            order = torch.randperm(len(enc_ok), generator=generator)[:k].tolist()
            encoded = {enc_ok[i] for i in order}
            enc_tok = torch.tensor([u in encoded for u in range(num_units)])[unit]
            row = states[b]
            row[(row == VISIBLE) & ~enc_tok] = TARGET_ONLY
            row[(row == PREDICTED) & enc_tok] = TARGET_ONLY
        return states

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.unit not in ("group", "sensor"):
            raise ConfigError(f"cross-sensor masking unit must be 'group' or 'sensor', got {self.unit!r}")


@dataclass(frozen=True)
class RandomWithDecodeMasking(MaskingStrategy):
    """`random_with_decode`: decode-only sensors are predicted wherever present; every other
    bandset is given an encode or a decode role per sample (at least one of each when two
    or more are present), then random masking: `encode_ratio` of an encode-role bandset's
    tokens are visible, `decode_ratio` of a decode-role bandset's tokens predicted, the rest
    TARGET_ONLY."""

    decode_only_sensors: tuple[str, ...] = ()

    def assign(self, info, generator, step):
        present = ~info.absent
        B, G = info.batch_size, len(info.group_sensors)
        group_present = torch.zeros(B, G).scatter_reduce(1, info.group_index.expand(B, -1), present.float(), "amax").bool()
        decode_only = torch.tensor([s in self.decode_only_sensors for s in info.group_sensors])
        roles = torch.zeros(B, G, dtype=torch.bool)  # True = encode role
        for b in range(B):
            avail = torch.nonzero(group_present[b] & ~decode_only).flatten().tolist()
            if not avail:
                continue
            if len(avail) == 1:
                roles[b, avail[0]] = True
                continue
            coin = torch.rand(len(avail), generator=generator) < 0.5
            if coin.all() or not coin.any():  # keep one bandset of each role
                flip = int(torch.randint(len(avail), (1,), generator=generator))
                coin[flip] = ~coin[flip]
            roles[b, avail] = coin
        scores = torch.rand(present.shape, generator=generator)
        enc_role = roles[:, info.group_index]  # (B, N)
        dec_only = decode_only[info.group_index].expand(B, -1)
        single = (group_present & ~decode_only).sum(1) == 1  # one bandset: it is also decoded from itself
        visible = _within(scores, present & enc_role, self.encode_ratio)
        predicted = _within(scores, present & ~enc_role & ~dec_only, self.decode_ratio)
        if single.any():
            solo = self._random_tokens(present & enc_role, generator)
            predicted[single] = solo[single] == PREDICTED
            visible[single] = solo[single] == VISIBLE
        states = torch.full(present.shape, TARGET_ONLY, dtype=torch.int8)
        states[visible] = VISIBLE
        states[predicted | (present & dec_only)] = PREDICTED
        return states


def _within(scores: torch.Tensor, eligible: torch.Tensor, ratio: float) -> torch.Tensor:
    """(B, N) bool: exactly round(ratio * n) of each sample's eligible tokens (at least one)."""
    n = eligible.sum(1)
    k = torch.floor(n * ratio + 0.5).long()
    if ratio > 0:
        k = torch.where(n > 0, k.clamp(min=1), k)
    rank = scores.masked_fill(~eligible, math.inf).argsort(1).argsort(1)
    return (rank < k[:, None]) & eligible


def _units(info: TokenInfo, unit: str) -> tuple[torch.Tensor, int, list[str]]:
    """Unit index of each group, the number of units and the sensor of each unit."""
    if unit == "group":
        return torch.arange(len(info.group_sensors)), len(info.group_sensors), list(info.group_sensors)
    names = list(dict.fromkeys(info.group_sensors))
    return torch.tensor([names.index(s) for s in info.group_sensors]), len(names), names


@dataclass(frozen=True)
class DecodeOnly(MaskingStrategy):
    """Wrap a strategy so that `sensors` are never visible: their visible tokens are predicted instead."""

    inner: MaskingStrategy | None = None
    sensors: tuple[str, ...] = ()

    def assign(self, info, generator, step):
        states = self.inner(info, generator, step)
        only = info.tokens_of(self.sensors).expand_as(states)
        return states.masked_fill(only & (states == VISIBLE), PREDICTED)


@dataclass(frozen=True)
class ScheduledMasking(MaskingStrategy):
    """Run `inner` with ratios moving linearly from its own to (end_encode_ratio, end_decode_ratio)
    over `schedule_steps` optimizer steps (curriculum masking)."""

    inner: MaskingStrategy | None = None
    end_encode_ratio: float = 0.25
    end_decode_ratio: float = 0.75
    schedule_steps: int = 1000

    def ratios_at(self, step: int) -> tuple[float, float]:
        frac = min(max(step, 0) / max(self.schedule_steps, 1), 1.0)
        enc = self.inner.encode_ratio + (self.end_encode_ratio - self.inner.encode_ratio) * frac
        dec = self.inner.decode_ratio + (self.end_decode_ratio - self.inner.decode_ratio) * frac
        return enc, min(dec, 1.0 - enc)

    def assign(self, info, generator, step):
        enc, dec = self.ratios_at(step)
        return dataclasses.replace(self.inner, encode_ratio=enc, decode_ratio=dec)(info, generator, step)


@dataclass(frozen=True)
class CompositeMasking(MaskingStrategy):
    """Combine strategies.

    union         hidden where any part hides; predicted where any part predicts
    intersection  hidden only where every part hides; predicted where every part predicts
    cascade       each part masks only what the previous parts left visible
    """

    parts: tuple[MaskingStrategy, ...] = ()
    mode: str = "union"

    def assign(self, info, generator, step):
        if self.mode == "cascade":
            states = self.parts[0](info, generator, step)
            for part in self.parts[1:]:
                still = states == VISIBLE
                sub = part(dataclasses.replace(info, absent=info.absent | ~still), generator, step)
                states = torch.where(still, sub, states)
            return states
        all_states = torch.stack([p(info, generator, step) for p in self.parts])  # (P, B, N)
        if self.mode == "union":
            visible = (all_states == VISIBLE).all(0)
            predicted = (all_states == PREDICTED).any(0)
        else:
            visible = (all_states == VISIBLE).any(0)
            predicted = (all_states == PREDICTED).all(0)
        states = torch.full(info.absent.shape, TARGET_ONLY, dtype=torch.int8)
        states[predicted & ~visible] = PREDICTED
        states[visible] = VISIBLE
        return states

    def __post_init__(self) -> None:
        if self.mode not in ("union", "intersection", "cascade"):
            raise ConfigError(f"composite masking mode must be union, intersection or cascade, got {self.mode!r}")
        if not self.parts:
            raise ConfigError("composite masking needs at least one part (masking.parts)")


# ---------------------------------------------------------------- config


STRATEGIES = {
    "random": RandomMasking,
    "range": RangeMasking,
    "spatial": SpatialMasking,
    "block": BlockMasking,
    "temporal": TemporalMasking,
    "spectral": SpectralMasking,
    "modality_cross_random": CrossSensorMasking,
    "random_with_decode": RandomWithDecodeMasking,
    "scheduled": ScheduledMasking,
    "composite": CompositeMasking,
}


@dataclass
class MaskingConfig(Config):
    """Which strategy hides which tokens; `build()` makes the strategy."""

    #: One of: random, range, spatial, block, temporal, spectral, modality_cross_random,
    #: random_with_decode, scheduled, composite.
    strategy: str = "random"
    #: Fraction of present tokens (or cells, timesteps, bandsets) the encoder sees.
    encode_ratio: float = 0.5
    #: Fraction predicted (the loss is computed there); the rest is TARGET_ONLY.
    decode_ratio: float = 0.5
    #: Sensors never shown to the encoder, only predicted (e.g. ["era5"]).
    decode_only_sensors: list[str] = field(default_factory=list)
    #: block: side of a block, in patches (Pixio: 4 at 16 px patches).
    block_size: int = 2
    #: modality_cross_random: "group" (bandset) or "sensor", and how many units to encode.
    cross_unit: str = "group"
    min_encoded: int = 2
    max_encoded: int | None = None
    #: range: per-sample ratios drawn uniformly from these [min, max] ranges.
    encode_ratio_range: list[float] = field(default_factory=lambda: [0.1, 0.5])
    decode_ratio_range: list[float] = field(default_factory=lambda: [0.3, 0.7])
    #: scheduled: ratios move from parts[0]'s to these over schedule_steps.
    end_encode_ratio: float = 0.25
    end_decode_ratio: float = 0.75
    schedule_steps: int = 1000
    #: composite: the strategies combined, and how (union, intersection, cascade); scheduled: one part.
    parts: list[MaskingConfig] = field(default_factory=list)
    combine: str = "union"

    def build(self) -> MaskingStrategy:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown masking strategy {self.strategy!r}; choose one of {sorted(STRATEGIES)}")
        ratios = {"encode_ratio": self.encode_ratio, "decode_ratio": self.decode_ratio}
        decode_only = tuple(self.decode_only_sensors)
        s = self.strategy
        if s == "range":
            strategy: MaskingStrategy = RangeMasking(**ratios, min_encode_ratio=self.encode_ratio_range[0],
                max_encode_ratio=self.encode_ratio_range[1], min_decode_ratio=self.decode_ratio_range[0],
                max_decode_ratio=self.decode_ratio_range[1])  # fmt: skip
        elif s == "block":
            strategy = BlockMasking(**ratios, block_size=self.block_size)
        elif s == "modality_cross_random":
            strategy = CrossSensorMasking(**ratios, unit=self.cross_unit, min_encoded=self.min_encoded,
                                          max_encoded=self.max_encoded, decode_only_sensors=decode_only)  # fmt: skip
        elif s == "random_with_decode":
            return RandomWithDecodeMasking(**ratios, decode_only_sensors=decode_only)
        elif s == "scheduled":
            if len(self.parts) != 1:
                raise ConfigError("scheduled masking takes exactly one part: masking.parts=[{strategy: ...}]")
            strategy = ScheduledMasking(inner=self.parts[0].build(), end_encode_ratio=self.end_encode_ratio,
                                        end_decode_ratio=self.end_decode_ratio, schedule_steps=self.schedule_steps)  # fmt: skip
        elif s == "composite":
            strategy = CompositeMasking(parts=tuple(p.build() for p in self.parts), mode=self.combine)
        else:
            strategy = STRATEGIES[s](**ratios)
        if decode_only and s != "modality_cross_random":
            strategy = DecodeOnly(inner=strategy, sensors=decode_only)
        return strategy
