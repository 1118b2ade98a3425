"""Chunk checksums: CRC32C for Zarr (its `crc32c` codec) and Fletcher-32 for HDF5 (its filter).

Every chunk of a shard carries a checksum of its compressed bytes, appended
after them as the two formats' own codecs do, so zarr-python and any HDF5
reader verify what SpaceNit writes, and SpaceNit's direct readers verify it
too (docs/format.md). A flipped byte inside a chunk is then an error naming
the file and sample, never a silently different value.
"""

from __future__ import annotations

import google_crc32c
import numpy as np

from spacenit.data.band_kernels import nogil_jit


def crc32c(data: bytes) -> bytes:
    """The 4 bytes Zarr's crc32c codec appends: CRC32C, little endian."""
    return google_crc32c.value(data).to_bytes(4, "little")


def fletcher32(data: bytes) -> bytes:
    """The 4 bytes HDF5's Fletcher-32 filter appends (H5_checksum_fletcher32, little endian)."""
    words = np.frombuffer(data, dtype="<u2", count=len(data) // 2)
    last = data[-1] if len(data) % 2 else -1
    return int(_fletcher32(words, last)).to_bytes(4, "little")


@nogil_jit(fastmath=True)
def _fletcher32(words: np.ndarray, last: int) -> np.int64:
    """HDF5's Fletcher-32 over `words` read little endian (HDF5 sums them big endian: swapped
    here) and an odd last byte (-1: none), which counts as a word's high byte.

    HDF5 folds its two sums as (x & 0xffff) + (x >> 16) after every 360 words, which keeps
    them below 2**32, so int64 arithmetic gives its uint32 results. Within a block of L words
    the sums advance by closed forms that vectorize: sum1 += S and sum2 += L * sum1 + W, with
    S the sum of the words and W the sum of (L - j) * word_j (the same values, added in
    another order); float64 holds them exactly (below 2**53).
    """
    n = words.shape[0]
    sum1 = np.int64(0)
    sum2 = np.int64(0)
    start = 0
    while start < n:
        length = min(360, n - start)
        block_sum = 0.0
        weighted = 0.0
        for j in range(length):
            raw = words[start + j]
            word = np.float64(((raw & 0xFF) << 8) | (raw >> 8))
            block_sum += word
            weighted += (length - j) * word
        sum2 += length * sum1 + np.int64(weighted)
        sum1 += np.int64(block_sum)
        sum1 = (sum1 & 0xFFFF) + (sum1 >> 16)
        sum2 = (sum2 & 0xFFFF) + (sum2 >> 16)
        start += length
    if last >= 0:
        sum1 += np.int64(last) << 8
        sum2 += sum1
        sum1 = (sum1 & 0xFFFF) + (sum1 >> 16)
        sum2 = (sum2 & 0xFFFF) + (sum2 >> 16)
    sum1 = (sum1 & 0xFFFF) + (sum1 >> 16)
    sum2 = (sum2 & 0xFFFF) + (sum2 >> 16)
    return (sum2 << 16) | sum1
