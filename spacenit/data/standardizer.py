"""Per-band normalization with stats.json, keeping the sentinel where it is.

Two methods:

* ``zscore`` (default): (x - mean) / std.
* ``two_std``: the scaling of OlmoEarth and Galileo, which maps mean - 2 std to 0
  and mean + 2 std to 1: (x - (mean - 2 std)) / (4 std).

Categorical sensors (class codes) pass through unchanged: a z-scored class
code means nothing. A band flagged constant in the stats (std 0: one value, or
none) is divided by 1 instead of its std; any other std that is not a finite
number > 0, or a mean that is not finite, is refused (`SensorStats.check`).
"""

from __future__ import annotations

import numpy as np

from spacenit.data.stats import SensorStats, StatsError
from spacenit.sensors import SENTINEL, SensorSpec

METHODS = ("zscore", "two_std")


class Standardizer:
    """Normalize each band with its own stats, selected by band name; sentinel positions stay sentinel.

    Refuses stats that lack a band of the data, since a silent mismatch would
    normalize one band with another band's numbers, and stats whose values
    cannot standardize a band (NaN, infinite, negative or unflagged zero std).
    """

    def __init__(self, stats: dict[str, SensorStats], sensors: dict[str, SensorSpec], method: str = "zscore") -> None:
        if method not in METHODS:
            raise StatsError(f"unknown normalization method {method!r}; use one of {METHODS}")
        self.method = method
        self._specs = dict(sensors)
        #: sensor -> (offset, scale): normalized = (x - offset) / scale; None for categorical sensors.
        self.affine: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}
        for name, spec in sensors.items():
            self.affine[name] = None if spec.categorical else self._affine(name, spec, stats)

    def _affine(self, name: str, spec: SensorSpec, stats: dict[str, SensorStats]) -> tuple[np.ndarray, np.ndarray]:
        if name not in stats:
            raise StatsError(f"the stats have no entry for sensor {name!r}; re-run `spacenit stats` on this dataset")
        s = stats[name]
        missing = [b for b in spec.bands if b not in s.bands]
        if missing:
            raise StatsError(
                f"{s.source}: stats bands for {name!r} are {list(s.bands)}, the data has {list(spec.bands)} "
                f"(no stats for {missing}); these stats belong to another dataset"
            )
        s.check(name)
        order = [list(s.bands).index(b) for b in spec.bands]  # by name, whatever the stats' order
        mean = s.mean[order]
        std = np.where(s.constant[order], 1.0, s.std[order])  # a constant band: x - mean
        if self.method == "two_std":
            return (mean - 2 * std).astype(np.float32), (4 * std).astype(np.float32)
        return mean.astype(np.float32), std.astype(np.float32)

    def __call__(self, sensor: str, array: np.ndarray, bands: tuple[str, ...] | None = None) -> np.ndarray:
        """`array` is (..., C, H, W) (spatial) or (..., C) raw values of `bands` (default: all of the
        sensor's, in its order; a grid's bands for one grid); returns float32 of the same shape."""
        affine = self.affine[sensor]
        if affine is None:
            return array.astype(np.float32, copy=False)
        offset, scale = affine
        spec = self._specs[sensor]
        if bands is not None:
            index = spec.band_index(bands)
            offset, scale = offset[index], scale[index]
        # Bands are axis -3 of a spatial array ((..., C, H, W)), the last of a non-spatial one.
        shape = [1] * array.ndim
        shape[array.ndim - 3 if spec.spatial else array.ndim - 1] = -1
        missing = array == SENTINEL
        out = (array - offset.reshape(shape)) / scale.reshape(shape)
        out[missing] = SENTINEL
        return out.astype(np.float32, copy=False)
