"""Write small GeoTIFFs for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine


def write_tif(path: Path, data: np.ndarray, *, crs: str | None = "EPSG:32632", res: float = 10.0,
              origin=(500000.0, 5000000.0), nodata=None, descriptions=None) -> Path:  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    count, height, width = data.shape
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=data.dtype,
                   transform=Affine(res, 0.0, origin[0], 0.0, -res, origin[1]), nodata=nodata)  # fmt: skip
    if crs:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if descriptions:
            dst.descriptions = tuple(descriptions)
    return path


def damage_zarr_shard_index(dataset: Path, shard: str, sensor: str) -> None:
    """Flip bits in the shard index (at the end of the shard file) of one sensor's array."""
    chunk_file = next((dataset / "shards" / shard / sensor).rglob("c/*/*/*/*/*"))
    payload = bytearray(chunk_file.read_bytes())
    payload[-10] ^= 0xFF
    chunk_file.write_bytes(bytes(payload))


def bands_of(sample, sensor: str) -> np.ndarray:
    """A sample's sensor as one (T, C, H, W) array in the sensor's band order (coarser grids repeated
    onto the finest, nearest); (T, C) for a non-spatial sensor."""
    from spacenit.data.images import to_one_grid
    from spacenit.sensors import REGISTRY

    return to_one_grid(sample.data[sensor], REGISTRY.get(sensor), mode="nearest")
