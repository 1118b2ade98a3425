"""Embedding extraction throughput against the bare model forward on the same batches.

- bare forward: the encoder on batches already standardized and in memory;
- extraction: `spacenit.evaluation.embed.extract` reading shards, binding
  bands and standardizing in DataLoader workers, `prefetch` batches ahead;
- extraction without workers (num_workers=0): the I/O not overlapped, for contrast.

Target: extraction >= 0.9x the bare forward. Uses EuroSAT (../shared/data)
when present, else the synthetic set; nano at random initialization (speed
does not depend on the weights).

    python benchmarks/bench_embed.py [--dataset DIR] [--batch-size 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from spacenit.arch.models import create_model
from spacenit.data.format import load_dataset_info
from spacenit.data.stats import load_stats
from spacenit.evaluation.embed import ModelInputDataset, default_num_workers, extract, make_loader
from spacenit.evaluation.inputs import ModelInputs, bind_sensors


def prepare(dataset: Path | None, work: Path) -> Path:
    if dataset is not None:
        return dataset
    from spacenit.evaluation.datasets import eurosat_task

    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    if (shared / "eurosat_ms").is_dir():
        return eurosat_task(shared, work).dataset_dir
    from spacenit.conversion.convert import convert
    from spacenit.conversion.synthetic import make_synthetic
    from spacenit.data.stats import compute_stats

    src = make_synthetic(work / "synthetic", num_samples=256, tile_size_px=64, num_dates=1, seed=0)
    convert(src, work / "dataset", tile_size_px=64, progress=False)
    compute_stats(work / "dataset", progress=False)
    return work / "dataset"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = prepare(args.dataset, Path(tmp))
        info = load_dataset_info(root)
        sensors = list(info.sensors.values())
        torch.manual_seed(0)
        model = create_model("spacenit_nano", sensors).eval()
        inputs = ModelInputs(bind_sensors(sensors, {n: s.bands for n, s in info.sensors.items()}), load_stats(root / "stats.json"))
        dataset = ModelInputDataset(root, inputs)
        batches = list(make_loader(dataset, args.batch_size, num_workers=0))  # materialized once, outside the timing
        n = len(dataset)
        workers = default_num_workers() if args.workers is None else args.workers

        def bare() -> None:
            with torch.no_grad():
                for b in batches:
                    model.embed(b["images"], b["months"], 8)

        def extraction(num_workers: int):
            return lambda: extract(model, 8, make_loader(dataset, args.batch_size, num_workers=num_workers))

        timings: dict[str, list[float]] = {"bare": [], "overlapped": [], "serial": []}
        runs = {"bare": bare, "overlapped": extraction(workers), "serial": extraction(0)}
        bare()  # warm-up
        for _ in range(args.repeats):  # interleaved, so machine noise hits every variant alike
            for name, fn in runs.items():
                tick = time.perf_counter()
                fn()
                timings[name].append(time.perf_counter() - tick)
        best = {k: min(v) for k, v in timings.items()}
        print(f"{n} samples of {root.name}, batch {args.batch_size}, torch threads {torch.get_num_threads()}, loader workers {workers}")
        for name in runs:
            print(f"{name:>11}: {n / best[name]:7.1f} samples/s ({best[name]:.2f} s)")
        ratio = best["bare"] / best["overlapped"]
        print(f"extraction / bare forward = {ratio:.2f}x (target >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'}); "
              f"without workers {best['bare'] / best['serial']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
