"""stats: streaming, mergeable moments agree with numpy on the whole array; sentinel never counts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spacenit.data.shards import DatasetReader
from spacenit.data.standardizer import Standardizer
from spacenit.data.stats import RunningMoments, StatsError, band_values, load_stats
from spacenit.sensors import SENTINEL


def test_stats_json_matches_numpy_over_all_samples(synthetic_dataset: Path) -> None:
    stats = json.loads((synthetic_dataset / "stats.json").read_text())
    reader = DatasetReader(synthetic_dataset)
    for sensor, spec in reader.info.sensors.items():
        whole = np.concatenate([band_values(s.data[sensor]) for s in reader], axis=1).astype(np.float64)
        got = stats["sensors"][sensor]
        assert got["bands"] == list(spec.bands)
        for c in range(spec.num_bands):
            values = whole[c][whole[c] != SENTINEL]
            assert got["count"][c] == values.size
            np.testing.assert_allclose(got["mean"][c], values.mean(), rtol=1e-6)
            np.testing.assert_allclose(got["std"][c], values.std(), rtol=1e-6)
            assert got["min"][c] == values.min() and got["max"][c] == values.max()


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


def test_all_sentinel_band_has_zero_count() -> None:
    m = RunningMoments.of(np.full((1, 50), SENTINEL))
    assert m.count[0] == 0 and m.mean[0] == 0 and not np.isfinite(m.min[0])


def test_standardizer_zscores_and_keeps_sentinel(synthetic_dataset: Path) -> None:
    reader = DatasetReader(synthetic_dataset)
    stats = load_stats(synthetic_dataset / "stats.json")
    std = Standardizer(stats, reader.info.sensors)
    x = reader[0].data["sentinel1"].copy()
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
