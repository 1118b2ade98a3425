"""Torch dataset over a converted dataset: standardized tensors plus what they are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from spacenit.data.shards import DatasetReader
from spacenit.data.standardizer import Standardizer
from spacenit.data.stats import SensorStats


def months_of(dates: list[str]) -> np.ndarray:
    """ISO dates -> month numbers 1-12; 0 where the date is unknown or the timestep missing."""
    return np.array([int(d[5:7]) if len(d) >= 7 else 0 for d in dates], dtype=np.int64)


class GeoTileDataset(Dataset):
    """Item i: {"images": {sensor: (T, C, H, W)}, "months": {sensor: (T,)}, "index": i}.

    Images are standardized with the given stats; missing values stay at the
    sentinel so the tokenizer can tell absent patches from real ones.
    """

    def __init__(self, root: str | Path, stats: dict[str, SensorStats], sensors: list[str] | None = None) -> None:
        self.reader = DatasetReader(root)
        self.sensor_names = sensors or list(self.reader.info.sensors)
        specs = {name: self.reader.info.sensors[name] for name in self.sensor_names}
        self.standardize = Standardizer(stats, specs)

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> dict:
        sample = self.reader[index]
        images = {name: torch.from_numpy(self.standardize(name, sample.data[name])) for name in self.sensor_names}
        months = {name: torch.from_numpy(months_of(sample.record.dates.get(name, [""]))) for name in self.sensor_names}
        return {"images": images, "months": months, "index": index}


def collate(items: list[dict]) -> dict:
    """Stack a list of items; every sample of a dataset shares its shapes."""
    sensors = items[0]["images"].keys()
    return {
        "images": {s: torch.stack([it["images"][s] for it in items]) for s in sensors},
        "months": {s: torch.stack([it["months"][s] for it in items]) for s in sensors},
        "index": torch.tensor([it["index"] for it in items]),
    }
