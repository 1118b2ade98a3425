"""The `stats` stage: per-sensor, per-band normalization statistics.

One streaming pass over the shards (all samples, or a seeded subset). Each
band keeps count, mean, M2, min and max in float64, folded in batch by batch
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
import torch
from tqdm import tqdm

from spacenit.data.format import DATASET_JSON, write_json_atomic
from spacenit.data.shards import DatasetReader, Shard
from spacenit.sensors import SENTINEL

STATS_JSON = "stats.json"
STATS_VERSION = 2
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
#: Threads reading (and decompressing) the next Zarr batches while one process reduces the current one.
READER_THREADS = 3  # on 2 cores: stats / read 0.93 with 3, 1.10 with 2, 1.14 with 1 (EuroSAT x5)


class StatsError(ValueError):
    """A stats file that is missing, malformed, or does not fit the data."""


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

        One pass of sums and sums of squares in float64 (a float32 squared is exact
        in float64), then M2 = S2 - S1 * mean. Where that difference cancels badly
        (a band whose mean is over 100 standard deviations) the band is redone with
        exact deviations, so the result stays within 1e-9 of the two-pass one.
        """
        values = values[None] if values.ndim == 2 else values
        axes = (0, 2)
        lowest = values.min(axis=axes) if values.size else np.zeros(values.shape[1])
        if (lowest > SENTINEL).all():  # no sentinel anywhere (the common case): no masks
            count = np.full(values.shape[1], float(values.shape[0] * values.shape[2]))
            safe, lo, hi = values, lowest, values.max(axis=axes)
        else:
            valid = values != SENTINEL
            count = valid.sum(axis=axes).astype(np.float64)
            safe = np.where(valid, values, values.dtype.type(0))  # the one masked copy: for the sums
            lo = values.min(axis=axes, where=valid, initial=np.inf)
            hi = values.max(axis=axes, where=valid, initial=-np.inf)
        s1 = safe.sum(axis=axes, dtype=np.float64)
        s2 = np.einsum("rcs,rcs->c", safe, safe, dtype=np.float64)
        mean = s1 / np.maximum(count, 1)
        m2 = s2 - s1 * mean
        for c in np.flatnonzero(m2 < 1e-4 * s2):  # cancellation: exact deviations for this band
            band = safe[:, c].astype(np.float64) - mean[c]
            band[values[:, c] == SENTINEL] = 0.0
            m2[c] = np.einsum("rs,rs->", band, band)
        return cls(count, mean, np.maximum(m2, 0.0), lo.astype(np.float64), hi.astype(np.float64))

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


#: The histogram bucket of the sentinel, whose count is taken out again after counting.
_SENTINEL_BUCKET = int(np.array([SENTINEL], dtype="<f4").view("<u4")[0] >> 16)


