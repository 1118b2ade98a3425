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

#: Words per block of the weighted sum (each product is below 2**32, a block's sum below 2**52).
_BLOCK_WORDS = 1 << 20


def crc32c(data: bytes) -> bytes:
    """The 4 bytes Zarr's crc32c codec appends: CRC32C, little endian."""
    return google_crc32c.value(data).to_bytes(4, "little")


def fletcher32(data: bytes) -> bytes:
    """The 4 bytes HDF5's Fletcher-32 filter appends (H5_checksum_fletcher32, little endian).

    HDF5 sums the data as big-endian 16-bit words (an odd last byte as its high
    byte) in two running sums that it folds, (x & 0xffff) + (x >> 16), as it goes.
    Folding keeps a sum's value modulo 65535 and never turns a positive sum into
    zero, so the result is: 0 for an all-zero sum, else 1 + (S - 1) mod 65535,
    with S1 the sum of the words and S2 the sum of their running totals, i.e. of
    (n - i) * word_i. Here both are computed with numpy in blocks (exact in int64).
    """
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size % 2:
        raw = np.concatenate((raw, np.zeros(1, np.uint8)))
    words = raw.view(">u2").astype(np.int64)
    n = words.size
    s2 = 0
    for start in range(0, n, _BLOCK_WORDS):  # products stay below 2**52 per block
        block = words[start : start + _BLOCK_WORDS]
        weights = (n - start - np.arange(block.size, dtype=np.int64)) % 65535
        s2 = (s2 + int(np.dot(block, weights))) % 65535
    nonzero = bool(words.any())
    sum1, sum2 = _folded(int(words.sum()), nonzero), _folded(s2, nonzero)
    return ((sum2 << 16) | sum1).to_bytes(4, "little")


def _folded(total: int, nonzero: bool) -> int:
    """What HDF5's repeated folding leaves of a running sum of `total` (mod 65535)."""
    return 0 if not nonzero else 1 + (total - 1) % 65535
