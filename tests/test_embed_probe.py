"""embed + probe: from a checkpoint or the registry, against independent references."""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from spacenit.data.shards import DatasetReader
from spacenit.evaluation.embed import EmbedError, embed, load_embeddings
from spacenit.evaluation.probe import ProbeError, knn_predict, make_split, probe


def test_embed_from_registry_equals_embed_from_checkpoint(pretrained, synthetic_dataset: Path, tmp_path: Path) -> None:
    result, tracking_uri = pretrained
    a = load_embeddings(embed(result.checkpoint_dir, synthetic_dataset, tmp_path / "a.zarr", progress=False))
    b = load_embeddings(embed("models:/spacenit-encoder@champion", synthetic_dataset, tmp_path / "b.zarr",
                              tracking_uri=tracking_uri, progress=False))  # fmt: skip
    assert a.vectors.shape == (24, 128)
    np.testing.assert_allclose(a.vectors, b.vectors, rtol=1e-5, atol=1e-6)
    reader = DatasetReader(synthetic_dataset)
    assert a.ids == [r.id for r in reader.records] and a.labels == [r.label for r in reader.records]
    assert np.isfinite(a.vectors).all() and a.vectors.std(axis=0).max() > 0


def _flat(sample) -> dict[str, np.ndarray]:
    """A sample as a client of the served model sends it: each grid at its own resolution, and the months."""
    from spacenit.data.loader import months_of

    out = {f"{s}/{g.name}": x[None] for s, grids in sample.data.items() for g, x in grids.items()}
    out.update({f"{s}/months": months_of(d)[None] for s, d in sample.record.dates.items()})
    return out


def test_registered_pyfunc_serves_embeddings(pretrained, synthetic_dataset: Path, tmp_path: Path) -> None:
    result, tracking_uri = pretrained
    emb = load_embeddings(embed(result.checkpoint_dir, synthetic_dataset, tmp_path / "e.zarr", progress=False))
    mlflow.set_tracking_uri(tracking_uri)
    served = mlflow.pyfunc.load_model("models:/spacenit-encoder@champion")
    sample = DatasetReader(synthetic_dataset)[3]
    out = served.predict(_flat(sample))  # native grids and months: exactly what `embed` computes
    np.testing.assert_allclose(out[0], emb.vectors[3], rtol=1e-5, atol=1e-5)

    # Logged with an input example (the first sample, raw) and a signature declaring `output` but no
    # input schema, which would pin tile size, dates, sensors and dtype (the model checks its inputs).
    info = mlflow.models.get_model_info("models:/spacenit-encoder@champion")
    assert info.signature.inputs is None
    assert info.signature.params.to_dict()[0]["name"] == "output"
    assert info.saved_input_example_info is not None
    uri = "models:/spacenit-encoder@champion"
    example = mlflow.models.Model.load(uri).load_input_example(mlflow.artifacts.download_artifacts(uri))
    first = _flat(DatasetReader(synthetic_dataset)[0])
    assert sorted(example) == sorted(first)
    np.testing.assert_array_equal(example["sentinel2_l2a/20m"], first["sentinel2_l2a/20m"])
    maps = served.predict(_flat(sample), params={"output": "patch_maps"})
    assert maps.shape == (1, 3, 3, 128)  # 24 px tiles, patch size 8


def test_embed_refuses_a_dataset_without_the_model_sensors(pretrained, tmp_path: Path) -> None:
    from spacenit.conversion.convert import convert
    from tests.rasters import write_tif

    result, _ = pretrained
    for i in range(2):
        write_tif(tmp_path / "in" / "A" / f"{i}.tif", np.ones((13, 32, 32), np.uint16) * (i + 1))
    convert(tmp_path / "in", tmp_path / "ds", tile_size_px=32, progress=False)
    with pytest.raises(EmbedError, match="sensor"):
        embed(result.checkpoint_dir, tmp_path / "ds", tmp_path / "x.zarr", progress=False)


def reference_knn(x_train, y_train, x_test, k, temperature=0.07):
    """Loop-by-loop kNN with exp(sim / T) votes, written independently of the vectorized one."""
    preds = []
    for q in x_test:
        sims = [float(np.dot(q, t) / (np.linalg.norm(q) * np.linalg.norm(t))) for t in x_train]
        order = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        votes: dict[int, float] = {}
        for i in order:
            votes[int(y_train[i])] = votes.get(int(y_train[i]), 0.0) + math.exp(sims[i] / temperature)
        preds.append(max(votes, key=votes.get))
    return np.array(preds)


def test_knn_matches_reference() -> None:
    rng = np.random.default_rng(0)
    x_train, y_train = rng.normal(size=(60, 8)), rng.integers(0, 3, 60)
    x_test = rng.normal(size=(25, 8))
    for k in (1, 5, 20):
        np.testing.assert_array_equal(knn_predict(x_train, y_train, x_test, k=k), reference_knn(x_train, y_train, x_test, k))


def test_stratified_split_is_seeded_and_stratified() -> None:
    x = np.arange(40, dtype=float)[:, None]
    labels = ["a"] * 20 + ["b"] * 20
    s1 = make_split(x, labels, [None] * 40, test_fraction=0.25, seed=3)
    s2 = make_split(x, labels, [None] * 40, test_fraction=0.25, seed=3)
    np.testing.assert_array_equal(s1.x_test, s2.x_test)
    assert np.bincount(s1.y_test).tolist() == [5, 5]
    with pytest.raises(ProbeError, match="two classes"):
        make_split(x, ["a"] * 40, [None] * 40, test_fraction=0.25, seed=0)


def test_probe_logs_metrics_to_mlflow(pretrained, synthetic_dataset: Path, tmp_path: Path) -> None:
    result, tracking_uri = pretrained
    emb = embed(result.checkpoint_dir, synthetic_dataset, tmp_path / "e.zarr", progress=False)
    metrics = probe(emb, tmp_path / "probe.json", k=5, tracking_uri=tracking_uri, experiment="probe-test")
    assert 0.0 <= metrics["knn_accuracy"] <= 1.0 and 0.0 <= metrics["linear_accuracy"] <= 1.0
    assert metrics["num_train"] + metrics["num_test"] == 24 and metrics["num_classes"] == 4
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name("probe-test")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.metrics["knn_accuracy"] == metrics["knn_accuracy"]
    assert run.data.params["split"] == "dataset"  # the synthetic labels.csv carries train/test
