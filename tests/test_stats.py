"""stats: streaming, mergeable moments agree with numpy on the whole array; sentinel never counts."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spacenit.conversion.convert import convert
from spacenit.data import stats as stats_module
from spacenit.data.shards import DatasetReader, Shard
from spacenit.data.standardizer import Standardizer
from spacenit.data.stats import (
    HISTOGRAM_STRIDE,
    PERCENTILES,
    FloatHistogram,
    RunningMoments,
    SensorAccumulator,
    SensorStats,
    StatsError,
    _selections,
    _shard_tasks,
    compute_stats,
    histogram_stride,
    load_stats,
)  # fmt: skip
from spacenit.sensors import SENTINEL, WORLDCOVER, BandGroup, SensorSpec
from tests.rasters import damage_zarr_shard_index, write_tif


def band_values(array: np.ndarray) -> np.ndarray:
    """(T, C, H, W) or (T, C) -> (C, N): every value of each band, a copy; the numpy reference's layout."""
    return np.moveaxis(array, 1, 0).reshape(array.shape[1], -1)


def sensor_band_values(sample, sensor: str, spec) -> list[np.ndarray]:
    """Every stored value of each band of `sensor`, in its band order, each at its own grid's resolution."""
    per_band = {}
    for grid, array in sample.data[sensor].items():
        for band, values in zip(grid.bands, band_values(array), strict=True):
            per_band[band] = values
    return [per_band[b] for b in spec.bands]


def test_stats_json_matches_numpy_over_all_samples_each_band_on_its_own_grid(synthetic_dataset: Path) -> None:
    stats = json.loads((synthetic_dataset / "stats.json").read_text())
    reader = DatasetReader(synthetic_dataset)
    for sensor, spec in reader.info.sensors.items():
        whole = _whole(reader, sensor)
        got = stats["sensors"][sensor]
        assert got["bands"] == list(spec.bands)
        for c in range(spec.num_bands):
            values = whole[c][whole[c] != SENTINEL]
            assert got["count"][c] == values.size
            np.testing.assert_allclose(got["mean"][c], values.mean(), rtol=1e-6)
            np.testing.assert_allclose(got["std"][c], values.std(), rtol=1e-6)
            assert got["min"][c] == values.min() and got["max"][c] == values.max()
    # A 60 m band counts its 60 m pixels: a 36th of a 10 m band's (nodata patches aside).
    counts = dict(zip(stats["sensors"]["sentinel2_l2a"]["bands"], stats["sensors"]["sentinel2_l2a"]["count"], strict=True))
    assert counts["B01"] < counts["B02"] / 30


def test_merging_many_partials_equals_one_pass() -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(1000.0, 250.0, size=(3, 10_000))
    data[:, rng.random(10_000) < 0.2] = SENTINEL
    merged = RunningMoments.empty(3)
    for part in np.array_split(data, 37, axis=1):  # uneven worker shares
        merged = merged.merge(RunningMoments.of(part))
    for c in range(3):
        values = data[c][data[c] != SENTINEL]
        np.testing.assert_allclose(merged.mean[c], values.mean(), rtol=1e-9)
        np.testing.assert_allclose(merged.std[c], values.std(), rtol=1e-9)
        assert merged.count[c] == values.size


