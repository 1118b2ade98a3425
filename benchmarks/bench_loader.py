"""Data loader throughput vs the Trainer's consumption, with the default loader settings.

    python benchmarks/bench_loader.py
    python benchmarks/bench_loader.py --depth 1 --steps 8 --workers 0

Three numbers, on the same dataset (EuroSAT chips from ../shared/data when
present, else synthetic) and the default pretraining batches (patch sizes
1-8, 2250-token budget, D4 augmentation):

1. loader alone: micro-batches per second out of `build_pretrain_loader`
   with `data.num_workers` workers (default 2) and nothing consuming them;
2. trainer alone: steps per second of the Trainer on pre-read batches;
3. a real run: the share of the Trainer's wall time spent waiting in
   `next(loader)`.

The loader is not the bottleneck when (1) / (2) > 1 and (3) is small.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from bench_trainer import bench_dataset  # noqa: E402 - a sibling script

from spacenit.arch.models import SpaceNitModel
from spacenit.data.loader import (
    BatchPlanner,
    GeoTileDataset,
    build_pretrain_loader,
    pretrain_geometry,
)
from spacenit.data.stats import load_stats
from spacenit.train.optim import build_optimizer
from spacenit.train.pretrain import build_config
from spacenit.train.schedules import warmup_cosine
from spacenit.train.trainer import Trainer


class TimedIterator:
    """Wraps an iterator and adds up the seconds spent in `next`."""

    def __init__(self, iterable) -> None:
        self.it, self.waited = iter(iterable), 0.0

    def __iter__(self):
        return self

    def __next__(self):
        t = time.perf_counter()
        try:
            return next(self.it)
        finally:
            self.waited += time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=None, help="encoder and decoder depth (default: the nano preset's)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: data.num_workers)")
    args = parser.parse_args()
    torch.manual_seed(0)
    overrides = ["train.global_batch_size=16"]
    if args.depth:
        overrides += [f"model.depth={args.depth}", f"model.decoder_depth={args.depth}"]
    if args.workers is not None:
        overrides.append(f"data.num_workers={args.workers}")
    cfg = build_config(overrides=overrides, preset="small")
    tc, steps = cfg.train, args.steps

    with tempfile.TemporaryDirectory() as tmp:
        data = bench_dataset(Path(tmp))
        dataset = GeoTileDataset(data, load_stats(data / "stats.json"))
        planner = BatchPlanner(len(dataset), tc.global_batch_size, tc.global_batch_size, pretrain_geometry(dataset), cfg.data, tc.seed)

        def loader(start: int = 0, total: int = steps):
            return build_pretrain_loader(dataset, planner, cfg.data, rank=0, world_size=1, start_step=start, total_steps=total)

        t = time.perf_counter()
        batches = list(loader())
        loader_rate = len(batches) / (time.perf_counter() - t)

        accelerator = Accelerator(cpu=True)
        sensors = [dataset.reader.info.sensors[n] for n in dataset.sensor_names]

        def trainer(make_loader) -> Trainer:
            torch.manual_seed(0)
            module = cfg.objective.build(SpaceNitModel(cfg.model, sensors), cfg.masking.build(), total_steps=steps)
            optimizer = build_optimizer(module, tc)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(tc.warmup_steps, steps))
            module, optimizer = accelerator.prepare(module, optimizer)
            return Trainer(module, optimizer, scheduler, make_loader, accelerator, total_steps=steps, accum_steps=1,
                           seed=tc.seed, max_grad_norm=tc.max_grad_norm, log_every=steps)  # fmt: skip

        t = time.perf_counter()
        trainer(lambda start: batches[start:]).fit()
        trainer_rate = steps / (time.perf_counter() - t)

        timed = TimedIterator(loader())
        t = time.perf_counter()
        trainer(lambda start: timed).fit()
        wall = time.perf_counter() - t

    print(f"dataset {data.name}: {len(dataset)} samples; {cfg.data.num_workers} workers, patch sizes "
          f"{cfg.data.min_patch_size}-{cfg.data.max_patch_size}, budget {cfg.data.token_budget} tokens, batch {tc.global_batch_size}")  # fmt: skip
    print(f"loader alone : {loader_rate:8.2f} batches/s")
    print(f"trainer alone: {trainer_rate:8.2f} steps/s (model depth {cfg.model.depth})")
    print(f"loader / trainer: {loader_rate / trainer_rate:.1f}x (> 1: the loader keeps up)")
    print(f"real run: {timed.waited / wall:.1%} of the wall time waiting for batches")


if __name__ == "__main__":
    main()
