"""The `stats` stage: per-sensor, per-band normalization statistics.

One streaming pass over the shards (all samples, or a seeded subset). Each
band is reduced on its own grid, at its own resolution (a 60 m band counts its
60 m pixels), and keeps count, mean, M2, min and max in float64, folded in batch by batch
with Chan et al.'s parallel update, plus a histogram for approximate
percentiles; partial results from any number of workers merge exactly, and
are merged in shard order, so the result does not depend on the number of
workers. The sentinel (-99999) never counts. Categorical bands (class codes)
get class counts instead of percentiles, and are never z-scored.

The histogram buckets a float32 by its top 16 bits (sign, exponent and 7
mantissa bits): 65536 buckets spanning every float, each 2**-7 of its values
wide, so a percentile is within 0.8% of the exact one for any sensor, with
no value range to configure, and histograms add up across workers. The
histogram counts every fourth value of a row (HISTOGRAM_STRIDE), which keeps
`stats` close to the cost of reading the shards; on a large dataset the
sampling moves a percentile's rank by a few thousandths of a point.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from tqdm import tqdm

from spacenit.data.band_kernels import (
    COUNT,
    MAX,
    MIN,
    SHIFT,
    SUM,
    SUM_SQUARES,
    band_sums,
    bucket_counts,
    bucket_range,
)
from spacenit.data.format import DATASET_JSON, dataset_lock, load_dataset_info, write_json_atomic
from spacenit.data.shards import DatasetReader, Shard, ShardError, array_key
from spacenit.io_errors import check_writable, naming
from spacenit.sensors import SENTINEL

STATS_JSON = "stats.json"
STATS_VERSION = 3
#: Percentiles written for robust normalization (e.g. clip to p2..p98).
PERCENTILES = (1.0, 2.0, 50.0, 98.0, 99.0)
#: Bytes of float32 samples read and reduced at once; bounds memory for large tiles.
BATCH_BYTES = 8 * 2**20
#: Smaller batches, down to MIN_BATCH_BYTES, so that a shard has at least MIN_BATCHES (see _selections).
MIN_BATCH_BYTES = 2**20
MIN_BATCHES = 2
_NUM_BUCKETS = 1 << 16
#: Every how many values along a row the percentile histogram counts (see FloatHistogram).
HISTOGRAM_STRIDE = 4
#: Rows (one image of one band) shorter than this are counted whole: a 60 m grid of a small tile
#: has rows 4 pixels wide, and every fourth value would then always be the same column.
MIN_STRIDED_ROW = 1024
#: Threads of one stats process, each reading (and decompressing) a batch and reducing it.
STATS_THREADS = 3


class StatsError(ValueError):
    """A stats file that is missing, malformed, or does not fit the data."""


def _contiguous_bands(values: np.ndarray, dtype: np.dtype | None = None) -> np.ndarray:
    """`values` as a C-contiguous (R, C, S) array, as the kernels take it; (C, N) becomes (1, C, N)."""
    values = values[None] if values.ndim == 2 else values
    return np.ascontiguousarray(values, dtype=dtype)


def band_view(array: np.ndarray, channel_axis: int = 0) -> np.ndarray:
    """(R, C, S) view of `array` with its band axis in the middle; no copy for a contiguous array.

    A (C, N) array becomes (1, C, N); a batch (n, T, C, H, W) with `channel_axis=2`
    becomes (n*T, C, H*W). Every reduction here runs over axes (0, 2).
    """
    shape = array.shape
    return array.reshape(int(np.prod(shape[:channel_axis])), shape[channel_axis], -1)


@dataclass
class RunningMoments:
    """Count, mean, M2 (sum of squared deviations), min and max per band; mergeable."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @classmethod
    def empty(cls, num_bands: int) -> RunningMoments:
        z = np.zeros(num_bands, dtype=np.float64)
        return cls(z.copy(), z.copy(), z.copy(), np.full(num_bands, np.inf), np.full(num_bands, -np.inf))

    @classmethod
    def of(cls, values: np.ndarray) -> RunningMoments:
        """Moments of `values`, (C, N) or a `band_view` (R, C, S), with the sentinel excluded.

        One pass (`band_sums`) of the sums of deviations from each band's first
        valid value, in float64 (a float32 difference and its square are exact or
        nearly so there). Where the band's mean lies so far from that value that
        the variance would cancel (over 100 standard deviations), the band is
        summed again about its mean, so the result stays within 1e-9 of the
        two-pass one.
        """
        values = _contiguous_bands(values)
        sums = band_sums(values, np.zeros(values.shape[1]), np.zeros(values.shape[1], dtype=np.bool_))
        count, squares = sums[:, COUNT], sums[:, SUM_SQUARES]
        mean = sums[:, SHIFT] + sums[:, SUM] / np.maximum(count, 1)
        m2 = squares - sums[:, SUM] * (sums[:, SUM] / np.maximum(count, 1))
        cancelled = (m2 < 1e-4 * squares) & (count > 1)
        if cancelled.any():
            again = band_sums(values, mean, cancelled)
            mean = np.where(cancelled, again[:, SHIFT] + again[:, SUM] / np.maximum(count, 1), mean)
            redone = again[:, SUM_SQUARES] - again[:, SUM] * (again[:, SUM] / np.maximum(count, 1))
            m2 = np.where(cancelled, redone, m2)
        return cls(count, np.where(count > 0, mean, 0.0), np.maximum(m2, 0.0), sums[:, MIN], sums[:, MAX])

    def merge(self, other: RunningMoments) -> RunningMoments:
        """Chan et al. (1979): combine two partial results exactly."""
        n = self.count + other.count
        delta = other.mean - self.mean
        w = np.where(n > 0, other.count / np.maximum(n, 1), 0.0)
        mean = self.mean + delta * w
        m2 = self.m2 + other.m2 + delta * delta * self.count * w
        return RunningMoments(n, mean, m2, np.minimum(self.min, other.min), np.maximum(self.max, other.max))

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation (ddof=0)."""
        return np.sqrt(np.where(self.count > 0, self.m2 / np.maximum(self.count, 1), 0.0))


@cache
def _bucket_bounds() -> tuple[np.ndarray, np.ndarray]:
    """Per bucket (`band_kernels._bucket`, in value order): its smallest and its largest float32, as float64."""
    bucket = np.arange(_NUM_BUCKETS, dtype=np.uint32)
    positive = bucket >= 0x8000
    bits = np.where(positive, bucket - 0x8000, 0xFFFF - bucket).astype(np.uint32) << 16  # the top 16 bits
    low_bits = np.where(positive, bits, bits | 0xFFFF).astype(np.uint32)  # the largest magnitude is the lowest negative
    high_bits = np.where(positive, bits | 0xFFFF, bits).astype(np.uint32)
    with np.errstate(invalid="ignore"):  # the NaN buckets, which never hold a value
        return low_bits.view(np.float32).astype(np.float64), high_bits.view(np.float32).astype(np.float64)


def _buckets_of(values: np.ndarray) -> np.ndarray:
    """The buckets of float32 `values` (`band_kernels._bucket`), as int64."""
    top = (np.asarray(values, dtype="<f4").view("<u4") >> 16).astype(np.int64)
    return top ^ np.where(top & 0x8000, 0xFFFF, 0x8000)


@dataclass
class FloatHistogram:
    """Counts per band over the 65536 buckets of float32 values (their top 16 bits); mergeable.

    Buckets are numbered in value order (`band_kernels._bucket`), so a band's
    buckets lie together, and so do those of a band of both signs.

    A band fills a few hundred of the 65536 buckets (tens of thousands if its values
    cross zero), so each band keeps only a window of them: `counts[c, k]` is the count
    of bucket `low[c] + k`. Full-length counts per batch cost more than the counting
    (6.8 MB to zero and add per 13-band batch); windows cost a few kilobytes, also to
    send between processes.

    Only every HISTOGRAM_STRIDE-th value along a row (of MIN_STRIDED_ROW values or more;
    shorter rows whole) is counted: counting is the
    most expensive part of `stats`. Sampling a quarter of the values moves a
    percentile's rank by about sqrt(q (1 - q) / (N / 4)): 0.03 percentile points
    for p2 of a band of a million values, 0.003 for 100 million.
    """

    low: np.ndarray  # (C,) int64: the bucket of counts[:, 0], per band
    counts: np.ndarray  # (C, span) int64

    @classmethod
    def empty(cls, num_bands: int) -> FloatHistogram:
        return cls(np.zeros(num_bands, dtype=np.int64), np.zeros((num_bands, 0), dtype=np.int64))

    @classmethod
    def of(cls, values: np.ndarray, lo: np.ndarray | None = None, hi: np.ndarray | None = None) -> FloatHistogram:
        """Histogram of `values`, (C, N) or a `band_view` (R, C, S), without the sentinel.

        `lo` and `hi`, each band's smallest and largest valid value when known (the
        moments have them), give the windows without a pass of their own.
        """
        values = _contiguous_bands(values, np.dtype("<f4"))
        if lo is not None and hi is not None:
            histogram = cls._counted(values, *_bucket_window(lo, hi))
            if histogram is not None:
                return histogram
        ranges = bucket_range(values, histogram_stride(values))  # no range given, or a value outside it (-0.0)
        return cls._counted(values, ranges[:, 0], ranges[:, 1])

    @classmethod
    def _counted(cls, values: np.ndarray, low: np.ndarray, high: np.ndarray) -> FloatHistogram | None:
        """The histogram over windows [low, high] per band (empty where low > high); None
        when a value falls outside its band's window."""
        used = high >= low
        if not used.any():
            return cls.empty(values.shape[1])
        low = np.where(used, low, 0)
        counts, misses = bucket_counts(values, histogram_stride(values), low, int((high - low)[used].max()) + 1)
        return None if misses else cls(low, counts)

    def merge(self, other: FloatHistogram) -> FloatHistogram:
        """Fold `other` into this histogram, in place; each band's window grows to cover both.

        A band with no counts on one side (no valid value in that batch) takes the
        other side's window, wherever its own lies.
        """
        mine, theirs = self.counts.any(axis=1), other.counts.any(axis=1)
        if not theirs.any():
            return self
        my_high, their_high = self.low + self.counts.shape[1], other.low + other.counts.shape[1]
        low = np.where(mine, self.low, other.low)
        high = np.where(mine, my_high, their_high)
        low = np.where(theirs, np.minimum(low, other.low), low)
        high = np.where(theirs, np.maximum(high, their_high), high)
        span = int((high - low).max())
        if (low[mine] != self.low[mine]).any() or span > self.counts.shape[1]:
            grown = np.zeros((len(low), span), dtype=np.int64)
            _add_window(grown, low, self, mine)
            self.counts = grown
        self.low = low
        _add_window(self.counts, self.low, other, theirs)
        return self

    def dense(self) -> np.ndarray:
        """(C, 65536) counts, indexed by bucket (`band_kernels._bucket`: in value order)."""
        out = np.zeros((len(self.low), _NUM_BUCKETS), dtype=np.int64)
        for c, low in enumerate(self.low.tolist()):
            width = min(self.counts.shape[1], _NUM_BUCKETS - low)
            out[c, low : low + width] = self.counts[c, :width]
        return out

    def percentiles(self, qs: tuple[float, ...], lo: np.ndarray, hi: np.ndarray) -> list[list[float | None]]:
        """[q][band] approximate percentiles, clamped to the exact [lo, hi]; None for empty bands."""
        low, high = _bucket_bounds()
        out: list[list[float | None]] = [[] for _ in qs]
        for band, counts in enumerate(self.counts):
            used = np.flatnonzero(counts)  # a band fills few of its window's buckets: only those matter
            if used.size == 0:
                for column in out:
                    column.append(None)
                continue
            counts, used = counts[used], used + self.low[band]  # buckets are in value order
            cumulative = np.cumsum(counts)
            ranks = np.asarray(qs) / 100.0 * (cumulative[-1] - 1)  # numpy's "linear" positions
            i = np.searchsorted(cumulative, ranks, side="right")
            before = np.where(i > 0, cumulative[i - 1], 0)
            bucket = used[i]
            values = low[bucket] + (ranks - before) / counts[i] * (high[bucket] - low[bucket])
            for column, value in zip(out, np.clip(values, lo[band], hi[band]), strict=True):
                column.append(float(value))
        return out


