"""Encoders under evaluation, behind one interface so every model meets the same probes.

An adapter turns the samples of a task into features: pooled vectors (N, D)
and, when asked, patch tokens (N, L, D) with NaN rows for cells without data.
Built in:

- `SpaceNitAdapter`: a SpaceNit checkpoint (or `models:/` URI). Its
  `random_twin()` is the same architecture, sensors and normalization at
  random initialization: what pretraining has to beat.
- `RawPixelAdapter`: per band mean and standard deviation of the
  standardized pixels; the "no model at all" baseline.

External encoders implement `EncoderAdapter` (a `name` and
`features(task, patch_tokens=...)`) and are registered with `register_adapter`
(Galileo nano and Presto: external_adapters.py), or passed to
`spacenit evaluate --adapter module:factory`.
"""

from __future__ import annotations

import hashlib
import importlib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from spacenit.arch.models import SpaceNitModel
from spacenit.data.images import to_one_grid
from spacenit.data.shards import DatasetReader
from spacenit.data.standardizer import Standardizer
from spacenit.data.stats import load_stats
from spacenit.evaluation.datasets import Task
from spacenit.evaluation.embed import (
    ModelInputDataset,
    extract,
    make_loader,
    model_inputs_for,
    resolve_model,
)
from spacenit.evaluation.pooling import check_pooling
from spacenit.sensors import SENTINEL
from spacenit.train.checkpoint import CheckpointMeta, load_checkpoint


@dataclass
class Features:
    pooled: np.ndarray  # (N, D)
    #: (N, L, D) patch tokens, NaN rows where a cell has no data; None when not extracted.
    tokens: np.ndarray | None = None


class EncoderAdapter(Protocol):
    #: Identifies the model in the results store: change it when the weights change.
    name: str

    def features(self, task: Task, *, patch_tokens: bool = False) -> Features: ...


ADAPTERS: dict[str, Callable[[], EncoderAdapter]] = {}


def register_adapter(name: str) -> Callable:
    """Decorator: make a zero-argument adapter factory available by `name`."""

    def wrap(factory: Callable[[], EncoderAdapter]) -> Callable[[], EncoderAdapter]:
        ADAPTERS[name] = factory
        return factory

    return wrap


def build_adapter(spec: str) -> EncoderAdapter:
    """A registered adapter by name, or `package.module:factory` imported and called."""
    import spacenit.evaluation.external_adapters  # noqa: F401  (registers galileo_nano and presto)

    if spec in ADAPTERS:
        return ADAPTERS[spec]()
    if ":" in spec:
        module, _, attr = spec.partition(":")
        return getattr(importlib.import_module(module), attr)()
    raise KeyError(f"unknown adapter {spec!r}; registered: {sorted(ADAPTERS)}, or give package.module:factory")


def _weights_fingerprint(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:8]


def auto_sensor_map(meta: CheckpointMeta, dataset_dir: Path) -> dict[str, str]:
    """Model sensor -> the dataset sensor sharing most of its band names (same name first)."""
    from spacenit.data.format import load_dataset_info

    data = load_dataset_info(dataset_dir).sensors
    mapping = {}
    for spec in meta.sensors:
        if spec.name in data:
            mapping[spec.name] = spec.name
            continue
        overlap = {name: len(set(spec.bands) & set(s.bands)) for name, s in data.items()}
        best = max(overlap, key=overlap.get, default=None)
        if best is not None and overlap[best] > 0:
            mapping[spec.name] = best
    return mapping


