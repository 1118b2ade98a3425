"""Random single-sample read latency: Zarr v3 shards vs HDF5 shards of the same dataset.

    python benchmarks/bench_shards.py                 # ../shared/data, 5 repeats of 300 reads

Each real input set is converted to both storages. Then, alternating in one
process, `DatasetReader(...)[i]` for the same seeded random sample indexes:
warm (the reader and its shards already open, as in a DataLoader worker) and
cold (a fresh reader for each read: index, open the shard, read one sample).
Printed: median and 90th-percentile latency per storage and hdf5 / zarr.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_conversion import DEFAULT_DATA, INPUT_SETS

from spacenit.conversion.convert import convert
from spacenit.data.shards import DatasetReader


def latencies_ms(dataset: Path, indexes: np.ndarray, *, cold: bool) -> list[float]:
    reader = DatasetReader(dataset)
    for i in range(len(reader)):  # warm: every shard opened once beforehand
        reader[i]
    out = []
    for i in indexes:
        start = time.perf_counter()
        if cold:
            DatasetReader(dataset)[int(i)]
        else:
            reader[int(i)]
        out.append((time.perf_counter() - start) * 1e3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the real-data folder (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reads", type=int, default=300)
    parser.add_argument("--sets", nargs="+", default=["eurosat", "bigearthnet"], choices=list(INPUT_SETS))
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"skipped: no real data at {args.data}")
        return
    print(f"{'set':12s} {'mode':5s} {'zarr p50 ms':>11s} {'zarr p90 ms':>11s} {'hdf5 p50 ms':>11s} {'hdf5 p90 ms':>11s} "
          f"{'hdf5/zarr p50':>13s}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets:
            options = INPUT_SETS[name](args.data, Path(tmp))
            datasets = {}
            for storage in ("zarr", "hdf5"):
                datasets[storage] = Path(tmp) / f"{name}-{storage}"
                convert(output_dir=datasets[storage], storage=storage, progress=False, **options)
            num_samples = len(DatasetReader(datasets["zarr"]))
            for mode in ("warm", "cold"):
                reads = args.reads if mode == "warm" else args.reads // 5
                samples: dict[str, list[float]] = {"zarr": [], "hdf5": []}
                for r in range(args.repeats):
                    indexes = np.random.default_rng(r).integers(0, num_samples, reads)
                    for storage, dataset in datasets.items():
                        samples[storage] += latencies_ms(dataset, indexes, cold=mode == "cold")
                p50 = {k: statistics.median(v) for k, v in samples.items()}
                p90 = {k: float(np.percentile(v, 90)) for k, v in samples.items()}
                print(f"{name:12s} {mode:5s} {p50['zarr']:11.3f} {p90['zarr']:11.3f} {p50['hdf5']:11.3f} "
                      f"{p90['hdf5']:11.3f} {p50['hdf5'] / p50['zarr']:13.2f}")  # fmt: skip
    print(f"{args.repeats} repeats x {args.reads} warm / {args.reads // 5} cold reads of one sample, seeded")


if __name__ == "__main__":
    main()
