"""Feeding data to a model whose sensors it was not converted for: bands are matched by name.

A model knows its sensors and their band names (checkpoint metadata). Data
from a dataset, a GeoTIFF scene or a served request comes with its own band
names. `SensorBinding` says, for each band of a model sensor, which data band
feeds it; bands the data lacks are filled with the missing-value sentinel,
which the tokenizer treats as no data. Examples: a Sentinel-2 L1C model on
L2A data (no B10), a Landsat model on a 6-band surface-reflectance scene.

Data arrives as each sensor's grids ({Grid: array}, `spacenit.data.images`), or
as one array of the sensor's bands; the binding keeps every band on the grid it
came on, at its native resolution, and places the bands the data lacks (all
sentinel) on the finest grid.

By default the binding is strict (same sensor name, same bands), so a
mismatch is an error naming both band lists rather than a silent zero-fill.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from spacenit.data.images import as_grids
from spacenit.data.standardizer import Standardizer
from spacenit.data.stats import SensorStats
from spacenit.sensors import SENTINEL, Grid, SensorSpec


class InputBindingError(ValueError):
    """Data that does not carry what the model needs."""


@dataclass(frozen=True)
class SensorBinding:
    model_sensor: SensorSpec
    #: Name of the data's sensor that feeds it.
    data_sensor: str
    #: For each band of the model sensor, the index of the data band, or -1 when the data lacks it.
    band_index: tuple[int, ...]
    #: The data sensor's band names, in its order.
    data_bands: tuple[str, ...] = ()

    @property
    def bands(self) -> tuple[str, ...]:
        """The data's band names (what `as_grids` reads of a sensor)."""
        return self.data_bands

    @property
    def missing_bands(self) -> list[str]:
        return [b for b, i in zip(self.model_sensor.bands, self.band_index, strict=True) if i < 0]

    def select(self, array: np.ndarray) -> np.ndarray:
        """Data (..., C_data, H, W) -> model-ordered bands (..., C_model, H, W), sentinel where missing."""
        index = np.asarray(self.band_index)
        out = np.take(array, np.maximum(index, 0), axis=-3).astype(np.float32, copy=True)
        out[..., index < 0, :, :] = SENTINEL
        return out

    def select_grids(self, grids: dict[Grid, np.ndarray]) -> dict[Grid, np.ndarray]:
        """The data's grids -> the model's bands on those grids (each band where the data has it);
        bands the data lacks are added, all sentinel, to the finest grid. Arrays are (..., C, H, W)
        for a spatial sensor, (..., C) otherwise."""
        axis = -3 if self.model_sensor.spatial else -1
        wanted = set(self.model_sensor.bands)
        out: dict[Grid, np.ndarray] = {}
        for grid, x in grids.items():
            keep = [i for i, b in enumerate(grid.bands) if b in wanted]
            if keep:
                bands = tuple(grid.bands[i] for i in keep)
                out[Grid(grid.name, bands, grid.gsd_m)] = np.take(x, keep, axis=axis).astype(np.float32)
        missing = self.missing_bands
        if missing:
            if not out:
                raise InputBindingError(f"sensor {self.model_sensor.name!r}: the data has none of its bands")
            finest = min(out, key=lambda g: g.gsd_m)
            x = out.pop(finest)
            filler_shape = list(x.shape)
            filler_shape[axis] = len(missing)
            filler = np.full(filler_shape, SENTINEL, np.float32)
            grown = Grid(finest.name, finest.bands + tuple(missing), finest.gsd_m)
            out = {grown: np.concatenate([x, filler], axis=axis), **out}
        return out


def bind_sensors(
    model_sensors: list[SensorSpec],
    data_bands: Mapping[str, list[str] | tuple[str, ...]],
    *,
    sensor_map: Mapping[str, str] | None = None,
    allow_missing_bands: bool = False,
) -> list[SensorBinding]:
    """Bind each model sensor to a data sensor (`sensor_map`: model name -> data name; default same name).

    `data_bands`: data sensor name -> its band names in storage order.
    """
    sensor_map = dict(sensor_map or {})
    unknown = sorted(set(sensor_map) - {s.name for s in model_sensors})
    if unknown:
        raise InputBindingError(
            f"the sensor map names model sensor(s) {unknown}, which the model does not have "
            f"(it has {[s.name for s in model_sensors]}); map MODEL_SENSOR=DATA_SENSOR"
        )
    bindings = []
    for spec in model_sensors:
        source = sensor_map.get(spec.name, spec.name)
        if source not in data_bands:
            raise InputBindingError(
                f"the model needs sensor {spec.name!r}, which the data does not have (it has {sorted(data_bands)}); "
                "name the data sensor that should feed it with a sensor map (model=data)"
            )
        have = list(data_bands[source])
        index = tuple(have.index(b) if b in have else -1 for b in spec.bands)
        binding = SensorBinding(spec, source, index, tuple(have))
        if binding.missing_bands and (not allow_missing_bands or all(i < 0 for i in index)):
            raise InputBindingError(
                f"sensor {spec.name!r}: the model expects bands {list(spec.bands)}, the data ({source!r}) has {have}"
                + ("" if allow_missing_bands else "; allow missing bands to fill the others with no-data")
            )
        bindings.append(binding)
    return bindings


class ModelInputs:
    """Raw data arrays -> standardized model inputs, for one set of bindings and stats."""

    def __init__(self, bindings: list[SensorBinding], stats: dict[str, SensorStats]) -> None:
        self.bindings = bindings
        self.standardize = Standardizer(stats, {b.model_sensor.name: b.model_sensor for b in bindings})

    @property
    def sensor_names(self) -> list[str]:
        return [b.model_sensor.name for b in self.bindings]

    def sample(self, data: Mapping[str, dict[Grid, np.ndarray]]) -> dict[str, dict[Grid, np.ndarray]]:
        """One sample: data sensor -> {Grid: (T, C_g, H_g, W_g)} raw -> model sensor -> its bands
        on the same grids, standardized."""
        out = {}
        for b in self.bindings:
            name = b.model_sensor.name
            out[name] = {g: self.standardize(name, x, g.bands) for g, x in b.select_grids(data[b.data_sensor]).items()}
        return out

    def batch(self, data: Mapping[str, dict[Grid, np.ndarray] | np.ndarray], gsd_m: float) -> dict[str, dict[Grid, torch.Tensor]]:
        """A batch: data sensor -> {Grid: (B, T, C_g, H_g, W_g)}, or one (B, T, C, H, W) array of its bands
        on a grid of `gsd_m`, raw -> model sensor -> standardized tensors on the same grids."""
        out = {}
        for b in self.bindings:
            name = b.model_sensor.name
            grids = as_grids(data[b.data_sensor], b, gsd_m)  # a plain array: the data sensor's bands
            out[name] = {g: torch.from_numpy(np.ascontiguousarray(self.standardize(name, x, g.bands)))
                         for g, x in b.select_grids(grids).items()}  # fmt: skip
        return out
