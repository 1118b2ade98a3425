"""Per-band standardization with stats.json, keeping the sentinel where it is."""

from __future__ import annotations

import numpy as np

from spacenit.data.stats import SensorStats, StatsError
from spacenit.sensors import SENTINEL, SensorSpec


class Standardizer:
    """z-score each band: (x - mean) / std; sentinel positions stay sentinel.

    Refuses stats whose band list differs from the sensor's, since a silent
    mismatch would normalize one band with another band's numbers.
    """

    def __init__(self, stats: dict[str, SensorStats], sensors: dict[str, SensorSpec]) -> None:
        self.mean: dict[str, np.ndarray] = {}
        self.std: dict[str, np.ndarray] = {}
        for name, spec in sensors.items():
            if name not in stats:
                raise StatsError(f"the stats have no entry for sensor {name!r}; re-run `spacenit stats` on this dataset")
            s = stats[name]
            if list(s.bands) != list(spec.bands):
                raise StatsError(
                    f"stats bands for {name!r} are {s.bands}, the data has {list(spec.bands)}; "
                    "these stats belong to another dataset"
                )
            self.mean[name] = s.mean.astype(np.float32)
            # A constant band has std 0: divide by 1 instead of blowing up.
            self.std[name] = np.where(s.std > 0, s.std, 1.0).astype(np.float32)

    def __call__(self, sensor: str, array: np.ndarray) -> np.ndarray:
        """`array` is (T, C, ...) raw values; returns float32 of the same shape."""
        shape = (1, -1) + (1,) * (array.ndim - 2)
        missing = array == SENTINEL
        out = (array - self.mean[sensor].reshape(shape)) / self.std[sensor].reshape(shape)
        out[missing] = SENTINEL
        return out.astype(np.float32, copy=False)
