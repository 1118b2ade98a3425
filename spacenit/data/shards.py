"""Shard storage: write a shard atomically, read samples back.

A shard holds a group of samples. Inside it, each sensor is one array
`(N, T, C, H, W)` (spatial) or `(N, T, C)` (non-spatial), chunked one sample
per chunk so a sample is one read, and stored with the Zarr v3 sharding codec
so a shard is one file per sensor instead of one file per chunk.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from spacenit.data.format import DatasetInfo, SampleRecord, load_dataset_info
from spacenit.sensors import SENTINEL


def write_zarr_shard(path: Path, arrays: dict[str, np.ndarray], attrs: dict | None = None) -> None:
    """Write `arrays` (sensor -> (N, ...)) and `attrs` as one Zarr v3 group, atomically.

    The group is built under a temporary name beside `path` and renamed into
    place, so an interrupted write never leaves a half shard under `path`.
    """
    path = Path(path)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        group = zarr.open_group(store=str(tmp), mode="w", zarr_format=3)
        group.attrs.update(attrs or {})
        for name, data in arrays.items():
            data = np.ascontiguousarray(data, dtype=np.float32)
            chunk = (1, *data.shape[1:])
            arr = group.create_array(
                name,
                shape=data.shape,
                chunks=chunk,
                shards=data.shape,
                dtype="float32",
                compressors=ZstdCodec(level=3),
                fill_value=SENTINEL,
            )
            arr[...] = data
        if path.exists():  # a stale shard from an older run: replace it whole
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass
class Sample:
    """One sample as stored: raw values, sentinel where missing."""

    record: SampleRecord
    #: sensor -> (T, C, H, W) float32 for spatial sensors, (T, C) otherwise.
    data: dict[str, np.ndarray]

    @property
    def id(self) -> str:
        return self.record.id


class DatasetReader:
    """Random access to the samples of a converted dataset.

    Opens shards lazily and keeps them open; safe to use from DataLoader
    workers (each worker opens its own handles after fork).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.info: DatasetInfo = load_dataset_info(self.root)
        self._open: dict[str, zarr.Group] = {}

    def __len__(self) -> int:
        return len(self.info.samples)

    @property
    def records(self) -> list[SampleRecord]:
        return self.info.samples

    def _group(self, shard: str) -> zarr.Group:
        group = self._open.get(shard)
        if group is None:
            path = (self.root / shard).resolve()
            if not path.is_relative_to(self.root.resolve()):
                raise ValueError(f"shard path {shard!r} in {self.root}/dataset.json escapes the dataset root")
            group = zarr.open_group(store=str(path), mode="r")
            self._open[shard] = group
        return group

    def __getitem__(self, index: int) -> Sample:
        record = self.info.samples[index]
        group = self._group(record.shard)
        data = {name: np.asarray(group[name][record.row]) for name in self.info.sensors}
        return Sample(record=record, data=data)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]