def test_adding_batches_in_place_equals_one_accumulator_of_everything() -> None:
    # stats folds batch after batch into one accumulator; it must equal one of the whole
    # band view, histogram counts exactly, with negative values and sentinels in some batches.
    rng = np.random.default_rng(4)
    data = rng.normal(-20.0, 8.0, size=(12, 3, 256)).astype(np.float32)  # (rows, bands, pixels)
    data[3:5, 1, ::5] = SENTINEL
    whole = SensorAccumulator.of(data, categorical=False)
    folded = SensorAccumulator.of(data[:2], categorical=False)
    for start in range(2, 12, 3):
        folded.add(data[start : start + 3])
    np.testing.assert_array_equal(folded.histogram.dense(), whole.histogram.dense())
    # The independent reference: numpy's bincount of the top 16 bits of the counted, valid values,
    # in value order (negative floats by decreasing bits, then positive ones by increasing bits).
    counted = data[:, :, :: histogram_stride(data)]  # rows of 256 values: counted whole
    for c in range(3):
        band = counted[:, c][counted[:, c] != SENTINEL]
        expected = np.bincount(_value_order_bucket(band).ravel(), minlength=65536)
        np.testing.assert_array_equal(folded.histogram.dense()[c], expected)
    np.testing.assert_array_equal(folded.moments.count, whole.moments.count)
    np.testing.assert_allclose(folded.moments.mean, whole.moments.mean, rtol=1e-12)
    np.testing.assert_allclose(folded.moments.std, whole.moments.std, rtol=1e-12)
    np.testing.assert_array_equal(folded.moments.min, whole.moments.min)


def test_long_rows_are_counted_every_fourth_value_short_ones_whole() -> None:
    # Every fourth value of a 60 m band's 4-pixel rows would always be column 0.
    long_rows, short_rows = np.zeros((1, 1, 4096), np.float32), np.zeros((1, 1, 16), np.float32)
    assert histogram_stride(long_rows) == HISTOGRAM_STRIDE and histogram_stride(short_rows) == 1
    grid = np.arange(16, dtype=np.float32).reshape(1, 1, 16) + 1  # a 4 x 4 image, every value distinct
    assert SensorAccumulator.of(grid, categorical=False).histogram.dense()[0].sum() == 16


def _value_order_bucket(values: np.ndarray) -> np.ndarray:
    top = (values.astype(np.float32).view(np.uint32) >> 16).astype(np.int64)
    return np.where(top >= 0x8000, 0xFFFF - top, top + 0x8000)


def test_histogram_windows_follow_the_values_across_zero_and_batches_without_values() -> None:
    # Buckets are in value order, so a band of both signs keeps one window; a batch where a
    # band has no valid value leaves its window as it was; windows grow as batches go lower.
    values = np.array([-3.5, -1e-3, -0.0, 0.0, 2e-7, 1.0, 7.25, 3e4], dtype=np.float32)
    assert (np.diff(_value_order_bucket(values)) >= 0).all()
    first = np.stack([np.full(64, SENTINEL), np.linspace(-5, 5, 64)]).astype(np.float32)[None]
    second = np.stack([np.linspace(100, 900, 64), np.linspace(-50, -40, 64)]).astype(np.float32)[None]
    folded = SensorAccumulator.of(first, categorical=False)
    folded.add(second)
    both = np.concatenate([first, second], axis=2)
    for c in range(2):
        band = both[0, c, :: histogram_stride(first)]
        band = band[band != SENTINEL]
        expected = np.bincount(_value_order_bucket(band), minlength=65536)
        np.testing.assert_array_equal(folded.histogram.dense()[c], expected)
    # Band 1 crosses zero: its window spans from its lowest to its highest bucket, no more.
    buckets = _value_order_bucket(both[0, 1])
    assert folded.histogram.low[1] == buckets.min() and folded.histogram.counts.shape[1] <= buckets.max() - buckets.min() + 1
    assert folded.histogram.low[0] == _value_order_bucket(both[0, 0, 64:]).min()


def test_a_mean_far_above_the_spread_keeps_full_precision() -> None:
    # One-pass sums cancel when mean >> std; such bands are redone with exact deviations.
    rng = np.random.default_rng(5)
    values = (100_000.0 + rng.normal(0.0, 0.5, size=(2, 50_000))).astype(np.float32)
    values[1, ::7] = SENTINEL
    m = RunningMoments.of(values)
    for c in range(2):
        real = values[c][values[c] != SENTINEL].astype(np.float64)
        np.testing.assert_allclose(m.std[c], real.std(), rtol=1e-9)
        np.testing.assert_allclose(m.mean[c], real.mean(), rtol=1e-12)