class SpaceNitAdapter:
    """A SpaceNit encoder; with `sensor_map="auto"` it runs on related sensors (missing bands = no data).
    `pooling` ("mean", "cls", "both": `pooling.py`) is part of the default name."""

    def __init__(self, model: SpaceNitModel, meta: CheckpointMeta, *, name: str | None = None,
                 sensor_map: Mapping[str, str] | str | None = None, batch_size: int = 32,
                 num_workers: int | None = None, pooling: str = "mean") -> None:  # fmt: skip
        self.model, self.meta = model.eval(), meta
        self.pooling = check_pooling(pooling, model)
        self.name = name or f"spacenit-{_weights_fingerprint(model)}" + ("" if pooling == "mean" else f"[{pooling}]")
        self.sensor_map = sensor_map
        self.batch_size, self.num_workers = batch_size, num_workers

    @classmethod
    def from_checkpoint(cls, model: str | Path, *, name: str | None = None, tracking_uri: str | None = None, **options) -> SpaceNitAdapter:
        net, meta = load_checkpoint(resolve_model(model, tracking_uri))
        return cls(net, meta, name=name, **options)

    def random_twin(self, seed: int = 0) -> SpaceNitAdapter:
        """Same architecture, sensors and stats, weights at initialization (seeded)."""
        torch.manual_seed(seed)
        twin = SpaceNitModel(self.meta.model, self.meta.sensors)
        return SpaceNitAdapter(twin, self.meta, name=f"random-init({self.name},seed={seed})", sensor_map=self.sensor_map,
                               batch_size=self.batch_size, num_workers=self.num_workers, pooling=self.pooling)  # fmt: skip

    def inputs_dataset(self, task: Task) -> ModelInputDataset:
        if self.sensor_map == "auto":
            sensor_map, allow_missing = auto_sensor_map(self.meta, task.dataset_dir), True
        else:
            sensor_map, allow_missing = self.sensor_map, self.sensor_map is not None
        inputs = model_inputs_for(self.meta, task.dataset_dir, sensor_map=sensor_map, allow_missing_bands=allow_missing)
        return ModelInputDataset(task.dataset_dir, inputs)

    def features(self, task: Task, *, patch_tokens: bool = False) -> Features:
        dataset = self.inputs_dataset(task)
        _check_order(dataset.reader, task)
        loader = make_loader(dataset, self.batch_size, self.num_workers)
        pooled, maps, valid = extract(self.model, self.meta.patch_size, loader, patch_maps=patch_tokens,
                                      gsd_m=dataset.reader.info.gsd_m, pooling=self.pooling)  # fmt: skip
        if not patch_tokens:
            return Features(pooled)
        tokens = np.where(valid[..., None], maps, np.nan).reshape(len(maps), -1, maps.shape[-1])
        return Features(pooled, tokens.astype(np.float32))


def _check_order(reader: DatasetReader, task: Task) -> None:
    ids = [r.id for r in reader.records]
    if ids != task.ids:
        raise ValueError(f"{task.dataset_dir}: sample order differs from the task's ({len(ids)} vs {len(task.ids)} ids)")


@register_adapter("raw_pixels")
class RawPixelAdapter:
    """Per band mean and std of the standardized pixels (over space and time); tokens: per-patch band means.

    Standardized with the dataset's own stats.json (a transfer task's test side: the training
    side's), like a model's inputs, so no band dominates the cosine similarity by its units alone.
    """

    name = "raw_pixels"

    def __init__(self, patch_size: int = 8) -> None:
        self.patch_size = patch_size

    def features(self, task: Task, *, patch_tokens: bool = False) -> Features:
        reader = DatasetReader(task.dataset_dir)
        _check_order(reader, task)
        specs = reader.info.sensors
        self._tile_px = reader.info.tile_size_px
        standardize = Standardizer(load_stats(task.stats_path, task.stats_dir or task.dataset_dir), specs)  # a transfer task's test side: the training side's
        pooled, tokens = [], []
        with warnings.catch_warnings():
            # All-missing bands or patches give "mean of empty slice": they become 0 (pooled) or NaN (tokens).
            warnings.simplefilter("ignore", category=RuntimeWarning)
            for sample in reader:
                pooled_i, tokens_i = self._sample_features(sample, specs, standardize, patch_tokens)
                pooled.append(pooled_i)
                tokens.append(tokens_i)
        return Features(np.stack(pooled).astype(np.float32), np.stack(tokens).astype(np.float32) if patch_tokens else None)

    def _sample_features(self, sample, specs, standardize, patch_tokens: bool):
        stats, cells = [], []
        for name in specs:
            # Every grid repeated onto the reference grid (nearest): the statistics of the bands'
            # values, whatever their pixel size, and patch means on one grid for every sensor.
            tile = (self._tile_px, self._tile_px)
            x = standardize(name, to_one_grid(sample.data[name], specs[name], mode="nearest", size=tile))  # (T, C, H, W) or (T, C)
            values = np.where(x == SENTINEL, np.nan, x)
            per_band = np.moveaxis(values, 1, 0).reshape(values.shape[1], -1)  # (C, T*H*W)
            stats += [np.nan_to_num(np.nanmean(per_band, axis=1)), np.nan_to_num(np.nanstd(per_band, axis=1))]
            if patch_tokens and values.ndim == 4:
                cells.append(self._patch_means(values))
        if not patch_tokens:
            return np.concatenate(stats), None
        tokens = np.concatenate(cells, axis=-1)  # (L, C_total)
        empty = np.isnan(tokens).all(axis=-1)
        tokens = np.nan_to_num(tokens)  # a band missing in a patch reads as its mean (0)
        tokens[empty] = np.nan
        return np.concatenate(stats), tokens

    def _patch_means(self, values: np.ndarray) -> np.ndarray:
        """(T, C, H, W) with NaN missing -> (h*w, C) mean per patch (NaN where a patch has no data)."""
        T, C, H, W = values.shape
        p = self.patch_size
        h, w = H // p, W // p
        patches = values[:, :, : h * p, : w * p].reshape(T, C, h, p, w, p)
        return np.nanmean(patches, axis=(0, 3, 5)).reshape(C, h * w).T
