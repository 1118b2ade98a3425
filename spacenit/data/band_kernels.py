"""One-pass per-band reductions for `stats`, compiled with numba.

numpy needs a pass over the data for each of min, max, sum and sum of squares,
two of them with a float32 -> float64 cast in the loop, and a masked copy when
the sentinel is present: about 1.9 ns a value, as much as decompressing the
shard. These loops make one pass for all of them (0.6 ns a value) and a strided
pass for the histogram (0.4 ns), and release the GIL, so the threads of one
`stats` process reduce batches side by side.

Every kernel takes a band view `(R, C, S)`: R rows (samples x timesteps), C
bands, S values per row, C-contiguous. The sentinel never counts. Values are
never NaN in a converted dataset (`convert` turns NaN into the sentinel); the
loops may treat a NaN as any value.

Compiled code is cached beside this file (or under NUMBA_CACHE_DIR), so only
the first run on a machine pays the ~2 s of compilation.
"""

from __future__ import annotations

import numba
import numpy as np

from spacenit.sensors import SENTINEL

_SENTINEL = np.float32(SENTINEL)
_INF = np.float32(np.inf)
#: Columns of `band_sums`' result.
COUNT, SHIFT, SUM, SUM_SQUARES, MIN, MAX = range(6)
# Reassociation lets LLVM vectorize the float sums; no-NaN lets it vectorize min and max.
_FAST = {"reassoc", "nsz", "nnan", "contract"}


def nogil_jit(**options):
    """numba.njit without the GIL, cached on disk where numba finds a writable place."""

    def compile_later(fn):
        try:
            return numba.njit(nogil=True, cache=True, **options)(fn)
        except RuntimeError:  # no writable cache location: every process compiles (~2 s)
            return numba.njit(nogil=True, **options)(fn)

    return compile_later


@nogil_jit(fastmath=_FAST)
def band_sums(values: np.ndarray, shifts: np.ndarray, shifted: np.ndarray) -> np.ndarray:
    """(C, 6) float64 per band: count, shift K, sum of (x - K), sum of (x - K)^2, min, max.

    K is `shifts[c]` where `shifted[c]`, else the band's first valid value: sums of
    deviations from a value near the mean keep the variance (sum of squares
    minus the square of the sum over n) from cancelling. min is +inf and max
    -inf for a band without a valid value.
    """
    rows, bands, size = values.shape
    out = np.empty((bands, 6))
    for c in range(bands):
        shift = shifts[c] if shifted[c] else _first_valid(values, c)
        count, total, squares, lo, hi = 0.0, 0.0, 0.0, _INF, -_INF
        for r in range(rows):
            row = values[r, c]
            row_lo, row_hi = _INF, -_INF
            for s in range(size):
                row_lo = min(row_lo, row[s])
                row_hi = max(row_hi, row[s])
            if row_lo > _SENTINEL:  # no sentinel in this row (the common case): no checks
                for s in range(size):
                    d = np.float64(row[s]) - shift
                    total += d
                    squares += d * d
                count += size
                lo, hi = min(lo, row_lo), max(hi, row_hi)
            else:  # without branches: a row of scattered sentinels would mispredict them
                for s in range(size):
                    v = row[s]
                    valid = v != _SENTINEL
                    d = np.float64(v) - shift if valid else 0.0
                    total += d
                    squares += d * d
                    count += 1.0 if valid else 0.0
                    lo = min(lo, v if valid else _INF)
                    hi = max(hi, v if valid else -_INF)
        out[c, COUNT], out[c, SHIFT], out[c, SUM], out[c, SUM_SQUARES] = count, shift, total, squares
        out[c, MIN], out[c, MAX] = lo, hi
    return out


@nogil_jit()
def _first_valid(values: np.ndarray, c: int) -> float:
    """Band c's first value that is not the sentinel; 0 if there is none."""
    rows, _, size = values.shape
    for r in range(rows):
        for s in range(size):
            if values[r, c, s] != _SENTINEL:
                return np.float64(values[r, c, s])
    return 0.0


@nogil_jit(inline="always")
def _bucket(bits: np.uint32) -> np.int64:
    """A float32's histogram bucket: its top 16 bits, reordered so that buckets follow the values.

    Positive floats order as their bits, negative ones in reverse: the position of
    top 16 bits k is k + 0x8000 for a positive float and 0xFFFF - k for a negative one.
    """
    top = np.int64(bits >> 16)
    return top ^ (0xFFFF if top & 0x8000 else 0x8000)


@nogil_jit()
def bucket_range(values: np.ndarray, stride: int) -> np.ndarray:
    """(C, 2) int64: the lowest and highest histogram bucket (`_bucket`) of the valid
    values at every `stride`-th position of a row; (65536, -1) for a band without one."""
    rows, bands, size = values.shape
    bits = values.view(np.uint32)
    out = np.empty((bands, 2), dtype=np.int64)
    for c in range(bands):
        lo, hi = 65536, -1
        for r in range(rows):
            for s in range(0, size, stride):
                if values[r, c, s] != _SENTINEL:
                    bucket = _bucket(bits[r, c, s])
                    lo, hi = min(lo, bucket), max(hi, bucket)
        out[c, 0], out[c, 1] = lo, hi
    return out


@nogil_jit()
def bucket_counts(values: np.ndarray, stride: int, low: np.ndarray, span: int) -> tuple[np.ndarray, int]:
    """((C, span) int64, misses): counts of the valid values at every `stride`-th position
    of a row, by histogram bucket (`_bucket`) minus the band's `low`, and how many values
    fell outside their band's window (not counted)."""
    rows, bands, size = values.shape
    bits = values.view(np.uint32)
    counts = np.zeros((bands, span), dtype=np.int64)
    misses = 0
    for c in range(bands):
        for r in range(rows):
            for s in range(0, size, stride):
                if values[r, c, s] != _SENTINEL:
                    k = _bucket(bits[r, c, s]) - low[c]
                    if 0 <= k < span:
                        counts[c, k] += 1
                    else:
                        misses += 1
    return counts, misses


def warm_up() -> None:
    """Compile (or load from the cache) the kernels for what `stats` gives them, float32
    band views, and the HDF5 chunk checksum. The images run it at build time, so a stage's fresh container does not
    spend its first ~2 s compiling."""
    from spacenit.data.checksums import fletcher32

    values = np.ones((1, 2, 8), dtype=np.float32)
    fletcher32(values.tobytes())  # every HDF5 chunk read or written
    band_sums(values, np.zeros(2), np.zeros(2, dtype=np.bool_))
    bucket_range(values, 4)
    bucket_counts(values, 4, np.zeros(2, dtype=np.int64), 1)
