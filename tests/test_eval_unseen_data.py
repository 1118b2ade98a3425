"""Evaluating on data the model never saw: split names, the console note on 70/30, probe and evaluate
trained on one dataset and tested on another (raw pixels standardized with the training side's stats)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from spacenit.cli import main
from spacenit.conversion.writer import write_dataset
from spacenit.data.shards import DatasetReader, array_key
from spacenit.data.stats import compute_stats, load_stats
from spacenit.evaluation.adapters import RawPixelAdapter
from spacenit.evaluation.benchmark import BenchmarkOptions, run_benchmark, task_features
from spacenit.evaluation.datasets import TRANSFER, task_from_dataset, transfer_task
from spacenit.evaluation.embed import Embeddings, save_embeddings
from spacenit.evaluation.errors import ProbeError
from spacenit.evaluation.knn import knn_scores
from spacenit.evaluation.probe import make_split, probe
from spacenit.evaluation.results import ResultKey, ResultsStore
from spacenit.evaluation.splits import holdout_folds, normalize_split
from spacenit.sensors import SENTINEL


def test_usual_split_names_are_normalized_and_others_refused() -> None:
    for names, canonical in ((("train", "Training", " TRN "), "train"), (("val", "valid", "Validation", "dev"), "val"),
                             (("test", "testing", "TEST"), "test")):  # fmt: skip
        assert {normalize_split(n) for n in names} == {canonical}
    assert normalize_split(None) is None and normalize_split("") is None
    with pytest.raises(ProbeError, match="unknown split name 'holdout' in labels.csv.*validation"):
        normalize_split("holdout", where="labels.csv")
    targets = np.array([0, 1] * 6)
    (fold,) = holdout_folds(targets, ["training"] * 4 + ["validation"] * 4 + ["testing"] * 4, test_fraction=0.3, seed=0)
    assert fold.train.tolist() == list(range(8)) and fold.test.tolist() == list(range(8, 12))  # validation is not dropped


def _embeddings(path: Path, x: np.ndarray, labels: list, splits: list) -> Path:
    return save_embeddings(path, Embeddings(x.astype(np.float32), [f"s{i}" for i in range(len(x))], labels, splits), model="m")


def _blobs(n: int, seed: int, shift: float = 0.0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    return rng.normal(size=(n, 6)) + 4.0 * np.eye(3, 6)[y] + shift, [f"c{c}" for c in y]


def test_probe_tells_the_console_when_it_splits_the_data_itself(tmp_path: Path, caplog) -> None:
    x, labels = _blobs(30, seed=0)
    emb = _embeddings(tmp_path / "e.zarr", x, labels, [None] * 30)
    with caplog.at_level(logging.WARNING):
        metrics = probe(emb, tmp_path / "p.json", probes=("knn",), log_to_mlflow=False, num_resamples=50)
    assert "no train/test split" in caplog.text and "70/30" in caplog.text
    assert metrics["num_test"] == 9 and json.loads((tmp_path / "p.json").read_text())["split"] == "stratified(seed=0)"
    split = make_split(x, labels, ["training"] * 20 + ["validation"] * 5 + ["testing"] * 5, test_fraction=0.3, seed=0)
    assert (len(split.y_train), len(split.y_test), split.source) == (25, 5, "dataset")
    with pytest.raises(ProbeError, match="unknown split name 'heldout'"):
        make_split(x, labels, ["heldout"] * 30, test_fraction=0.3, seed=0)


def test_probe_cli_trains_on_one_set_and_tests_on_another(tmp_path: Path, capsys) -> None:
    xa, la = _blobs(40, seed=1)
    xb, lb = _blobs(21, seed=2, shift=0.3)
    a = _embeddings(tmp_path / "a.zarr", xa, la, ["train"] * 30 + ["test"] * 10)
    b = _embeddings(tmp_path / "b.zarr", xb, lb, [None] * 21)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["probe", str(a), str(tmp_path / "t.json"), "--test", str(b), "--probes", "knn", "-k", "5", "--tracking-uri", uri]) == 0
    out = json.loads((tmp_path / "t.json").read_text())
    assert (out["num_train"], out["num_test"]) == (30, 21)  # a's train samples, all of b
    classes = sorted(set(la))
    y_train, y_test = np.array([classes.index(c) for c in la[:30]]), np.array([classes.index(c) for c in lb])
    expected = (knn_scores(xa[:30], y_train, xb, k=5, num_classes=3).argmax(1) == y_test).mean()
    assert out["knn_accuracy"] == pytest.approx(expected) and "test: " in out["split"]
    c = _embeddings(tmp_path / "c.zarr", xb, ["c9"] * 21, [None] * 21)
    assert main(["probe", str(a), str(tmp_path / "u.json"), "--test", str(c), "--tracking-uri", uri]) == 2
    assert "classes the training side" in capsys.readouterr().err
    d = _embeddings(tmp_path / "d.zarr", xb[:, :4], lb, [None] * 21)
    with pytest.raises(ProbeError, match="same model"):
        probe(a, tmp_path / "v.json", test_embeddings=d, log_to_mlflow=False)


def brighter_copy(source: Path, out: Path, gain: float, split: str | None) -> Path:
    """The same samples with every value x gain (another region, another sensor calibration), one split."""
    reader = DatasetReader(source)
    info = reader.info

    def samples():
        for s in reader:
            record = type(s.record)(**{**s.record.to_dict(), "split": split, "shard": "", "row": -1})
            arrays = {array_key(name, g.name): np.where(x == SENTINEL, SENTINEL, x * gain) for name, grids in s.data.items() for g, x in grids.items()}
            yield record, arrays

    write_dataset(out, info.sensors, info.grids, info.num_timesteps, samples(), tile_size_px=info.tile_size_px, gsd_m=info.gsd_m)
    compute_stats(out, progress=False)
    return out


def test_transfer_task_standardizes_the_test_side_with_training_stats(synthetic_dataset: Path, tmp_path: Path) -> None:
    other = brighter_copy(synthetic_dataset, tmp_path / "brighter", gain=2.0, split=None)
    train, test = task_from_dataset(synthetic_dataset), task_from_dataset(other, name="brighter")
    task = transfer_task(train, test)
    assert task.protocol == TRANSFER and task.name == f"{train.name}->brighter"
    assert task.fold.train.tolist() == [i for i, s in enumerate(train.splits) if s in ("train", "val")]
    assert task.fold.test.tolist() == list(range(len(train.ids), len(train.ids) + len(test.ids)))  # no split: all of it
    raw = RawPixelAdapter()
    features = task_features(raw, task, patch_tokens=False).pooled
    own = raw.features(test).pooled  # standardized with its own stats: the doubling is normalized away
    with_train_stats = features[len(train.ids):]
    assert not np.allclose(own, with_train_stats)
    # by hand: S2 band B02's mean over the first test sample, standardized with the *training* stats
    stats = load_stats(synthetic_dataset / "stats.json")["sentinel2_l2a"]
    band = stats.bands.index("B02")
    sample = DatasetReader(other)[0]
    grid, x = next((g, x) for g, x in sample.data["sentinel2_l2a"].items() if "B02" in g.bands)
    values = x[:, grid.bands.index("B02")]
    expected = ((values[values != SENTINEL] - stats.mean[band]) / stats.std[band]).mean()
    specs = DatasetReader(other).info.sensors  # features: per sensor, each band's mean then each band's std
    offset = sum(2 * spec.num_bands for name, spec in specs.items() if list(specs).index(name) < list(specs).index("sentinel2_l2a"))
    assert with_train_stats[0, offset + specs["sentinel2_l2a"].bands.index("B02")] == pytest.approx(expected, rel=1e-4)

    store = ResultsStore(tmp_path / "r.sqlite")
    (result,) = run_benchmark(task, [raw], store=store, options=BenchmarkOptions(probes=("knn",), num_resamples=50), log_to_mlflow=False)
    assert result.key == ResultKey(task.name, "raw_pixels", "knn", -1, 0)
    assert result.details["protocol"] == TRANSFER and result.details["num_test"] == len(test.ids)
    y = task.targets
    knn = knn_scores(features[task.fold.train], y[task.fold.train], features[task.fold.test], k=20, num_classes=task.num_classes)
    assert result.metrics["accuracy"]["value"] == pytest.approx((knn.argmax(1) == y[task.fold.test]).mean())


def test_transfer_refuses_classes_the_training_side_never_saw(synthetic_dataset: Path, tmp_path: Path) -> None:
    train = task_from_dataset(synthetic_dataset)
    renamed = task_from_dataset(synthetic_dataset)
    renamed.class_names = [f"other-{c}" for c in renamed.class_names]
    with pytest.raises(ProbeError, match="classes .* lacks"):
        transfer_task(train, renamed)


def test_evaluate_cli_train_test(synthetic_dataset: Path, tmp_path: Path, capsys) -> None:
    other = brighter_copy(synthetic_dataset, tmp_path / "region-b", gain=1.5, split="testing")
    store = tmp_path / "r.sqlite"
    code = main(["evaluate", "--train", str(synthetic_dataset), "--test", str(other), "--baseline", "raw_pixels",
                 "--probes", "knn,prototypical", "--store", str(store), "--no-mlflow", "--work-dir", str(tmp_path / "w")])  # fmt: skip
    assert code == 0
    results = ResultsStore(store).query()
    assert {r.key.task for r in results} == {f"{synthetic_dataset.name}->region-b"} and {r.key.probe for r in results} == {"knn", "prototypical"}
    assert all(r.details["num_test"] == 24 for r in results)  # every sample of region-b: its split says testing
    assert main(["evaluate", "--train", str(synthetic_dataset), "--baseline", "raw_pixels", "--no-mlflow"]) == 2
    assert "--train and --test go together" in capsys.readouterr().err
