"""The `stats` stage: per-sensor, per-band normalization statistics.

One streaming pass over the dataset. Each band keeps (count, mean, M2, min,
max) in float64 and batches are folded in with Chan et al.'s parallel update,
so partial results from any number of workers merge exactly. The sentinel
(-99999) never counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from spacenit.data.format import DATASET_JSON, write_json_atomic
from spacenit.data.shards import DatasetReader
from spacenit.sensors import SENTINEL

STATS_JSON = "stats.json"
STATS_VERSION = 1


class StatsError(ValueError):
    """A stats file that is missing, malformed, or does not fit the data."""


@dataclass
class RunningMoments:
    """Count, mean, M2 (sum of squared deviations), min and max per band; mergeable."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @classmethod
    def empty(cls, num_bands: int) -> RunningMoments:
        z = np.zeros(num_bands, dtype=np.float64)
        return cls(z.copy(), z.copy(), z.copy(), np.full(num_bands, np.inf), np.full(num_bands, -np.inf))

    @classmethod
    def of(cls, values: np.ndarray) -> RunningMoments:
        """Moments of `values` (C, N) with the sentinel excluded."""
        values = values.astype(np.float64, copy=False)
        valid = values != SENTINEL
        count = valid.sum(axis=1).astype(np.float64)
        safe = np.where(valid, values, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, safe.sum(axis=1) / np.maximum(count, 1), 0.0)
        dev = np.where(valid, values - mean[:, None], 0.0)
        m2 = (dev * dev).sum(axis=1)
        lo = np.where(valid, values, np.inf).min(axis=1)
        hi = np.where(valid, values, -np.inf).max(axis=1)
        return cls(count, mean, m2, lo, hi)

    def merge(self, other: RunningMoments) -> RunningMoments:
        """Chan et al. (1979): combine two partial results exactly."""
        n = self.count + other.count
        delta = other.mean - self.mean
        with np.errstate(invalid="ignore", divide="ignore"):
            w = np.where(n > 0, other.count / np.maximum(n, 1), 0.0)
        mean = self.mean + delta * w
        m2 = self.m2 + other.m2 + delta * delta * self.count * w
        return RunningMoments(n, mean, m2, np.minimum(self.min, other.min), np.maximum(self.max, other.max))

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation (ddof=0)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(np.where(self.count > 0, self.m2 / np.maximum(self.count, 1), 0.0))


def band_values(array: np.ndarray) -> np.ndarray:
    """(T, C, H, W) or (T, C) -> (C, N): every value of each band."""
    channels = array.shape[1]
    return np.moveaxis(array, 1, 0).reshape(channels, -1)


def compute_stats(dataset_dir: str | Path, output_path: str | Path | None = None, *, progress: bool = True) -> Path:
    """Compute stats over every sample of the dataset and write `stats.json`.

    Returns the path written (default `<dataset_dir>/stats.json`).
    """
    reader = DatasetReader(dataset_dir)
    info = reader.info
    moments = {name: RunningMoments.empty(spec.num_bands) for name, spec in info.sensors.items()}
    for sample in tqdm(reader, total=len(reader), desc="stats", unit="sample", disable=not progress):
        for name, array in sample.data.items():
            moments[name] = moments[name].merge(RunningMoments.of(band_values(array)))

    fingerprint = _fingerprint(Path(dataset_dir))
    payload = {
        "stats_version": STATS_VERSION,
        "dataset_fingerprint": fingerprint,
        "num_samples": len(reader),
        "sensors": {
            name: {
                "bands": list(info.sensors[name].bands),
                "count": m.count.astype(np.int64).tolist(),
                "mean": m.mean.tolist(),
                "std": m.std.tolist(),
                "min": [float(v) if np.isfinite(v) else None for v in m.min],
                "max": [float(v) if np.isfinite(v) else None for v in m.max],
            }
            for name, m in moments.items()
        },
    }
    out = Path(output_path) if output_path else Path(dataset_dir) / STATS_JSON
    write_json_atomic(out, payload)
    return out


def _fingerprint(dataset_dir: Path) -> str:
    import hashlib

    return hashlib.sha256((dataset_dir / DATASET_JSON).read_bytes()).hexdigest()[:16]


@dataclass
class SensorStats:
    bands: list[str]
    mean: np.ndarray
    std: np.ndarray


def load_stats(path: str | Path) -> dict[str, SensorStats]:
    """Read stats.json; errors name the file and the command that makes it."""
    path = Path(path)
    if not path.is_file():
        raise StatsError(f"stats file {path} does not exist; create it with `spacenit stats DATASET_DIR`")
    try:
        payload = json.loads(path.read_text())
        return {
            name: SensorStats(list(s["bands"]), np.asarray(s["mean"], np.float64), np.asarray(s["std"], np.float64))
            for name, s in payload["sensors"].items()
        }
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise StatsError(f"{path} is not a SpaceNit stats file ({e}); re-create it with `spacenit stats`") from None