def test_all_sentinel_band_has_zero_count() -> None:
    m = RunningMoments.of(np.full((1, 50), SENTINEL))
    assert m.count[0] == 0 and m.mean[0] == 0 and not np.isfinite(m.min[0])


def test_standardizer_zscores_and_keeps_sentinel(synthetic_dataset: Path) -> None:
    reader = DatasetReader(synthetic_dataset)
    stats = load_stats(synthetic_dataset / "stats.json")
    std = Standardizer(stats, reader.info.sensors)
    (x,) = reader[0].data["sentinel1"].values()
    x = x.copy()
    x[0, 0, 0, 0] = SENTINEL
    out = std("sentinel1", x)
    assert out[0, 0, 0, 0] == SENTINEL
    expected = (x[0, 1, 5, 5] - stats["sentinel1"].mean[1]) / stats["sentinel1"].std[1]
    np.testing.assert_allclose(out[0, 1, 5, 5], expected, rtol=1e-5)


def test_standardizer_refuses_stats_of_other_bands(synthetic_dataset: Path) -> None:
    reader = DatasetReader(synthetic_dataset)
    stats = load_stats(synthetic_dataset / "stats.json")
    stats["sentinel1"].bands = ["HH", "HV"]
    with pytest.raises(StatsError, match="another dataset"):
        Standardizer(stats, reader.info.sensors)


def test_missing_stats_file_names_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(StatsError, match=r"nope\.json does not exist.*spacenit stats"):
        load_stats(tmp_path / "nope.json")


def _whole(reader: DatasetReader, sensor: str, indexes=None) -> list[np.ndarray]:
    """Every value of each band over the chosen samples, in memory: the numpy reference. [C] x (N_c,) float64."""
    indexes = range(len(reader)) if indexes is None else indexes
    spec = reader.info.sensors[sensor]
    samples = [sensor_band_values(reader[i], sensor, spec) for i in indexes]
    return [np.concatenate([bands[c] for bands in samples]).astype(np.float64) for c in range(spec.num_bands)]


def test_percentiles_are_within_a_bucket_and_a_percentile_of_numpy(synthetic_dataset: Path) -> None:
    # The histogram counts every HISTOGRAM_STRIDE-th value: on this small set that moves a
    # percentile's rank by up to a point, on top of the bucket's 2**-7 relative width.
    stats = json.loads((synthetic_dataset / "stats.json").read_text())
    reader = DatasetReader(synthetic_dataset)
    for sensor in ("sentinel2_l2a", "sentinel1"):  # reflectance (positive) and dB (negative)
        whole = _whole(reader, sensor)
        for q in PERCENTILES:
            got = np.array(stats["sensors"][sensor]["percentiles"][f"p{q:g}"])
            for c, band in enumerate(whole):
                band = band[band != SENTINEL]
                lower, upper = np.percentile(band, [max(q - 1, 0), min(q + 1, 100)])
                slack = 2**-7 * max(abs(lower), abs(upper))
                assert lower - slack <= got[c] <= upper + slack, (sensor, q, c)


def test_percentiles_of_the_counted_values_are_within_a_bucket_of_numpy() -> None:
    rng = np.random.default_rng(4)
    values = np.stack([rng.gamma(2.0, 800.0, 400_000), rng.normal(-12.0, 4.0, 400_000)]).astype(np.float32)
    acc = SensorAccumulator.of(values, categorical=False)
    got = np.array(acc.histogram.percentiles(PERCENTILES, acc.moments.min, acc.moments.max))
    counted = values[:, ::HISTOGRAM_STRIDE].astype(np.float64)
    exact = np.percentile(counted, PERCENTILES, axis=1)
    np.testing.assert_allclose(got, exact, rtol=2**-7)