@cache
def _bucket_bounds() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bucket id: (its position in value order, its smallest and its largest float32 as float64)."""
    top = np.arange(_NUM_BUCKETS, dtype=np.uint32)  # a bucket is the top 16 bits of a float32
    negative = top >= 0x8000
    # Value order: negatives by decreasing magnitude (bits), then positives by increasing bits.
    position = np.where(negative, 0xFFFF - top, top + 0x8000)
    bits = top << 16
    low_bits = np.where(negative, bits | 0xFFFF, bits).astype(np.uint32)
    high_bits = np.where(negative, bits, bits | 0xFFFF).astype(np.uint32)
    with np.errstate(invalid="ignore"):  # the NaN buckets, which never hold a value
        low, high = low_bits.view(np.float32).astype(np.float64), high_bits.view(np.float32).astype(np.float64)
    return position, low, high


@dataclass
class FloatHistogram:
    """Counts per band over the 65536 buckets of float32 values (their top 16 bits); mergeable.

    Only every HISTOGRAM_STRIDE-th value along a row is counted: counting is the
    most expensive part of `stats`. Sampling a quarter of the values moves a
    percentile's rank by about sqrt(q (1 - q) / (N / 4)): 0.03 percentile points
    for p2 of a band of a million values, 0.003 for 100 million.
    """

    counts: np.ndarray  # (C, 65536) int64, indexed by the top 16 bits of the value

    @classmethod
    def empty(cls, num_bands: int) -> FloatHistogram:
        return cls(np.zeros((num_bands, _NUM_BUCKETS), dtype=np.int64))

    @classmethod
    def of(cls, values: np.ndarray, has_sentinel: bool = True) -> FloatHistogram:
        """Histogram of `values`, (C, N) or a `band_view` (R, C, S), without the sentinel."""
        histogram = cls.empty(values.shape[-2])
        histogram.add(values, has_sentinel)
        return histogram

    def add(self, values: np.ndarray, has_sentinel: bool = True) -> None:
        """Count `values` too, in place: a new (C, 65536) array per batch costs as much as counting.

        Counting everything and then taking the sentinels out of their bucket is
        exact and avoids masking every value.
        """
        values = values[None] if values.ndim == 2 else values
        if values.dtype != np.dtype("<f4") or not values.flags.c_contiguous:
            values = np.ascontiguousarray(values, dtype="<f4")
        # The top 16 bits of a little-endian float32 are its second uint16: a strided
        # view, where a shift would compute a new array.
        tops = values.view("<u2")[:, :, 1 :: 2 * HISTOGRAM_STRIDE]
        if tops.size == 0:
            return
        # One count for all bands, each band over the span of buckets it uses (a band fills a
        # few hundred of the 65536; full-length counts per band and batch cost more than
        # counting): key = band * span + (bucket - the band's lowest bucket).
        keys = torch.from_numpy(tops.astype(np.int32)).transpose(0, 1).reshape(tops.shape[1], -1)
        lowest = keys.amin(dim=1, keepdim=True)
        span = int((keys.amax(dim=1, keepdim=True) - lowest).max()) + 1
        keys -= lowest
        keys += torch.arange(tops.shape[1], dtype=torch.int32)[:, None] * span
        # torch.bincount, unlike np.bincount, lets go of the GIL, so the threads that read
        # the next batches keep running while this one counts. It costs `stats` torch's
        # import (~1.7 s once); sorting the keys with numpy instead (GIL-free too) took
        # 1.9x the read's CPU where this takes 1.7x.
        counted = torch.bincount(keys.reshape(-1), minlength=tops.shape[1] * span).view(-1, span).numpy()
        for c, low in enumerate(lowest[:, 0].tolist()):
            width = min(span, _NUM_BUCKETS - low)
            self.counts[c, low : low + width] += counted[c, :width]
        if has_sentinel:
            self.counts[:, _SENTINEL_BUCKET] -= (values[:, :, ::HISTOGRAM_STRIDE] == SENTINEL).sum(axis=(0, 2))

    def merge(self, other: FloatHistogram) -> FloatHistogram:
        """Fold `other` into this histogram, in place."""
        self.counts += other.counts
        return self

    def percentiles(self, qs: tuple[float, ...], lo: np.ndarray, hi: np.ndarray) -> list[list[float | None]]:
        """[q][band] approximate percentiles, clamped to the exact [lo, hi]; None for empty bands."""
        position, low, high = _bucket_bounds()
        out: list[list[float | None]] = [[] for _ in qs]
        for band, counts in enumerate(self.counts):
            used = np.flatnonzero(counts)  # a band fills few of the 65536 buckets: only those matter
            if used.size == 0:
                for column in out:
                    column.append(None)
                continue
            used = used[np.argsort(position[used])]  # in value order
            cumulative = np.cumsum(counts[used])
            ranks = np.asarray(qs) / 100.0 * (cumulative[-1] - 1)  # numpy's "linear" positions
            i = np.searchsorted(cumulative, ranks, side="right")
            before = np.where(i > 0, cumulative[i - 1], 0)
            bucket = used[i]
            values = low[bucket] + (ranks - before) / counts[bucket] * (high[bucket] - low[bucket])
            for column, value in zip(out, np.clip(values, lo[band], hi[band]), strict=True):
                column.append(float(value))
        return out


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
            self.histogram.add(values, has_sentinel=bool((moments.count < values.shape[0] * values.shape[2]).any()))

    def merge(self, other: SensorAccumulator) -> SensorAccumulator:
        moments = self.moments.merge(other.moments)
        if self.class_counts is not None:
            return SensorAccumulator(moments, None, [a + b for a, b in zip(self.class_counts, other.class_counts, strict=True)])
        return SensorAccumulator(moments, self.histogram.merge(other.histogram), None)


@dataclass(frozen=True)
class _ShardTask:
    """One shard's share of the work: which rows to read, and what each sensor is."""

    path: Path
    storage: str
    rows: tuple[int, ...]
    #: (sensor, categorical) pairs
    sensors: tuple[tuple[str, bool], ...]


