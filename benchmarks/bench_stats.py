"""Stats time vs a plain read of the same shards (target: stats adds <= 25%).

    python benchmarks/bench_stats.py                 # ../shared/data, 5 repeats
    python benchmarks/bench_stats.py --repeats 3 --sets eurosat

Each real input set is converted once (Zarr and HDF5). Then, alternating in
one process: the peer reads every sensor array of every shard, shard after
shard (`Shard.read`, what stats reads: Zarr sample by sample from the shard
index, our fastest read), and `compute_stats` with 1 worker,
then with 2 workers. Printed: the medians and stats / read, in wall time and,
for one worker, in CPU time (all threads of the process), which a busy machine
disturbs less. One stats worker reads the next shard in a thread while it
reduces the current one, so on a machine with a spare core its wall time
approaches max(read, reduce).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench_conversion import DEFAULT_DATA, INPUT_SETS, parallel_ceiling

from spacenit.conversion.convert import convert
from spacenit.data.shards import DatasetReader, Shard
from spacenit.data.stats import compute_stats


def plain_read(dataset: Path) -> None:
    reader = DatasetReader(dataset)
    for name in reader.shards():
        shard = Shard(dataset / name, reader.storage)
        for sensor in reader.info.sensors:
            shard.read(sensor)
        shard.close()


def timed(fn, *args, **kwargs) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all its threads) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args, **kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu


def bench(dataset: Path, repeats: int) -> dict:
    times: dict[str, list[float]] = {"read": [], "read_cpu": [], "stats_1": [], "stats_1_cpu": [], "stats_2": []}
    for r in range(repeats):
        wall, cpu = timed(plain_read, dataset)
        times["read"].append(wall)
        times["read_cpu"].append(cpu)
        for workers in (1, 2):
            out = dataset.parent / f"stats-{r}-{workers}.json"
            wall, cpu = timed(compute_stats, dataset, out, workers=workers, progress=False)
            times[f"stats_{workers}"].append(wall)
            if workers == 1:
                times["stats_1_cpu"].append(cpu)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the real-data folder (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sets", nargs="+", default=["eurosat", "bigearthnet", "landsat_sr"], choices=list(INPUT_SETS))
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"skipped: no real data at {args.data}")
        return
    print(f"{'set':12s} {'storage':7s} {'samples':>7s} {'MB':>6s} {'read s':>7s} {'stats1 s':>8s} {'stats2 s':>8s} "
          f"{'stats1/read':>11s} {'stats2/read':>11s} {'CPU stats1/read':>15s}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets:
            options = INPUT_SETS[name](args.data, Path(tmp))
            for storage in ("zarr", "hdf5"):
                dataset = Path(tmp) / f"{name}-{storage}" / "dataset"
                report = convert(output_dir=dataset, storage=storage, progress=False, **options)
                megabytes = sum(
                    s.data[k].nbytes for s in DatasetReader(dataset) for k in s.data
                ) / 1e6  # fmt: skip
                t = bench(dataset, args.repeats)
                print(f"{name:12s} {storage:7s} {report.num_samples:7d} {megabytes:6.1f} {t['read']:7.3f} "
                      f"{t['stats_1']:8.3f} {t['stats_2']:8.3f} {t['stats_1'] / t['read']:11.2f} "
                      f"{t['stats_2'] / t['read']:11.2f} {t['stats_1_cpu'] / t['read_cpu']:15.2f}")  # fmt: skip
    print(f"target: stats1/read <= 1.25; medians of {args.repeats} repeats; MB = float32 samples read; "
          f"2-process ceiling now: {parallel_ceiling():.2f}")


if __name__ == "__main__":
    main()
