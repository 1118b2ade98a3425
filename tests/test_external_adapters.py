"""Galileo nano and Presto in the benchmark harness (spacenit/evaluation/external_adapters.py), on the synthetic
dataset: sample reading, features and patch tokens, probe cells, and `spacenit evaluate --baseline`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from spacenit.cli import main
from spacenit.data.format import SampleRecord
from spacenit.data.shards import DatasetReader
from spacenit.evaluation.benchmark import BenchmarkOptions, run_benchmark
from spacenit.evaluation.datasets import eurosat_task, task_from_dataset
from spacenit.evaluation.external_adapters import ExternalAdapter, model_input, pixel_latlon
from spacenit.evaluation.knn import knn_scores
from spacenit.evaluation.metrics import accuracy
from spacenit.evaluation.results import ResultKey, ResultsStore
from spacenit.evaluation.splits import ALL
from spacenit.external import GalileoEncoder, PrestoEncoder
from spacenit.external.galileo import Galileo
from spacenit.external.presto import Presto

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights"


def test_pixel_centres_of_a_footprint_in_degrees() -> None:
    record = SampleRecord(id="a", shard="s", row=0, crs="EPSG:4326", bounds=(10.0, 40.0, 11.0, 41.0))
    latlon = pixel_latlon(record, 2, 2)
    np.testing.assert_allclose(latlon, [[[40.75, 10.25], [40.75, 10.75]], [[40.25, 10.25], [40.25, 10.75]]])
    assert np.isnan(pixel_latlon(SampleRecord(id="b", shard="s", row=0), 3, 3)).all()


def test_model_input_takes_the_encoders_sensors_with_their_months(synthetic_dataset: Path) -> None:
    reader = DatasetReader(synthetic_dataset)
    sample = model_input(reader, 0, GalileoEncoder.sensors)
    record = reader.records[0]
    assert set(sample.images) == set(reader.info.sensors) & set(GalileoEncoder.sensors)
    for sensor, dates in record.dates.items():
        assert sample.months[sensor].tolist() == [int(d[5:7]) if d else 0 for d in dates]
    assert sample.latlon.shape == (24, 24, 2) and np.isfinite(sample.latlon).all()
    # Every band on the reference grid: the 20 and 60 m grids upsampled to the 24 px tile.
    assert sample.images["sentinel2_l2a"].shape == (2, 12, 24, 24)
    assert 30 < sample.latlon[..., 0].mean() < 70  # the synthetic footprints lie in European UTM zones


def test_external_adapters_give_the_probes_features_and_patch_tokens(synthetic_dataset: Path, tmp_path: Path) -> None:
    task = task_from_dataset(synthetic_dataset)
    adapters = [ExternalAdapter(GalileoEncoder(Galileo(), name="galileo-test")),
                ExternalAdapter(PrestoEncoder(Presto(), name="presto-test", patch_size_px=8))]  # fmt: skip
    store = ResultsStore(tmp_path / "results.sqlite")
    options = BenchmarkOptions(probes=("knn", "prototypical"), num_resamples=50)
    new = run_benchmark(task, adapters, store=store, options=options, log_to_mlflow=False)
    assert len(new) == 2 * 2
    galileo_features = adapters[0].features(task, patch_tokens=True)
    assert galileo_features.pooled.shape == (24, 128) and galileo_features.tokens.shape == (24, 6 * 6, 128)
    presto_features = adapters[1].features(task, patch_tokens=True)
    assert presto_features.pooled.shape == (24, 256) and presto_features.tokens.shape == (24, 3 * 3, 128)
    assert np.isfinite(galileo_features.pooled).all() and np.isfinite(presto_features.pooled).all()
    # The stored kNN cell is the kNN probe on these features.
    train = np.array([s in ("train", "val") for s in task.splits])
    x = presto_features.pooled
    expected = accuracy(task.targets[~train], knn_scores(x[train], task.targets[train], x[~train], k=20).argmax(1))
    assert store.get(ResultKey(task.name, "presto-test", "knn", ALL, 0)).metrics["accuracy"]["value"] == pytest.approx(expected)
    twin = adapters[1].random_twin(seed=3)
    assert twin.name == "random-init(presto-test,seed=3)" and twin.encoder.patch_size_px == 8


@pytest.mark.slow
def test_evaluate_cli_runs_the_published_baselines_and_their_random_twins(synthetic_dataset: Path, tmp_path: Path) -> None:
    if not SHARED_WEIGHTS.is_dir():
        pytest.skip(f"published weights folder {SHARED_WEIGHTS} is absent")
    store = tmp_path / "results.sqlite"
    code = main(["evaluate", str(synthetic_dataset), "--baseline", "galileo_nano", "--baseline", "presto",
                 "--baseline", "random_init", "--probes", "knn", "--store", str(store), "--no-mlflow"])  # fmt: skip
    assert code == 0
    models = {r.key.model for r in ResultsStore(store).query(task=task_from_dataset(synthetic_dataset).name)}
    assert models == {"galileo_nano", "presto", "random-init(galileo_nano,seed=0)", "random-init(presto,seed=0)"}
    assert main(["evaluate", str(synthetic_dataset), "--baseline", "no_such_model", "--store", str(store), "--no-mlflow"]) == 2


@pytest.mark.realdata
def test_eurosat_bands_are_stored_under_their_names(shared_data: Path, tmp_path: Path) -> None:
    """EuroSAT's files hold B8A last; the task's dataset must still call each band by its name."""
    task = eurosat_task(shared_data, tmp_path)
    reader = DatasetReader(task.dataset_dir)
    sample = reader[0]
    stored = reader.info.sensors["sentinel2_l1c"]
    with rasterio.open(next((shared_data / "eurosat_ms").rglob(f"{sample.id}.tif"))) as src:
        file_bands = src.read().astype(np.float32)  # file order: B01 .. B08, B09, B10, B11, B12, B8A
    (grid,) = reader.info.grids["sentinel2_l1c"]  # all 13 bands at 10 m in the files: one grid
    for name, file_index in (("B08", 7), ("B8A", 12), ("B09", 8), ("B10", 9), ("B11", 10), ("B12", 11)):
        np.testing.assert_array_equal(sample.data["sentinel2_l1c"][grid][0, grid.bands.index(name)], file_bands[file_index], err_msg=name)
    assert grid.bands == stored.bands
    assert len(task.ids) == 216 and task.num_classes == 10