def test_stats_workers_run_after_torch_used_its_thread_pool(synthetic_dataset: Path, tmp_path: Path) -> None:
    # A forked child of a process that already ran a parallel torch op hangs in its own
    # first one unless the pool's initializer keeps torch to one thread. A subprocess
    # with a timeout turns that hang into a failure.
    script = (
        "import sys, torch\n"
        "from spacenit.data.stats import compute_stats\n"
        "torch.ones(1_000_000).sum()  # starts torch's intra-op threads in this parent\n"
        "compute_stats(sys.argv[1], sys.argv[2], workers=2, progress=False)\n"
    )
    out = tmp_path / "stats.json"
    run = subprocess.Popen([sys.executable, "-c", script, str(synthetic_dataset), str(out)], start_new_session=True)
    try:
        assert run.wait(timeout=60) == 0
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)  # the hung pool workers too
        pytest.fail("compute_stats(workers=2) hung in its pool workers after the parent used torch")
    assert json.loads(out.read_text())["num_samples"] == 24


def test_many_workers_and_a_seeded_subset_agree_with_numpy(synthetic_dataset: Path, tmp_path: Path) -> None:
    one = json.loads(compute_stats(synthetic_dataset, tmp_path / "one.json", progress=False).read_text())
    two = json.loads(compute_stats(synthetic_dataset, tmp_path / "two.json", workers=2, progress=False).read_text())
    assert one == two  # partials merge in shard order, whatever the number of workers

    subset = compute_stats(synthetic_dataset, tmp_path / "sub.json", max_samples=7, seed=3, progress=False)
    got = json.loads(subset.read_text())
    again = json.loads(compute_stats(synthetic_dataset, tmp_path / "sub2.json", max_samples=7, seed=3, progress=False).read_text())
    assert got == again and got["num_samples"] == 7 and got["subset"] == {"max_samples": 7, "seed": 3}
    chosen = np.sort(np.random.default_rng(3).choice(24, size=7, replace=False))
    whole = _whole(DatasetReader(synthetic_dataset), "sentinel2_l2a", chosen)
    for c, band in enumerate(whole):
        values = band[band != SENTINEL]
        assert got["sensors"]["sentinel2_l2a"]["count"][c] == values.size
        np.testing.assert_allclose(got["sensors"]["sentinel2_l2a"]["mean"][c], values.mean(), rtol=1e-6)
        np.testing.assert_allclose(got["sensors"]["sentinel2_l2a"]["std"][c], values.std(), rtol=1e-6)


def test_sentinel_values_never_count_in_the_histogram() -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(-99_500.0, 300.0, size=(2, 5000)).astype(np.float32)  # real values near the sentinel
    values[:, ::3] = SENTINEL
    acc = SensorAccumulator.of(values, categorical=False)
    for c in range(2):
        real = values[c][values[c] != SENTINEL].astype(np.float64)
        assert real.size == acc.moments.count[c]
        assert acc.histogram.dense()[c].sum() == (values[c, ::HISTOGRAM_STRIDE] != SENTINEL).sum()
        (p50,) = acc.histogram.percentiles((50.0,), acc.moments.min, acc.moments.max)[0][c : c + 1]
        np.testing.assert_allclose(p50, np.percentile(real, 50), rtol=2**-7)


