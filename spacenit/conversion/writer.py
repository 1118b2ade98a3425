"""Write a dataset from arrays already in memory: for sources that are not GeoTIFFs.

`convert` reads GeoTIFFs; some published datasets ship bare arrays instead
(BigEarthNet v1's per-band .npz, So2Sat's HDF5, PASTIS' .npy). Their readers
yield (record, arrays) pairs and `write_dataset` stores them in the project's
format: shards of `samples_per_shard` written atomically, `dataset.json` last,
under the dataset lock, exactly as `convert` lays them out.

    write_dataset(out, sensors, grids, num_timesteps, samples, tile_size_px=120, gsd_m=10.0)

`arrays` maps array keys (`spacenit.data.shards.array_key(sensor, grid)`, and
`label_raster`) to one sample's array: (T, C_g, H_g, W_g), (T, C) or (H, W).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from spacenit.data.format import (
    DATASET_JSON,
    DatasetInfo,
    LabelRasterSpec,
    SampleRecord,
    dataset_lock,
    save_dataset_info,
)
from spacenit.data.shards import SHARD_SUFFIX, array_key, remove_shard, write_shard
from spacenit.sensors import Grid, SensorSpec

SHARDS_DIR = "shards"


def write_dataset(
    out: str | Path,
    sensors: dict[str, SensorSpec],
    grids: dict[str, tuple[Grid, ...]],
    num_timesteps: dict[str, int],
    samples: Iterable[tuple[SampleRecord, dict[str, np.ndarray]]],
    *,
    tile_size_px: int,
    gsd_m: float,
    storage: str = "zarr",
    layout: str = "native",
    label_raster: LabelRasterSpec | None = None,
    samples_per_shard: int = 64,
) -> DatasetInfo:
    """Write `samples` as a dataset at `out` (replacing one there) and return its info."""
    out = Path(out)
    with dataset_lock(out, "write_dataset"):
        (out / DATASET_JSON).unlink(missing_ok=True)
        shard_dir = out / SHARDS_DIR
        shard_dir.mkdir(parents=True, exist_ok=True)
        for old in shard_dir.iterdir():
            remove_shard(old)
        keys = [array_key(name, g.name) for name in sensors for g in grids[name]]
        keys += ["label_raster"] if label_raster is not None else []
        records: list[SampleRecord] = []
        pending: list[tuple[SampleRecord, dict[str, np.ndarray]]] = []

        def flush() -> None:
            name = f"{SHARDS_DIR}/shard-{len(records) // samples_per_shard:05d}{SHARD_SUFFIX[storage]}"
            for row, (record, _) in enumerate(pending):
                record.shard, record.row = name, row
            arrays = {key: np.stack([arrays[key] for _, arrays in pending]).astype(np.float32) for key in keys}
            attrs = {"records": [{k: v for k, v in r.to_dict().items() if k != "shard"} for r, _ in pending],
                     "failures": []}  # fmt: skip
            write_shard(out / name, arrays, attrs, storage)
            records.extend(r for r, _ in pending)
            pending.clear()

        for record, arrays in samples:
            missing = [key for key in keys if key not in arrays]
            if missing:
                raise ValueError(f"sample {record.id!r} lacks the array(s) {missing}")
            pending.append((record, arrays))
            if len(pending) == samples_per_shard:
                flush()
        if pending:
            flush()
        info = DatasetInfo(sensors=dict(sensors), tile_size_px=tile_size_px, gsd_m=gsd_m, num_timesteps=dict(num_timesteps),
                           samples=records, grids=dict(grids), storage=storage, layout=layout,
                           label_raster=label_raster)  # fmt: skip
        save_dataset_info(out, info)
    return info
