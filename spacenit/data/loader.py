"""Reading a converted dataset for training and embedding.

`GeoTileDataset` gives standardized samples; for pretraining, `BatchPlanner`
decides each step's samples, patch size and crop from (seed, step) alone,
`MicroBatchSampler` hands each rank its share, and `PretrainBatches` reads,
augments, crops and collates a micro-batch inside a DataLoader worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from spacenit.config import Config
from spacenit.data.augmentations import AugmentConfig
from spacenit.data.crop import (
    TokenGeometry,
    alignment_px,
    crop_sample,
    grid_factors,
    random_offsets,
    sample_crop,
    sample_patch_size,
)
from spacenit.data.shards import DatasetReader
from spacenit.data.standardizer import Standardizer
from spacenit.data.stats import SensorStats
from spacenit.sensors import Grid


def months_of(dates: list[str]) -> np.ndarray:
    """ISO dates -> month numbers 1-12; 0 where the date is unknown or the timestep missing."""
    return np.array([int(d[5:7]) if len(d) >= 7 else 0 for d in dates], dtype=np.int64)


class GeoTileDataset(Dataset):
    """Item i: {"images": {sensor: {Grid: (T, C_g, H_g, W_g)}}, "months": {sensor: (T,)}, "index": i}.

    Each sensor comes as its grids, at their native resolutions (`spacenit.data.images`).
    Images are standardized with the given stats; missing values stay at the
    sentinel so the tokenizer can tell absent patches from real ones.
    """

    def __init__(self, root: str | Path, stats: dict[str, SensorStats], sensors: list[str] | None = None) -> None:
        self.reader = DatasetReader(root)
        info = self.reader.info
        self.sensor_names = sensors or list(info.sensors)
        unknown = [name for name in self.sensor_names if name not in info.sensors]
        if unknown:
            raise KeyError(f"the dataset {root} has no sensor(s) {unknown}; its sensors are {list(info.sensors)}")
        specs = {name: info.sensors[name] for name in self.sensor_names}
        self.standardize = Standardizer(stats, specs)
        #: sensor -> its grids, as stored.
        self.grids: dict[str, tuple[Grid, ...]] = {name: info.grids[name] for name in self.sensor_names}

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> dict:
        sample = self.reader[index]
        images = {
            name: {grid: torch.from_numpy(self.standardize(name, sample.data[name][grid], grid.bands)) for grid in grids}
            for name, grids in self.grids.items()
        }  # fmt: skip
        months = {name: torch.from_numpy(months_of(sample.record.dates.get(name, [""]))) for name in self.sensor_names}
        return {"images": images, "months": months, "index": index}


def collate(items: list[dict]) -> dict:
    """Stack a list of items; every sample of a dataset shares its shapes."""
    images = items[0]["images"]
    return {
        "images": {s: {g: torch.stack([it["images"][s][g] for it in items]) for g in grids} for s, grids in images.items()},
        "months": {s: torch.stack([it["months"][s] for it in items]) for s in images},
        "index": torch.tensor([it["index"] for it in items]),
    }


# ---------------------------------------------------------------- pretraining batches


@dataclass
class LoaderConfig(Config):
    """How pretraining batches are made (spec section 3.2)."""

    #: Patch sizes (pixels) are drawn per optimizer step, uniformly from [min, max].
    min_patch_size: int = 1
    max_patch_size: int = 8
    #: Most tokens per sample, over all sensors, groups and timesteps; larger tiles are cropped.
    token_budget: int = 2250
    #: DataLoader worker processes per rank (0 reads in the training process).
    num_workers: int = 2
    #: Micro-batches each worker prepares ahead.
    prefetch_factor: int = 4
    #: Sensors to train on (default: every sensor of the dataset).
    sensors: list[str] | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class MicroBatchPlan:
    """Everything random about one micro-batch, fixed before any data is read."""

    step: int  # 0-based optimizer step
    micro_index: int  # position of this micro-batch inside the step's global batch
    indices: tuple[int, ...]  # dataset indices of its samples
    patch_size: int
    crop: tuple[int, int]  # (height, width) in patches
    seed: int


class BatchPlanner:
    """Which samples, patch size and crop each step uses: a pure function of (seed, step).

    Each epoch is a fresh permutation of the dataset seeded by (seed, epoch);
    step s takes the next `global_batch_size` samples of it (the remainder of an
    epoch is dropped). The global batch is cut into micro-batches of
    `micro_batch_size`; micro-batch j of every step is the same whatever the
    number of ranks, so a run on 2 ranks sees exactly the micro-batches a run
    on 1 rank with 2 accumulation steps sees, and a resumed run starts at any
    step without replaying the loader.
    """

    def __init__(self, num_samples: int, global_batch_size: int, micro_batch_size: int, geometry: TokenGeometry,
                 config: LoaderConfig, seed: int) -> None:  # fmt: skip
        if global_batch_size % micro_batch_size:
            raise ValueError(f"global batch {global_batch_size} does not divide into micro-batches of {micro_batch_size}")
        if num_samples < global_batch_size:
            raise ValueError(
                f"the dataset has {num_samples} samples, fewer than train.global_batch_size={global_batch_size}; "
                "lower it with --set train.global_batch_size=N"
            )
        self.num_samples, self.global_batch_size, self.micro_batch_size = num_samples, global_batch_size, micro_batch_size
        self.geometry, self.config, self.seed = geometry, config, seed
        self.steps_per_epoch = num_samples // global_batch_size
        self._order: tuple[int, np.ndarray] | None = None

    @property
    def micro_batches_per_step(self) -> int:
        return self.global_batch_size // self.micro_batch_size

    def epoch_order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_samples))
        return self._order[1]

    def step_shape(self, step: int) -> tuple[int, tuple[int, int]]:
        """(patch size, crop in patches) of `step`, shared by all its micro-batches."""
        rng = np.random.default_rng([self.seed, step, 0x5EED])
        c = self.config
        patch = sample_patch_size(rng, c.min_patch_size, c.max_patch_size, self.geometry.tile_size_px)
        return patch, sample_crop(rng, self.geometry, patch, c.token_budget)

    def plan(self, step: int, micro_index: int) -> MicroBatchPlan:
        epoch, within = divmod(step, self.steps_per_epoch)
        start = within * self.global_batch_size + micro_index * self.micro_batch_size
        indices = self.epoch_order(epoch)[start : start + self.micro_batch_size]
        patch, crop = self.step_shape(step)
        return MicroBatchPlan(step, micro_index, tuple(int(i) for i in indices), patch, crop, self.seed)


class MicroBatchSampler:
    """The plans one rank consumes, from `start_step` to `total_steps`: micro-batches
    rank * accum ... rank * accum + accum - 1 of every step."""

    def __init__(self, planner: BatchPlanner, rank: int, world_size: int, start_step: int, total_steps: int) -> None:
        per_rank, rest = divmod(planner.micro_batches_per_step, world_size)
        if rest:
            raise ValueError(f"{planner.micro_batches_per_step} micro-batches per step do not split over {world_size} ranks")
        self.planner, self.rank, self.accum = planner, rank, per_rank
        self.start_step, self.total_steps = start_step, total_steps

    def __len__(self) -> int:
        return max(self.total_steps - self.start_step, 0) * self.accum

    def __iter__(self):
        for step in range(self.start_step, self.total_steps):
            for a in range(self.accum):
                yield self.planner.plan(step, self.rank * self.accum + a)


class PretrainBatches(Dataset):
    """Map-style dataset over plans: `batches[plan]` reads, augments, crops and collates
    one micro-batch (in a DataLoader worker).

    Returns {"images": {sensor: {Grid: (B, T, C_g, H_g, W_g)}}, "months": {sensor: (B, T)},
    "index": (B,), "patch_size": p (pixels of the reference grid), "gsd_m": the reference
    grid's pixel size, "step": s, "micro_index": j}. Each grid covers the crop's h x w
    patches of p reference pixels (a coarse grid's whole pixels may overhang them).
    """

    def __init__(self, dataset: GeoTileDataset, augment: AugmentConfig) -> None:
        self.dataset, self.augment = dataset, augment
        info = dataset.reader.info
        self.factors = grid_factors(dataset.grids, info.gsd_m)
        self.align = alignment_px(self.factors.values())

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, plan: MicroBatchPlan) -> dict:
        rng = np.random.default_rng([plan.seed, plan.step, plan.micro_index])
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        batch = collate([self.dataset[i] for i in plan.indices])
        images = self.augment.apply(batch["images"], generator)
        height, width = plan.crop[0] * plan.patch_size, plan.crop[1] * plan.patch_size
        tile = self.dataset.reader.info.tile_size_px
        crops = []
        for b in range(len(plan.indices)):
            top, left = random_offsets(rng, tile, height, width, self.align)
            sample = {s: {g: x[b] for g, x in grids.items()} for s, grids in images.items()}
            crops.append(crop_sample(sample, self.factors, top, left, height, width))
        images = {s: {g: torch.stack([c[s][g] for c in crops]) for g in grids} for s, grids in images.items()}
        images = self.augment.apply_after_crop(images, generator)
        return {
            "images": images,
            "months": batch["months"],
            "index": batch["index"],
            "patch_size": plan.patch_size,
            "gsd_m": self.dataset.reader.info.gsd_m,
            "step": plan.step,
            "micro_index": plan.micro_index,
        }


def _passthrough(batch: dict) -> dict:
    return batch


def _worker_init(_: int) -> None:
    # Workers only slice and stack: one thread each leaves the cores to the training process.
    torch.set_num_threads(1)


def build_pretrain_loader(dataset: GeoTileDataset, planner: BatchPlanner, config: LoaderConfig, *, rank: int,
                          world_size: int, start_step: int, total_steps: int) -> DataLoader:  # fmt: skip
    """A DataLoader yielding this rank's micro-batches, in order, from `start_step` on."""
    sampler = MicroBatchSampler(planner, rank, world_size, start_step, total_steps)
    workers = config.num_workers
    return DataLoader(
        PretrainBatches(dataset, config.augment),
        sampler=sampler,
        batch_size=None,
        collate_fn=_passthrough,
        num_workers=workers,
        prefetch_factor=config.prefetch_factor if workers else None,
        worker_init_fn=_worker_init if workers else None,
        pin_memory=torch.cuda.is_available(),
    )


def pretrain_geometry(dataset: GeoTileDataset, model_config) -> TokenGeometry:
    """The token count of a crop, with the model's token groups (`model_config`: a ModelConfig)."""
    info = dataset.reader.info
    sensors = [info.sensors[name] for name in dataset.sensor_names]
    return TokenGeometry.of(sensors, info.num_timesteps, info.tile_size_px, model_config.tokenization,
                            model_config.output_patch_size)  # fmt: skip