def test_categorical_bands_get_class_counts(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    classes = rng.choice(np.array([10, 20, 30, 80], np.uint8), size=(1, 32, 32))
    for i in range(3):
        write_tif(tmp_path / "in" / f"s{i}" / "worldcover" / "map.tif", classes if i else np.full_like(classes, 10), nodata=0)
    write_tif(tmp_path / "in" / "s3" / "worldcover" / "map.tif", np.where(classes == 80, 0, classes).astype(np.uint8), nodata=0)
    convert(tmp_path / "in", tmp_path / "ds", tile_size_px=32, progress=False)
    stats = json.loads(compute_stats(tmp_path / "ds", progress=False).read_text())["sensors"]["worldcover"]

    whole = _whole(DatasetReader(tmp_path / "ds"), "worldcover")[0]
    values, counts = np.unique(whole[whole != SENTINEL], return_counts=True)
    assert stats["categorical"] is True and "percentiles" not in stats
    assert stats["class_counts"] == [{str(int(v)): int(n) for v, n in zip(values, counts, strict=True)}]


def test_standardizer_two_std_scaling_and_band_order_by_name(synthetic_dataset: Path) -> None:
    reader = DatasetReader(synthetic_dataset)
    stats = load_stats(synthetic_dataset / "stats.json")
    s1 = stats["sentinel1"]
    (x,) = reader[0].data["sentinel1"].values()
    x = x.copy()
    x[0, 1, 2, 2] = SENTINEL
    out = Standardizer(stats, reader.info.sensors, method="two_std")("sentinel1", x)
    expected = (x[0, 0, 5, 5] - (s1.mean[0] - 2 * s1.std[0])) / (4 * s1.std[0])
    np.testing.assert_allclose(out[0, 0, 5, 5], expected, rtol=1e-5)
    assert out[0, 1, 2, 2] == SENTINEL
    # Stats listing the bands in another order are applied by name.
    stats["sentinel1"] = SensorStats(s1.bands[::-1], s1.mean[::-1], s1.std[::-1])
    swapped = Standardizer(stats, reader.info.sensors, method="two_std")("sentinel1", x)
    np.testing.assert_array_equal(swapped, out)


def test_standardizer_leaves_categorical_sensors_alone() -> None:
    classes = np.array([[[[10.0, 20.0], [SENTINEL, 80.0]]]], np.float32)
    stats = {"worldcover": SensorStats(["landcover_class"], np.array([40.0]), np.array([20.0]))}
    out = Standardizer(stats, {"worldcover": WORLDCOVER})("worldcover", classes)
    np.testing.assert_array_equal(out, classes)


def test_stats_of_another_version_are_refused(synthetic_dataset: Path, tmp_path: Path) -> None:
    payload = json.loads((synthetic_dataset / "stats.json").read_text())
    payload["stats_version"] = 1
    (tmp_path / "old.json").write_text(json.dumps(payload))
    with pytest.raises(StatsError, match=r"stats version 1.*spacenit stats"):
        load_stats(tmp_path / "old.json")


def test_a_damaged_shard_fails_stats_naming_it_and_closes_the_others(synthetic_dataset: Path, tmp_path: Path) -> None:
    # The read-ahead threads hand a failed read to the reducer, which raises it; every
    # shard opened so far is closed (no file descriptor left behind).
    shutil.copytree(synthetic_dataset, tmp_path / "ds")
    damage_zarr_shard_index(tmp_path / "ds", "shard-00001.zarr", "srtm/30m")
    fds_before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ValueError, match=r"shard index of .*shard-00001\.zarr/srtm/30m.* is damaged"):
        compute_stats(tmp_path / "ds", tmp_path / "stats.json", progress=False)
    assert len(os.listdir("/proc/self/fd")) == fds_before
    assert not (tmp_path / "stats.json").exists()


def test_batches_cover_each_shard_in_order_and_a_one_batch_shard_is_split(synthetic_dataset: Path, monkeypatch) -> None:
    reader = DatasetReader(synthetic_dataset)
    task = _shard_tasks(reader, np.arange(len(reader)))[0]
    shard = Shard(task.path, task.storage)
    try:

        def rows_of(selections) -> list[int]:
            return [r for s in selections for r in (range(s.start, s.stop) if isinstance(s, slice) else s)]

        row_bytes = sum(int(np.prod(shard.shape(name)[1:])) * 4 for name, _ in task.arrays)
        monkeypatch.setattr(stats_module, "MIN_BATCH_BYTES", 1)
        whole = _selections(task, shard)  # the shard fits in one BATCH_BYTES batch: halved to overlap read and reduce
        assert len(task.rows) >= 2 and len(whole) == 2 and rows_of(whole) == list(task.rows)
        monkeypatch.setattr(stats_module, "BATCH_BYTES", 2 * row_bytes)
        pairs = _selections(task, shard)
        assert [len(rows_of([s])) for s in pairs][:-1] == [2] * (len(pairs) - 1) and rows_of(pairs) == list(task.rows)
    finally:
        shard.close()


