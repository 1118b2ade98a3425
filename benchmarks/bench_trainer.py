"""Trainer overhead: a full Trainer step vs a bare PyTorch loop over the same model and batches.

    python benchmarks/bench_trainer.py                    # nano at its default depth
    python benchmarks/bench_trainer.py --depth 1 --steps 10

Both sides run the same TrainModule (latent prediction with EMA target,
contrastive and uniformity terms) on the same pre-read micro-batches, so the
data loader is out of the picture (see bench_loader.py for it). The bare step
is forward, backward, clip, AdamW step, EMA update, LR scheduler step. The
Trainer step adds what a real run pays every step: accelerate's autocast and
backward, per-micro-batch seeding, the non-finite check (one host sync), the
metric accumulation, and the callbacks of `spacenit pretrain` (NaN guard,
throughput, MLflow to a local sqlite store in its background thread, with
metrics logged every step, the worst case). Steps alternate between the two
sides; the ratio (target <= 1.10) is the median of the ratios of neighbouring
steps, which cancels most of the drift of a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from accelerate import Accelerator

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
from spacenit.train.trainer import Trainer, micro_batch_seed


def bench_dataset(root: Path) -> Path:
    """EuroSAT chips from ../shared/data when present, else a synthetic 3-sensor set."""
    from spacenit.conversion.convert import convert
    from spacenit.data.stats import compute_stats

    eurosat = Path(__file__).resolve().parents[2] / "shared" / "data" / "eurosat_ms"
    if eurosat.is_dir():
        convert(eurosat, root / "ds", layout="class_folders", sensor="sentinel2_l1c", progress=False)
    else:
        from spacenit.conversion.synthetic import make_synthetic

        src = make_synthetic(root / "tifs", num_samples=64, tile_size_px=64, num_dates=2, seed=0)
        convert(src, root / "ds", tile_size_px=64, progress=False)
    compute_stats(root / "ds", progress=False)
    return root / "ds"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=None, help="encoder and decoder depth (default: the nano preset's)")
    parser.add_argument("--steps", type=int, default=20, help="measured steps per side")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch-size", type=int, default=8, help="fixed patch size, so both sides see equal shapes")
    args = parser.parse_args()
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = bench_dataset(tmp)
        overrides = [f"train.global_batch_size={args.batch}", f"data.min_patch_size={args.patch_size}",
                     f"data.max_patch_size={args.patch_size}", "data.num_workers=0", "train.log_every=1"]  # fmt: skip
        if args.depth:
            overrides += [f"model.depth={args.depth}", f"model.decoder_depth={args.depth}"]
        cfg = build_config(overrides=overrides, preset="small")
        tc = cfg.train
        total = 2 * args.steps + 4
        dataset = GeoTileDataset(data, load_stats(data / "stats.json"))
        planner = BatchPlanner(len(dataset), tc.global_batch_size, tc.global_batch_size, pretrain_geometry(dataset), cfg.data, tc.seed)
        batches = list(build_pretrain_loader(dataset, planner, cfg.data, rank=0, world_size=1, start_step=0, total_steps=total))

        accelerator = Accelerator(cpu=True)
        sensors = [dataset.reader.info.sensors[n] for n in dataset.sensor_names]
        module = cfg.objective.build(SpaceNitModel(cfg.model, sensors), cfg.masking.build(), total_steps=total)
        optimizer = build_optimizer(module, tc)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(tc.warmup_steps, total))
        prepared, prepared_opt = accelerator.prepare(module, optimizer)

        from spacenit.train.callbacks import MLflowCallback, NaNGuard, Throughput
        from spacenit.train.tracking import start_run

        run = start_run(f"sqlite:///{tmp / 'mlflow.db'}", "bench")
        mlflow_cb = MLflowCallback(run.info.run_id, f"sqlite:///{tmp / 'mlflow.db'}", cfg.to_dict(), tmp, log_checkpoints=False)
        trainer = Trainer(prepared, prepared_opt, scheduler, lambda start: batches[start:], accelerator, total_steps=total,
                          accum_steps=1, seed=tc.seed, max_grad_norm=tc.max_grad_norm, log_every=1,
                          callbacks=[NaNGuard(), Throughput(), mlflow_cb])  # fmt: skip
        trainer.emit("on_train_start")
        trainer_batches = iter(batches)
        params = [p for p in module.parameters() if p.requires_grad]

        def bare_step(i: int) -> None:
            batch = batches[i]
            out = module(batch, batch["patch_size"], torch.Generator().manual_seed(micro_batch_seed(0, i, 0)), i)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            module.after_optimizer_step()
            scheduler.step()

        ratios, bare_times, trainer_times = [], [], []
        for i in range(args.steps + 2):
            t0 = time.perf_counter()
            bare_step(i)
            t1 = time.perf_counter()
            trainer.run_step(trainer_batches)
            t2 = time.perf_counter()
            if i >= 2:  # warm-up
                bare_times.append(t1 - t0)
                trainer_times.append(t2 - t1)
                ratios.append((t2 - t1) / (t1 - t0))
        mlflow_cb.on_train_end(trainer)
        mlflow_cb.close()
        import mlflow

        mlflow.end_run()

    h, w = batches[0]["images"][dataset.sensor_names[0]].shape[-2:]
    tokens = pretrain_geometry(dataset).tokens(h // args.patch_size, w // args.patch_size) * tc.global_batch_size
    print(f"model depth {cfg.model.depth}, batch {tc.global_batch_size}, patch {args.patch_size}, {tokens} tokens/batch")
    print(f"bare loop    : median {statistics.median(bare_times) * 1e3:8.1f} ms/step")
    print(f"Trainer step : median {statistics.median(trainer_times) * 1e3:8.1f} ms/step")
    print(f"Trainer / bare: median of neighbour ratios {statistics.median(ratios):.3f} (target <= 1.10), "
          f"best-of {min(trainer_times) / min(bare_times):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