def _selections(task: _ShardTask, shard: Shard) -> list[slice | list[int]]:
    """The rows of one shard in batches: a slice where they are contiguous.

    A batch holds about BATCH_BYTES, or less when that would leave the shard fewer than
    MIN_BATCHES batches (but at least MIN_BATCH_BYTES or one row): reading overlaps
    reducing only from the second batch on, so a shard that fits in one batch (two
    whole Landsat scenes) would be read and then reduced, one after the other.
    Splitting further did not pay on Zarr: 8 batches made EuroSAT's stats / read
    1.37 instead of 1.26.
    """
    bytes_per_row = max(sum(int(np.prod(shard.shape(name)[1:])) * 4 for name, _ in task.sensors), 1)
    rows = list(task.rows)
    spread = max(MIN_BATCH_BYTES // bytes_per_row, -(-len(rows) // MIN_BATCHES))
    size = max(1, min(BATCH_BYTES // bytes_per_row, spread))
    out = []
    for start in range(0, len(rows), size):
        batch = rows[start : start + size]
        out.append(slice(batch[0], batch[-1] + 1) if batch[-1] - batch[0] == len(batch) - 1 else batch)
    return out


def _read_batch(shard: Shard, task: _ShardTask, selection: slice | list[int]) -> dict[str, np.ndarray]:
    """sensor -> (n, T, C, ...) of the selected rows."""
    return {name: shard.read(name, selection) for name, _ in task.sensors}


def _read_batches(task: _ShardTask) -> Iterator[dict[str, np.ndarray]]:
    """The rows of one shard, batch by batch."""
    shard = Shard(task.path, task.storage)
    try:
        for selection in _selections(task, shard):
            yield _read_batch(shard, task, selection)
    finally:
        shard.close()


def _accumulate(task: _ShardTask, batches: Iterable[dict[str, np.ndarray]]) -> dict[str, SensorAccumulator]:
    """One shard's partial result, batch by batch in row order."""
    categorical = dict(task.sensors)
    total = None
    for batch in batches:
        views = {name: band_view(v, channel_axis=2) for name, v in batch.items()}
        if total is None:
            total = {name: SensorAccumulator.of(v, categorical[name]) for name, v in views.items()}
        else:
            for name, v in views.items():
                total[name].add(v)
    return total


def _merged(total: dict[str, SensorAccumulator] | None, part: dict[str, SensorAccumulator]) -> dict[str, SensorAccumulator]:
    return part if total is None else {name: total[name].merge(acc) for name, acc in part.items()}


def _shard_stats(task: _ShardTask) -> dict[str, SensorAccumulator]:
    """Worker entry point: the partial result of one shard."""
    return _accumulate(task, _read_batches(task))


def _partials(tasks: list[_ShardTask], workers: int) -> Iterator[dict[str, SensorAccumulator]]:
    """Each shard's partial result, in shard order.

    One process reduces batch after batch while READER_THREADS threads read
    the next ones (decompression, pread and numpy release the GIL); several
    processes take a shard each.
    """
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=workers, initializer=_one_torch_thread) as pool:
            yield from pool.map(_shard_stats, tasks)
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # torch's spare threads would spin on the cores the readers need
    try:
        # h5py serializes every call under one lock: a second HDF5 reader would only wait.
        threads = READER_THREADS if tasks[0].storage == "zarr" else 1
        batches = _read_ahead(tasks, threads)
        for i, group in itertools.groupby(batches, key=lambda item: item[0]):
            yield _accumulate(tasks[i], (batch for _, batch in group))
    finally:
        torch.set_num_threads(previous)


def _one_torch_thread() -> None:
    """Pool worker set-up: a forked child whose parent already ran torch's thread pool
    hangs in its first parallel torch op, unless it keeps torch to its own thread
    (one worker is one core's worth of work anyway)."""
    torch.set_num_threads(1)


def _read_ahead(tasks: list[_ShardTask], threads: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(task index, batch) for every batch of every task, in order, read by `threads` threads.

    At most `threads` batches are read ahead of the consumer, which bounds memory
    to a few BATCH_BYTES. Each shard is opened once, and closed after its last batch.
    """
    pending: deque[tuple[int, Future, Shard | None]] = deque()  # the shard: set on its last batch
    open_shards: set[Shard] = set()

    def finish() -> tuple[int, dict[str, np.ndarray]]:
        i, future, shard_done = pending.popleft()
        batch = future.result()
        if shard_done is not None:
            shard_done.close()
            open_shards.discard(shard_done)
        return i, batch

    try:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="stats-read") as pool:
            for i, task in enumerate(tasks):
                shard = Shard(task.path, task.storage)
                open_shards.add(shard)
                selections = _selections(task, shard)
                for k, selection in enumerate(selections):
                    last = shard if k == len(selections) - 1 else None
                    pending.append((i, pool.submit(_read_batch, shard, task, selection), last))
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

    Writes and returns `stats.json` (default `<dataset_dir>/stats.json`).
    """
    dataset_dir = Path(dataset_dir)
    reader = DatasetReader(dataset_dir)
    info = reader.info
    chosen = _choose_samples(len(reader), max_samples, seed)
    tasks = _shard_tasks(reader, chosen)
    bar = tqdm(total=len(chosen), desc="stats", unit="sample", disable=not progress)
    totals = None
    for task, part in zip(tasks, _partials(tasks, workers), strict=True):
        totals = _merged(totals, part)  # in shard order, whatever the number of workers
        bar.update(len(task.rows))
    bar.close()

    payload = {
        "stats_version": STATS_VERSION,
        "dataset_fingerprint": _fingerprint(dataset_dir),
        "num_samples": len(chosen),
        "num_samples_total": len(reader),
        "subset": None if len(chosen) == len(reader) else {"max_samples": max_samples, "seed": seed},
        "percentiles": list(PERCENTILES),
        "sensors": {name: _sensor_payload(info.sensors[name].bands, acc) for name, acc in totals.items()},
    }
    out = Path(output_path) if output_path else dataset_dir / STATS_JSON
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
    sensors = tuple((name, spec.categorical) for name, spec in reader.info.sensors.items())
    rows: dict[str, list[int]] = {}
    for i in chosen:
        record = reader.records[i]
        rows.setdefault(record.shard, []).append(record.row)
    return [
        _ShardTask(reader.root / shard, reader.storage, tuple(sorted(r)), sensors) for shard, r in rows.items()
    ]


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
    bands: list[str]
    mean: np.ndarray
    std: np.ndarray


def load_stats(path: str | Path) -> dict[str, SensorStats]:
    """Read stats.json; errors name the file and the command that makes it."""
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
        return {
            name: SensorStats(list(s["bands"]), np.asarray(s["mean"], np.float64), np.asarray(s["std"], np.float64))
            for name, s in payload["sensors"].items()
        }
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise StatsError(f"{path} is not a SpaceNit stats file ({e}); re-create it with `spacenit stats`") from None