def test_warm_up_compiles_the_kernels_for_the_band_views_stats_gives_them(tmp_path: Path) -> None:
    # The images run warm_up at build time; it is only worth it if stats then finds the
    # very signatures compiled: float32 band views of the shards' arrays.
    script = (
        "import numpy as np\n"
        "from spacenit.data import band_kernels as k\n"
        "from spacenit.data.stats import SensorAccumulator, band_view\n"
        "k.warm_up()\n"
        "before = {f: len(getattr(k, f).signatures) for f in ('band_sums', 'bucket_range', 'bucket_counts')}\n"
        "values = np.full((3, 1, 4, 16, 16), 7.0, np.float32)\n"
        "values[0, 0, 1, :2] = -99999.0\n"
        "SensorAccumulator.of(band_view(values, channel_axis=2), categorical=False)\n"
        "after = {f: len(getattr(k, f).signatures) for f in before}\n"
        "assert before == after == {f: 1 for f in before}, (before, after)\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=120)
    assert any((tmp_path / "numba").rglob("*.nbi"))  # the cache an image ships


def test_a_value_outside_the_given_range_falls_back_to_the_counted_range() -> None:
    # -0.0 compares equal to +0.0, so a band's min may be +0.0 while -0.0 sits one bucket
    # below +0.0's window: such a batch is counted over the range of its own values.
    values = np.array([[-0.0, 0.0, 1.0, 2.5] * 8], dtype=np.float32)
    histogram = FloatHistogram.of(values, lo=np.array([0.0]), hi=np.array([2.5]))
    expected = np.bincount(_value_order_bucket(values[0, :: histogram_stride(values[None])]), minlength=65536)
    np.testing.assert_array_equal(histogram.dense()[0], expected)
    assert expected[_value_order_bucket(np.array([-0.0]))[0]] == 8


# ---------------------------------------------------------------- stats.json is checked on load (issue 20, case 3)


def _edited_stats(synthetic_dataset: Path, tmp_path: Path, edit) -> Path:
    """A copy of the synthetic dataset's stats.json with `edit(payload)` applied (NaN and Infinity as JSON allows)."""
    payload = json.loads((synthetic_dataset / "stats.json").read_text())
    edit(payload)
    path = tmp_path / "stats.json"
    path.write_text(json.dumps(payload))
    return path


def _set(sensor: str, key: str, band: int, value: float):
    def edit(payload: dict) -> None:
        payload["sensors"][sensor][key][band] = value

    return edit


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("std", float("nan"), r"mean \S+ and std nan must be finite"),  # np.where(std > 0, std, 1.0) made it 1.0
        ("std", -3.0, r"std -3\.0 is negative"),  # made it 1.0 too
        ("std", float("inf"), r"mean \S+ and std inf must be finite"),  # zeroed the band
        ("mean", 1e30, r"mean 1e\+30 .* cannot come from values between min"),  # trained to a finite loss
        ("std", 0.0, r"std is 0 but the band is not flagged constant"),
    ],
)
def test_load_stats_refuses_a_value_that_cannot_standardize_naming_file_and_band(
    synthetic_dataset: Path, tmp_path: Path, key: str, value: float, problem: str
) -> None:
    band = DatasetReader(synthetic_dataset).info.sensors["sentinel1"].bands[1]
    path = _edited_stats(synthetic_dataset, tmp_path, _set("sentinel1", key, 1, value))
    with pytest.raises(StatsError, match=rf"{re.escape(str(path))}: sensor 'sentinel1', band '{band}': {problem}.*spacenit stats"):
        load_stats(path)


