"""Chunk codecs on the real chips: size and speed of the candidates, as ratios to the default.

A shard chunk is one sample as float32 (integer digital numbers too), so the
codec sees float32 bytes. Candidates are blosc settings (what the Zarr shards
use; HDF5 uses the same filters through hdf5plugin), each encoding and decoding
the same chips in the same process, one thread, best of --repeats:

- the chips of ../shared/data/eurosat_ms (Sentinel-2 L1C uint16, 13 bands, 64 px),
- 64 px chips cut from the Landsat-8 scenes (int16 SR and float32) and the
  Sentinel-1 dB scenes of landsat_s1/ and bigearthnet/ (float32).

Prints, per data set and codec: compression ratio, encode and decode MB/s,
and each as a ratio to the default codec of spacenit.data.shards.

    python benchmarks/bench_codecs.py [--data ../shared/data] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numcodecs
import numpy as np
import rasterio
from bench_conversion import DEFAULT_DATA  # a sibling script

from spacenit.data.shards import CHUNK_BLOSC, blosc_codec

CANDIDATES = {
    "zstd-1 byte shuffle": {"cname": "zstd", "clevel": 1, "shuffle": "shuffle"},
    "zstd-1 bit shuffle": {"cname": "zstd", "clevel": 1, "shuffle": "bitshuffle"},
    "lz4-5 byte shuffle": {"cname": "lz4", "clevel": 5, "shuffle": "shuffle"},
    "lz4-5 bit shuffle": {"cname": "lz4", "clevel": 5, "shuffle": "bitshuffle"},
}


def chips_of(path: Path, side: int = 64) -> list[np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            a = src.read().astype(np.float32)
    _, h, w = a.shape
    return [np.ascontiguousarray(a[:, i : i + side, j : j + side]) for i in range(0, h - side + 1, side) for j in range(0, w - side + 1, side)]


def data_sets(root: Path) -> dict[str, list[np.ndarray]]:
    landsat, ben = root / "landsat_s1", root / "bigearthnet" / "v1"
    sets = {
        "EuroSAT L1C (uint16)": [c for p in sorted((root / "eurosat_ms").rglob("*.tif")) for c in chips_of(p)],
        "Landsat-8 SR (int16)": chips_of(landsat / "LC08_232066_20190727.tif"),
        "Landsat-8 (float32)": chips_of(landsat / "LC08_003069_20180906_clip.tif"),
        "Sentinel-1 dB (float32)": [c for p in sorted((ben / "s1").glob("*.tif")) for c in chips_of(p, 60)]
        + chips_of(landsat / "S1_2018_VV_VH_clip.tif"),
    }
    return {name: chips for name, chips in sets.items() if chips}


def measure(codec: numcodecs.Blosc, chips: list[np.ndarray], repeats: int) -> tuple[float, float, float]:
    """(compression ratio, encode MB/s, decode MB/s)."""
    raw = sum(c.nbytes for c in chips)
    enc_s = dec_s = float("inf")
    for _ in range(repeats):
        tick = time.perf_counter()
        encoded = [codec.encode(c) for c in chips]
        enc_s = min(enc_s, time.perf_counter() - tick)
        tick = time.perf_counter()
        for e in encoded:
            codec.decode(e)
        dec_s = min(dec_s, time.perf_counter() - tick)
    return raw / sum(len(e) for e in encoded), raw / enc_s / 1e6, raw / dec_s / 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the real-data folder (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    numcodecs.blosc.set_nthreads(1)  # as in conversion workers and loader processes
    default = {k: CHUNK_BLOSC[k] for k in ("cname", "clevel", "shuffle")}
    print(f"default codec: blosc {default}")
    for name, chips in data_sets(args.data).items():
        print(f"\n{name}: {len(chips)} chips, {sum(c.nbytes for c in chips) / 1e6:.1f} MB as float32")
        base = measure(blosc_codec(CHUNK_BLOSC), chips, args.repeats)
        for label, config in CANDIDATES.items():
            ratio, enc, dec = measure(blosc_codec({**CHUNK_BLOSC, **config}), chips, args.repeats)
            mark = " (default)" if config == default else ""
            print(f"  {label:22s} ratio {ratio:4.2f} ({ratio / base[0]:4.2f}x default), encode {enc:5.0f} MB/s "
                  f"({enc / base[1]:4.2f}x), decode {dec:5.0f} MB/s ({dec / base[2]:4.2f}x){mark}")  # fmt: skip


if __name__ == "__main__":
    main()
