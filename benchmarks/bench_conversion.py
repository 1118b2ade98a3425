"""Conversion throughput: `convert` vs a plain rasterio read of the same GeoTIFFs, 1 vs 2 workers.

    python benchmarks/bench_conversion.py                    # ../shared/data, 5 repeats
    python benchmarks/bench_conversion.py --repeats 3 --sets eurosat

For each real input set (EuroSAT chips, Landsat scenes, BigEarthNet patches) it
times, alternating in one process: the peer (open every input file with
rasterio and read all its bands), `convert` with 1 worker and with 2 workers
(into a fresh directory each time). Throughput is MB of GeoTIFF input per
second; printed are the medians and the ratios convert(1) / read (target >=
0.5) and convert(2) / convert(1) (target >= 1.7), plus convert(1) / read in
CPU time (throughput per CPU second), which a busy machine disturbs less.

The machine may be shared: the script also measures how much faster two
processes finish a pure-Python loop than one (the parallel ceiling right
now), and copy memory (the memory ceiling: conversion decodes, casts and
compresses, and two vCPUs may share one memory bandwidth), so a low 2-worker
speed-up can be told apart from a busy or bandwidth-bound machine, and
projects the 2-worker speed-up on 2 free cores from CPU times: the CPU
seconds of 1 worker over max(parent, workers / 2, all / 2) of 2 workers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from spacenit.conversion.convert import convert

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def eurosat(data: Path, work: Path) -> dict:
    """216 Sentinel-2 L1C chips, 64 px, in class folders."""
    return {"input_dir": data / "eurosat_ms", "layout": "class_folders", "sensor": "sentinel2_l1c", "tile_size_px": 64}


def eurosat_x5(data: Path, work: Path) -> dict:
    """The 216 EuroSAT chips, each listed 5 times under another sample id (1080 samples).

    The real chips are few: on 216 of them, the fixed costs of a run (listing the
    inputs, starting the worker pool, writing dataset.json) are a good part of
    the 2-worker time. Five times the work shows the throughput of the workers.
    """
    root = data / "eurosat_ms"
    rows = [(f"{tif.stem}-{k}", "sentinel2_l1c", str(tif.relative_to(root)), "")
            for k in range(5) for tif in sorted(root.rglob("*.tif"))]  # fmt: skip
    manifest = _manifest(work / "eurosat_x5.csv", rows)
    return {"input_dir": root, "manifest": manifest, "tile_size_px": 64}


def _manifest(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    path.write_text("sample_id,sensor,path,bands\n" + "".join(",".join(r) + "\n" for r in rows))
    return path


def landsat_sr(data: Path, work: Path) -> dict:
    """Two whole Landsat-8 surface-reflectance scenes (6 of 7 bands), 30 m, one sample each."""
    bands = "SR_B2 SR_B3 SR_B4 SR_B5 SR_B6 SR_B7"
    rows = [("lc08_232066", "landsat_sr", "LC08_232066_20190727.tif", bands),
            ("lc08_003069", "landsat_sr", "LC08_003069_20180906_clip.tif", bands)]  # fmt: skip
    manifest = _manifest(work / "landsat_sr.csv", rows)
    return {"input_dir": data / "landsat_s1", "manifest": manifest, "tile_size_px": 320, "gsd_m": 30.0}


def landsat_l1(data: Path, work: Path) -> dict:
    """One whole Landsat-8 L1TP scene (blue, green, red; 1133 x 793 px, deflate-tiled), 30 m."""
    rows = [("lc08_224078", "landsat", "LC08_L1TP_224078_20200518_crop_B2B3B4.tif", "B2 B3 B4")]
    manifest = _manifest(work / "landsat_l1.csv", rows)
    return {"input_dir": data / "landsat_s1", "manifest": manifest, "tile_size_px": 1152, "gsd_m": 30.0}


def landsat_l1_tiles(data: Path, work: Path) -> dict:
    """The same L1TP scene cut into 128 px tiles (`tile_scenes`): 9 x 7 = 63 samples, the way scenes are used."""
    return {**landsat_l1(data, work), "tile_size_px": 128, "tile_scenes": True}


def bigearthnet(data: Path, work: Path) -> dict:
    """30 patches of Sentinel-2 L2A (12 bands) + Sentinel-1, 120 px, without georeferencing."""
    root = data / "bigearthnet" / "v1"
    manifest = work / "bigearthnet.jsonl"
    with manifest.open("w") as f:
        for patch in json.loads((root / "labels.json").read_text()):
            pid = patch["patch_id"]
            for sensor, rel in (("sentinel2_l2a", f"s2/{pid}_12band_120px.tif"), ("sentinel1", f"s1/{pid}_S1.tif")):
                f.write(json.dumps({"sample_id": pid, "sensor": sensor, "path": rel, "split": patch["split"]}) + "\n")
    return {"input_dir": root, "manifest": manifest, "tile_size_px": 120, "assume_crs": "EPSG:32634"}


INPUT_SETS: dict[str, Callable[[Path, Path], dict]] = {
    "eurosat": eurosat, "eurosat_x5": eurosat_x5, "landsat_sr": landsat_sr, "landsat_l1": landsat_l1,
    "landsat_l1_tiles": landsat_l1_tiles, "bigearthnet": bigearthnet,
}  # fmt: skip


def input_files(options: dict) -> list[Path]:
    """The GeoTIFFs a conversion reads (from a quick conversion's records would be circular: list them)."""
    root = Path(options["input_dir"])
    if "manifest" in options:
        text = Path(options["manifest"]).read_text().splitlines()
        if str(options["manifest"]).endswith(".csv"):
            return [root / line.split(",")[2] for line in text[1:]]
        return [root / json.loads(line)["path"] for line in text]
    return sorted(root.rglob("*.tif"))


def plain_read(files: list[Path]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # BigEarthNet's bare arrays
        for path in files:
            with rasterio.open(path) as src:
                src.read()


def _spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def _copy(repeats: int) -> None:
    source = np.ones(10 * 2**20, dtype=np.float32)  # 40 MB: more than the L3 cache
    target = np.empty_like(source)
    for _ in range(repeats):
        np.copyto(target, source)


def parallel_ceiling(n: int = 3_000_000) -> float:
    """How much faster 2 processes run two CPU-bound loops than 1 process, on this machine now."""
    return _two_vs_one(_spin, n)


def memory_ceiling(repeats: int = 20) -> float:
    """The same for copying memory: decoding, encoding and casting rasters are bound by the
    memory bandwidth, which the two cores of a virtual machine may share."""
    return _two_vs_one(_copy, repeats)


def _two_vs_one(work: Callable[[int], object], size: int) -> float:
    """How much faster 2 processes do `work(size)` each than 1 process does `work(2 * size)`."""
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(work, [1, 1]))  # start the workers outside the timing
        start = time.perf_counter()
        list(pool.map(work, [2 * size]))
        one = time.perf_counter() - start
        start = time.perf_counter()
        list(pool.map(work, [size, size]))
        two = time.perf_counter() - start
    return one / two


def bench_set(name: str, data: Path, work: Path, repeats: int) -> dict:
    options = INPUT_SETS[name](data, work)
    files = input_files(options)
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    times: dict[str, list[float]] = {k: [] for k in ("read", "read_cpu", "convert_1", "convert_1_cpu", "convert_2", "projected_2")}
    ceilings, memory_ceilings = [], []
    for r in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        plain_read(files)
        times["read"].append(time.perf_counter() - wall)
        times["read_cpu"].append(time.process_time() - cpu)
        for workers in (1, 2):
            out = work / f"{name}-{r}-{workers}"
            wall, cpu, before = time.perf_counter(), time.process_time(), os.times()
            report = convert(output_dir=out, workers=workers, progress=False, **options)
            times[f"convert_{workers}"].append(time.perf_counter() - wall)
            parent_cpu = time.process_time() - cpu
            children_cpu = sum(os.times()[2:4]) - sum(before[2:4])  # the pool's workers, once joined
            if workers == 1:  # in process: its CPU time is all of the conversion's
                times["convert_1_cpu"].append(parent_cpu)
            else:  # the wall time 2 free cores would need for this CPU work
                times["projected_2"].append(max(parent_cpu, children_cpu / 2, (parent_cpu + children_cpu) / 2))
            assert report.ok, report.failures[:3]
        ceilings.append(parallel_ceiling())
        memory_ceilings.append(memory_ceiling())
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "set": name, "files": len(files), "samples": report.num_samples, "mb": megabytes,
        "read_mb_s": megabytes / median["read"], "convert_1_mb_s": megabytes / median["convert_1"],
        "convert_2_mb_s": megabytes / median["convert_2"],
        "ratio_1_vs_read": median["read"] / median["convert_1"],
        "cpu_ratio_1_vs_read": median["read_cpu"] / median["convert_1_cpu"],
        "speedup_2_vs_1": median["convert_1"] / median["convert_2"],
        "ceiling_2_vs_1": statistics.median(ceilings),
        "memory_ceiling_2_vs_1": statistics.median(memory_ceilings),
        "projected_speedup_2": median["convert_1_cpu"] / median["projected_2"],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the real-data folder (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sets", nargs="+", default=list(INPUT_SETS), choices=list(INPUT_SETS))
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"skipped: no real data at {args.data}")
        return
    print(f"{'set':12s} {'files':>5s} {'MB':>6s} {'read MB/s':>9s} {'conv1 MB/s':>10s} {'conv2 MB/s':>10s} "
          f"{'conv1/read':>10s} {'conv2/conv1':>11s} {'2-proc ceiling':>14s} {'memory ceiling':>14s} {'CPU conv1/read':>14s} "
          f"{'2 free cores':>12s}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets:
            r = bench_set(name, args.data, Path(tmp), args.repeats)
            print(f"{r['set']:12s} {r['files']:5d} {r['mb']:6.1f} {r['read_mb_s']:9.1f} {r['convert_1_mb_s']:10.1f} "
                  f"{r['convert_2_mb_s']:10.1f} {r['ratio_1_vs_read']:10.2f} {r['speedup_2_vs_1']:11.2f} "
                  f"{r['ceiling_2_vs_1']:14.2f} {r['memory_ceiling_2_vs_1']:14.2f} {r['cpu_ratio_1_vs_read']:14.2f} "
                  f"{r['projected_speedup_2']:12.2f}")  # fmt: skip
    print("targets: conv1/read >= 0.5, conv2/conv1 >= 1.7 (bounded by the 2-process ceilings); medians of "
          f"{args.repeats} repeats")


if __name__ == "__main__":
    main()