def test_stats_of_a_band_the_dataset_has_not_are_refused_naming_it(synthetic_dataset: Path, tmp_path: Path) -> None:
    band = DatasetReader(synthetic_dataset).info.sensors["sentinel1"].bands[0]

    def drop_first_band(payload: dict) -> None:
        entry = payload["sensors"]["sentinel1"]
        for key in ("bands", "count", "mean", "std", "constant", "min", "max"):
            del entry[key][0]
        for values in entry["percentiles"].values():
            del values[0]

    path = _edited_stats(synthetic_dataset, tmp_path, drop_first_band)
    assert list(load_stats(path)) == list(json.loads(path.read_text())["sensors"])  # consistent in itself
    with pytest.raises(StatsError, match=rf"{re.escape(str(path))} has no stats for sensor 'sentinel1', band\(s\) \['{band}'\]"):
        load_stats(path, synthetic_dataset)


def test_stats_of_another_dataset_are_refused_by_fingerprint(synthetic_dataset: Path, tmp_path: Path) -> None:
    # The same dataset with one sample fewer: the bands agree, the numbers are not its own.
    other = tmp_path / "other"
    shutil.copytree(synthetic_dataset, other)
    info = json.loads((other / "dataset.json").read_text())
    info["samples"].pop()
    (other / "dataset.json").write_text(json.dumps(info))
    stats = other / "stats.json"
    assert load_stats(stats, synthetic_dataset)  # its own dataset
    with pytest.raises(StatsError, match=rf"{re.escape(str(stats))} was computed on another dataset .*{re.escape(str(other / 'dataset.json'))} has"):
        load_stats(stats, other)


def test_pretrain_with_bad_stats_is_one_line_naming_stats_json_and_band(synthetic_dataset: Path, tmp_path: Path, capsys) -> None:
    from spacenit.cli import main

    band = DatasetReader(synthetic_dataset).info.sensors["sentinel1"].bands[1]
    path = _edited_stats(synthetic_dataset, tmp_path, _set("sentinel1", "std", 1, float("nan")))
    code = main(["pretrain", str(synthetic_dataset), "--stats", str(path), "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert str(path) in err and f"band '{band}'" in err
    assert not (tmp_path / "out").exists()


def test_stats_flags_a_constant_band_and_the_standardizer_centres_it() -> None:
    values = np.stack([np.full(40, 7.0), np.arange(40.0), np.full(40, SENTINEL)])[None]  # constant, varying, empty
    payload = stats_module._sensor_payload(("flat", "ramp", "empty"), SensorAccumulator.of(values, categorical=False))
    assert payload["constant"] == [True, False, True]
    stats = SensorStats(payload["bands"], payload["mean"], payload["std"], payload["constant"])
    spec = SensorSpec("toy", ("flat", "ramp", "empty"), (BandGroup("all", ("flat", "ramp", "empty"), 10.0),))
    x = np.array([[[[7.0]], [[20.0]], [[SENTINEL]]]], np.float32)  # (T, C, H, W)
    out = Standardizer({"toy": stats}, {"toy": spec})("toy", x)
    ramp = np.arange(40.0)
    np.testing.assert_allclose(out[0, :2, 0, 0], [0.0, (20.0 - ramp.mean()) / ramp.std()], rtol=1e-6)
    assert out[0, 2, 0, 0] == SENTINEL


def test_a_constant_flag_with_a_nonzero_std_is_refused() -> None:
    stats = SensorStats(["a"], [1.0], [2.0], [True], source="x/stats.json")
    with pytest.raises(StatsError, match=r"x/stats\.json: sensor 's', band 'a': the band is flagged constant but its std is 2\.0"):
        stats.check("s")
