"""External encoders (Galileo nano, Presto) in the benchmark harness, registered as `galileo_nano` and `presto`.

    spacenit evaluate eurosat --baseline galileo_nano --baseline presto --baseline random_init

`ExternalAdapter` turns any `spacenit.external.ExternalEncoder` into an `EncoderAdapter`: it reads each
sample's raw values, acquisition months and pixel locations (`model_input`, the one function that reads
dataset pixels, so a change of the on-disk layout is adapted there), lets the encoder apply its own band
mapping and normalization, and hands the pooled vectors and per-patch maps to the probes. Its
`random_twin()` is the same port at the authors' initialization, for `--baseline random_init`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rasterio.warp import transform

from spacenit.data.format import SampleRecord
from spacenit.data.images import to_one_grid
from spacenit.data.shards import DatasetReader
from spacenit.evaluation.adapters import Features, _check_order, register_adapter
from spacenit.evaluation.datasets import Task
from spacenit.evaluation.errors import ProbeError
from spacenit.external import ExternalEncoder, load_external

#: Pixels encoded per batch (e.g. 32 EuroSAT chips of 64 x 64 px, 9 BigEarthNet patches of 120 x 120 px).
PIXELS_PER_BATCH = 2**17


@dataclass
class ModelInput:
    """One sample as an external encoder takes it (before batching)."""

    images: dict[str, np.ndarray]  # sensor -> (T, C, H, W) raw values on one grid, or (T, C) for non-spatial sensors
    months: dict[str, np.ndarray]  # sensor -> (T,) 1-12, 0 = unknown
    latlon: np.ndarray  # (H, W, 2) degrees per pixel centre, NaN without georeferencing


def model_input(reader: DatasetReader, index: int, sensors: tuple[str, ...]) -> ModelInput:
    """Sample `index` of `reader`: the `sensors` the encoder reads, every band on the dataset's reference
    grid (coarser grids upsampled bilinear: both models were trained on bands resampled to 10 m)."""
    sample = reader[index]
    tile = (reader.info.tile_size_px, reader.info.tile_size_px)
    images = {s: to_one_grid(sample.data[s], reader.info.sensors[s], size=tile) for s in sensors if s in sample.data}
    months = {s: _months(sample.record, s, len(x)) for s, x in images.items()}
    height, width = next(x.shape[-2:] for s, x in images.items() if reader.info.sensors[s].spatial)
    return ModelInput(images, months, pixel_latlon(sample.record, height, width))


def _months(record: SampleRecord, sensor: str, timesteps: int) -> np.ndarray:
    dates = record.dates.get(sensor) or [""] * timesteps
    return np.array([int(d[5:7]) if d else 0 for d in dates], dtype=np.int64)


def pixel_latlon(record: SampleRecord, height: int, width: int) -> np.ndarray:
    """(H, W, 2) latitude, longitude of each pixel centre of the sample's footprint; NaN without CRS or bounds."""
    if record.crs is None or record.bounds is None:
        return np.full((height, width, 2), np.nan, dtype=np.float32)
    left, bottom, right, top = record.bounds
    xs = left + (np.arange(width) + 0.5) * (right - left) / width
    ys = top - (np.arange(height) + 0.5) * (top - bottom) / height
    x, y = np.meshgrid(xs, ys)
    lon, lat = transform(record.crs, "EPSG:4326", x.ravel(), y.ravel())
    return np.stack([np.reshape(lat, (height, width)), np.reshape(lon, (height, width))], axis=-1).astype(np.float32)


class ExternalAdapter:
    """An `ExternalEncoder` as a benchmark model: pooled vectors, and patch tokens for the attentive probe."""

    def __init__(self, encoder: ExternalEncoder) -> None:
        self.encoder = encoder
        self.name = encoder.name

    def random_twin(self, seed: int = 0) -> ExternalAdapter:
        return ExternalAdapter(self.encoder.random_twin(seed))

    def features(self, task: Task, *, patch_tokens: bool = False) -> Features:
        reader = DatasetReader(task.dataset_dir)
        _check_order(reader, task)
        sensors = tuple(s for s in reader.info.sensors if s in self.encoder.sensors)
        if not sensors:
            raise ProbeError(f"{self.name} reads {list(self.encoder.sensors)}; {task.dataset_dir} has only {list(reader.info.sensors)}")
        batch = max(1, PIXELS_PER_BATCH // reader.info.tile_size_px**2)
        bands = {s: reader.info.sensors[s].bands for s in sensors}
        pooled, tokens = [], []
        for start in range(0, len(reader), batch):
            samples = [model_input(reader, i, sensors) for i in range(start, min(start + batch, len(reader)))]
            out = self.encoder.encode({s: np.stack([x.images[s] for x in samples]) for s in sensors},
                                      {s: np.stack([x.months[s] for x in samples]) for s in sensors},
                                      reader.info.gsd_m, latlon=np.stack([x.latlon for x in samples]), bands=bands)  # fmt: skip
            pooled.append(out.pooled)
            if patch_tokens:
                tokens.append(out.patches.reshape(len(samples), -1, out.patches.shape[-1]))  # NaN rows: no data
        return Features(np.concatenate(pooled), np.concatenate(tokens) if patch_tokens else None)


@register_adapter("galileo_nano")
def galileo_nano() -> ExternalAdapter:
    """Galileo nano with its published weights (spacenit/external/galileo.py)."""
    return ExternalAdapter(load_external("galileo_nano"))


@register_adapter("presto")
def presto() -> ExternalAdapter:
    """Presto with its published weights (spacenit/external/presto.py)."""
    return ExternalAdapter(load_external("presto"))