def histogram_stride(values: np.ndarray) -> int:
    """The stride the histogram counts a (R, C, S) band view with: HISTOGRAM_STRIDE, or 1 for short rows."""
    return HISTOGRAM_STRIDE if values.shape[-1] >= MIN_STRIDED_ROW else 1


def _bucket_window(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per band, the lowest and highest bucket of values in [lo, hi]; low > high for an empty band."""
    empty = ~(lo <= hi)
    with np.errstate(invalid="ignore", over="ignore"):
        low, high = _buckets_of(np.where(empty, 0, lo)), _buckets_of(np.where(empty, 0, hi))
    return np.where(empty, 1, low), np.where(empty, 0, high)


def _add_window(into: np.ndarray, into_low: np.ndarray, histogram: FloatHistogram, bands: np.ndarray) -> None:
    """Add the windows of `histogram`'s `bands` (a mask) into `into`, whose band c starts at bucket `into_low[c]`."""
    width = histogram.counts.shape[1]
    for c in np.flatnonzero(bands).tolist():
        offset = int(histogram.low[c] - into_low[c])
        into[c, offset : offset + width] += histogram.counts[c]


@dataclass
class SensorAccumulator:
    """Everything `stats` keeps for one sensor; `merge` combines two workers' parts exactly."""

    moments: RunningMoments
    histogram: FloatHistogram | None  # continuous sensors
    class_counts: list[Counter] | None  # categorical sensors: value -> count, per band

    @classmethod
    def of(cls, values: np.ndarray, categorical: bool) -> SensorAccumulator:
        """The accumulator of `values`, (C, N) or a `band_view` (R, C, S)."""
        num_bands = values.shape[-2]
        empty = cls(
            RunningMoments.empty(num_bands),
            None if categorical else FloatHistogram.empty(num_bands),
            [Counter() for _ in range(num_bands)] if categorical else None,
        )
        empty.add(values)
        return empty

    def add(self, values: np.ndarray) -> None:
        """Fold a batch of `values`, (C, N) or a `band_view` (R, C, S), into this accumulator."""
        values = values[None] if values.ndim == 2 else values
        moments = RunningMoments.of(values)
        self.moments = self.moments.merge(moments)
        if self.class_counts is not None:
            for c, counter in enumerate(self.class_counts):
                band = values[:, c].ravel()
                classes, n = np.unique(band[band != SENTINEL], return_counts=True)
                counter.update(dict(zip(classes, n, strict=True)))
        else:
            self.histogram.merge(FloatHistogram.of(values, moments.min, moments.max))

    def merge(self, other: SensorAccumulator) -> SensorAccumulator:
        moments = self.moments.merge(other.moments)
        if self.class_counts is not None:
            return SensorAccumulator(moments, None, [a + b for a, b in zip(self.class_counts, other.class_counts, strict=True)])
        return SensorAccumulator(moments, self.histogram.merge(other.histogram), None)


    @classmethod
    def concat(cls, parts: list[SensorAccumulator], order: list[int]) -> SensorAccumulator:
        """One accumulator of the bands of `parts` (a sensor's grids), bands reordered by `order`
        (positions in the concatenation of the parts' bands)."""
        def cat(values: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(values)[order]

        m = [p.moments for p in parts]
        moments = RunningMoments(cat([x.count for x in m]), cat([x.mean for x in m]), cat([x.m2 for x in m]),
                                 cat([x.min for x in m]), cat([x.max for x in m]))  # fmt: skip
        if parts[0].class_counts is not None:
            counts = [c for p in parts for c in p.class_counts]
            return cls(moments, None, [counts[i] for i in order])
        width = max(p.histogram.counts.shape[1] for p in parts)
        padded = [np.pad(p.histogram.counts, ((0, 0), (0, width - p.histogram.counts.shape[1]))) for p in parts]
        histogram = FloatHistogram(cat([p.histogram.low for p in parts]), np.concatenate(padded)[order])
        return cls(moments, histogram, None)


@dataclass(frozen=True)
class _ShardTask:
    """One shard's share of the work: which rows to read, and what each array is."""

    path: Path
    storage: str
    rows: tuple[int, ...]
    #: (array key, categorical) pairs: one per sensor grid
    arrays: tuple[tuple[str, bool], ...]


def _selections(task: _ShardTask, shard: Shard) -> list[slice | list[int]]:
    """The rows of one shard in batches: a slice where they are contiguous.

    A batch holds about BATCH_BYTES, or less when that would leave the shard fewer than
    MIN_BATCHES batches (but at least MIN_BATCH_BYTES or one row): reading overlaps
    reducing only from the second batch on, so a shard that fits in one batch (two
    whole Landsat scenes) would be read and then reduced, one after the other.
    Splitting further did not pay on Zarr: 8 batches made EuroSAT's stats / read
    1.37 instead of 1.26.
    """
    bytes_per_row = max(sum(int(np.prod(shard.shape(name)[1:])) * 4 for name, _ in task.arrays), 1)
    rows = list(task.rows)
    num_rows = shard.shape(task.arrays[0][0])[0]
    outside = [r for r in rows if not 0 <= r < num_rows]
    if outside:
        raise ShardError(f"dataset.json places samples at rows {outside[:5]} of shard {task.path}, which holds "
                         f"{num_rows}; the index is damaged: re-run `spacenit convert`")  # fmt: skip
    spread = max(MIN_BATCH_BYTES // bytes_per_row, -(-len(rows) // MIN_BATCHES))
    size = max(1, min(BATCH_BYTES // bytes_per_row, spread))
    out = []
    for start in range(0, len(rows), size):
        batch = rows[start : start + size]
        out.append(slice(batch[0], batch[-1] + 1) if batch[-1] - batch[0] == len(batch) - 1 else batch)
    return out


def _read_batch(shard: Shard, task: _ShardTask, selection: slice | list[int]) -> dict[str, np.ndarray]:
    """array key -> (n, T, C, ...) of the selected rows."""
    return {name: shard.read(name, selection) for name, _ in task.arrays}


def _read_batches(task: _ShardTask) -> Iterator[dict[str, np.ndarray]]:
    """The rows of one shard, batch by batch."""
    shard = Shard(task.path, task.storage)
    try:
        for selection in _selections(task, shard):
            yield _read_batch(shard, task, selection)
    finally:
        shard.close()


def _batch_partial(task: _ShardTask, batch: dict[str, np.ndarray]) -> dict[str, SensorAccumulator]:
    """The partial result of one batch: array key -> its accumulator."""
    categorical = dict(task.arrays)
    return {name: SensorAccumulator.of(band_view(v, channel_axis=2), categorical[name]) for name, v in batch.items()}


def _read_and_reduce(shard: Shard, task: _ShardTask, selection: slice | list[int]) -> dict[str, SensorAccumulator]:
    return _batch_partial(task, _read_batch(shard, task, selection))


def _fold(parts: Iterable[dict[str, SensorAccumulator]]) -> dict[str, SensorAccumulator] | None:
    """Merge partial results in the order given: batches into a shard, shards into the dataset."""
    total = None
    for part in parts:
        total = part if total is None else {name: total[name].merge(acc) for name, acc in part.items()}
    return total


def _shard_stats(task: _ShardTask) -> dict[str, SensorAccumulator]:
    """Worker entry point: the partial result of one shard, batch by batch in row order."""
    return _fold(_batch_partial(task, batch) for batch in _read_batches(task))


def _partials(tasks: list[_ShardTask], workers: int) -> Iterator[dict[str, SensorAccumulator]]:
    """Each shard's partial result, in shard order.

    One process: STATS_THREADS threads each read a batch and reduce it
    (pread, decompression and the band kernels release the GIL), and this
    thread merges their partial results in order, exactly as `_shard_stats`
    does. Several processes take a shard each.
    """
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            yield from pool.map(_shard_stats, tasks)
        return
    parts = _reduce_ahead(tasks, STATS_THREADS)
    for _, group in itertools.groupby(parts, key=lambda item: item[0]):
        yield _fold(part for _, part in group)


def _reduce_ahead(tasks: list[_ShardTask], threads: int) -> Iterator[tuple[int, dict[str, SensorAccumulator]]]:
    """(task index, partial result) for every batch of every task, in order, from `threads` threads.

    At most `threads` batches are in flight ahead of the consumer, which bounds
    memory to a few BATCH_BYTES. Each shard is opened once, and closed after its
    last batch.
    """
    pending: deque[tuple[int, Future, Shard | None]] = deque()  # the shard: set on its last batch
    open_shards: set[Shard] = set()

    def finish() -> tuple[int, dict[str, SensorAccumulator]]:
        i, future, shard_done = pending.popleft()
        batch = future.result()
        if shard_done is not None:
            shard_done.close()
            open_shards.discard(shard_done)
        return i, batch

    try:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="stats") as pool:
            for i, task in enumerate(tasks):
                shard = Shard(task.path, task.storage)
                open_shards.add(shard)
                selections = _selections(task, shard)
                for k, selection in enumerate(selections):
                    last = shard if k == len(selections) - 1 else None
                    pending.append((i, pool.submit(_read_and_reduce, shard, task, selection), last))
                    while len(pending) > threads:
                        yield finish()
            while pending:
                yield finish()
    finally:  # after an error, or a consumer that stopped early
        for shard in open_shards:
            shard.close()


def compute_stats(
    dataset_dir: str | Path,
    output_path: str | Path | None = None,
    *,
    progress: bool = True,
    workers: int = 1,
    max_samples: int | None = None,
    seed: int = 0,
) -> Path:
    """Compute stats over the samples of the dataset (all, or `max_samples` chosen with `seed`).

    Writes and returns `stats.json` (default `<dataset_dir>/stats.json`). Fails before reading
    any shard when that file cannot be written (a read-only dataset: give `output_path`). Holds
    the dataset's lock meanwhile, so it never reads a dataset that `convert` is writing (a
    read-only dataset, which nothing can be writing, is read without it).
    """
    dataset_dir = Path(dataset_dir)
    with dataset_lock(dataset_dir, "spacenit stats", required=False):
        return _compute_stats(dataset_dir, output_path, progress=progress, workers=workers,
                              max_samples=max_samples, seed=seed)  # fmt: skip


def _compute_stats(dataset_dir: Path, output_path: str | Path | None, *, progress: bool, workers: int,
                   max_samples: int | None, seed: int) -> Path:  # fmt: skip
    reader = DatasetReader(dataset_dir)
    info = reader.info
    out = Path(output_path) if output_path else dataset_dir / STATS_JSON
    check_writable(out)
    chosen = _choose_samples(len(reader), max_samples, seed)
    tasks = _shard_tasks(reader, chosen)
    bar = tqdm(total=len(chosen), desc="stats", unit="sample", disable=not progress)

    def shard_partials() -> Iterator[dict[str, SensorAccumulator]]:
        for task, part in zip(tasks, _partials(tasks, workers), strict=True):
            yield part
            bar.update(len(task.rows))

    totals = _fold(shard_partials())  # in shard order, whatever the number of workers
    bar.close()

    payload = {
        "stats_version": STATS_VERSION,
        "dataset_fingerprint": _fingerprint(dataset_dir),
        "num_samples": len(chosen),
        "num_samples_total": len(reader),
        "subset": None if len(chosen) == len(reader) else {"max_samples": max_samples, "seed": seed},
        "percentiles": list(PERCENTILES),
        "sensors": {name: _sensor_payload(spec.bands, _sensor_accumulator(info, name, totals))
                    for name, spec in info.sensors.items()},
    }
    with naming(out):
        write_json_atomic(out, payload)
    return out


def _choose_samples(num_samples: int, max_samples: int | None, seed: int) -> np.ndarray:
    if num_samples == 0:
        raise StatsError("the dataset has no samples; nothing to compute stats over")
    if max_samples is not None and max_samples < 1:
        raise StatsError(f"max_samples must be positive, got {max_samples}")
    if max_samples is None or max_samples >= num_samples:
        return np.arange(num_samples)
    return np.sort(np.random.default_rng(seed).choice(num_samples, size=max_samples, replace=False))


def _shard_tasks(reader: DatasetReader, chosen: np.ndarray) -> list[_ShardTask]:
    """One task per shard; shard paths through the reader, which refuses any outside the dataset."""
    info = reader.info
    arrays = tuple((array_key(name, g.name), spec.categorical) for name, spec in info.sensors.items() for g in info.grids[name])
    rows: dict[str, list[int]] = {}
    for i in chosen:
        record = reader.records[i]
        rows.setdefault(record.shard, []).append(record.row)
    return [_ShardTask(reader.shard_path(shard), reader.storage, tuple(sorted(r)), arrays) for shard, r in rows.items()]


def _sensor_accumulator(info, sensor: str, totals: dict[str, SensorAccumulator]) -> SensorAccumulator:
    """A sensor's accumulator in its band order, from those of its grids."""
    grids = info.grids[sensor]
    stored = [b for g in grids for b in g.bands]
    parts = [totals[array_key(sensor, g.name)] for g in grids]
    return SensorAccumulator.concat(parts, [stored.index(b) for b in info.sensors[sensor].bands])


def _sensor_payload(bands: tuple[str, ...], acc: SensorAccumulator) -> dict:
    m = acc.moments

    def finite(values: np.ndarray) -> list[float | None]:
        return [float(v) if np.isfinite(v) else None for v in values]

    payload = {
        "bands": list(bands),
        "categorical": acc.class_counts is not None,
        "count": m.count.astype(np.int64).tolist(),
        "mean": m.mean.tolist(),
        "std": m.std.tolist(),
        # std 0: every valid value is the same, or there is none; standardized as x - mean.
        "constant": (m.std == 0).tolist(),
        "min": finite(m.min),
        "max": finite(m.max),
    }
    if acc.histogram is not None:
        values = acc.histogram.percentiles(PERCENTILES, m.min, m.max)
        payload["percentiles"] = {f"p{q:g}": v for q, v in zip(PERCENTILES, values, strict=True)}
    else:
        payload["class_counts"] = [{_class_key(k): int(v) for k, v in sorted(c.items())} for c in acc.class_counts]
    return payload


def _class_key(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _fingerprint(dataset_dir: Path) -> str:
    return hashlib.sha256((dataset_dir / DATASET_JSON).read_bytes()).hexdigest()[:16]


@dataclass
class SensorStats:
    """What standardizes one sensor: per band (in `bands` order) mean, std, and the constant flag."""

    bands: list[str]
    mean: np.ndarray
    std: np.ndarray
    #: True where the band has one value (std 0) or none; it is standardized as x - mean. None: no band is.
    constant: np.ndarray | None = None
    #: Where these numbers come from (a stats.json, a checkpoint's spacenit.json), for error messages.
    source: str = "the stats"

    def __post_init__(self) -> None:
        self.bands = list(self.bands)
        self.mean, self.std = np.asarray(self.mean, np.float64), np.asarray(self.std, np.float64)
        constant = np.zeros(len(self.bands), np.bool_) if self.constant is None else self.constant
        self.constant = np.asarray(constant, np.bool_)
        lengths = {len(self.bands), len(self.mean), len(self.std), len(self.constant)}
        if len(lengths) > 1:
            raise StatsError(f"{self.source}: bands {self.bands} have {len(self.mean)} means, {len(self.std)} stds "
                             f"and {len(self.constant)} constant flags; re-create it with `spacenit stats`")  # fmt: skip

    def check(self, sensor: str) -> None:
        """StatsError naming the source, the sensor and the band for a value that cannot standardize it.

        Mean and std must be finite; std > 0, or 0 for a band flagged constant.
        """
        for band, mean, std, constant in zip(self.bands, self.mean, self.std, self.constant, strict=True):
            if not np.isfinite(mean) or not np.isfinite(std):
                problem = f"mean {mean} and std {std} must be finite numbers"
            elif std < 0:
                problem = f"std {std} is negative"
            elif constant and std != 0:
                problem = f"the band is flagged constant but its std is {std}, not 0"
            elif not constant and std == 0:
                problem = "std is 0 but the band is not flagged constant (`constant`), so it cannot be divided by"
            else:
                continue
            raise StatsError(f"{self.source}: sensor {sensor!r}, band {band!r}: {problem}; "
                             "re-create it with `spacenit stats DATASET_DIR`")  # fmt: skip


def load_stats(path: str | Path, dataset_dir: str | Path | None = None) -> dict[str, SensorStats]:
    """Read and check stats.json; errors name the file, the band, and the command that makes it.

    Every value must be usable (`SensorStats.check`), and each band's mean must lie
    within its min and max, and its std within half their distance. With
    `dataset_dir`, the stats must also be of that dataset: the same
    `dataset_fingerprint`, and every band of every sensor it has.
    """
    path = Path(path)
    if not path.is_file():
        raise StatsError(f"stats file {path} does not exist; create it with `spacenit stats DATASET_DIR`")
    try:
        payload = json.loads(path.read_text())
        version = payload.get("stats_version")
        if version != STATS_VERSION:
            raise StatsError(
                f"{path} has stats version {version}, this SpaceNit reads version {STATS_VERSION}; "
                "re-create it with `spacenit stats`"
            )
        stats = {}
        for name, entry in payload["sensors"].items():
            stats[name] = SensorStats(entry["bands"], np.asarray(entry["mean"], np.float64),
                                      np.asarray(entry["std"], np.float64), entry["constant"], str(path))  # fmt: skip
            stats[name].check(name)
            _check_range(path, name, entry)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        if isinstance(e, StatsError):
            raise
        raise StatsError(f"{path} is not a SpaceNit stats file ({type(e).__name__}: {e}); "
                         "re-create it with `spacenit stats`") from None  # fmt: skip
    if dataset_dir is not None:
        _check_dataset(path, payload["dataset_fingerprint"], stats, Path(dataset_dir))
    return stats


def _check_range(path: Path, sensor: str, entry: dict) -> None:
    """Each band's mean within [min, max] and std within (max - min) / 2, up to rounding; min and max
    are absent (null) for a band without a valid value."""
    for band, count, mean, std, low, high in zip(entry["bands"], entry["count"], entry["mean"], entry["std"],
                                                 entry["min"], entry["max"], strict=True):  # fmt: skip
        if not count:
            continue
        slack = 1e-9 * max(abs(low), abs(high), 1.0)
        if not (low - slack <= mean <= high + slack and std <= (high - low) / 2 + slack):
            raise StatsError(f"{path}: sensor {sensor!r}, band {band!r}: mean {mean} and std {std} cannot come "
                             f"from values between min {low} and max {high}; re-create it with "
                             "`spacenit stats DATASET_DIR`")  # fmt: skip


def _check_dataset(path: Path, fingerprint: str, stats: dict[str, SensorStats], dataset_dir: Path) -> None:
    """StatsError unless `stats` (read from `path`) were computed on the dataset in `dataset_dir`."""
    info = load_dataset_info(dataset_dir)
    actual = _fingerprint(dataset_dir)
    if fingerprint != actual:
        raise StatsError(f"{path} was computed on another dataset (dataset_fingerprint {fingerprint}; "
                         f"{dataset_dir / DATASET_JSON} has {actual}): re-run `spacenit stats {dataset_dir}`")  # fmt: skip
    for name, spec in info.sensors.items():
        missing = [b for b in spec.bands if name not in stats or b not in stats[name].bands]
        if missing:
            raise StatsError(f"{path} has no stats for sensor {name!r}, band(s) {missing}, which the dataset "
                             f"{dataset_dir} has; re-run `spacenit stats {dataset_dir}`")  # fmt: skip
