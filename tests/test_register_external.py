"""A published external encoder registered in MLflow works wherever a SpaceNit model's URI does.

Needs ../shared/weights (skipped without it). The registry is a real sqlite store.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from spacenit.cli import main
from spacenit.evaluation.embed import embed, load_embeddings
from spacenit.external import load_external

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights"


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    if not (SHARED_WEIGHTS / "galileo_nano" / "encoder.pt").is_file():
        pytest.skip(f"published weights {SHARED_WEIGHTS}/galileo_nano are absent")
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root}/mlflow.db"
    assert main(["register", "galileo_nano", "--tracking-uri", uri, "--weights-dir", str(SHARED_WEIGHTS)]) == 0
    return uri, "models:/galileo-nano@published"


def test_register_tags_the_version_and_carries_weights_and_licence(registered) -> None:
    uri, model_uri = registered
    mlflow.set_tracking_uri(uri)
    version = MlflowClient().get_model_version_by_alias("galileo-nano", "published")
    assert version.tags["spacenit.external"] == "galileo_nano"
    assert "sentinel2_l2a" in version.tags["spacenit.sensors"].split(",")
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    assert (local / "artifacts" / "weights" / "galileo_nano" / "LICENSE").read_text().startswith("MIT")
    assert "/work/" not in (local / "MLmodel").read_text()  # no path of the registering machine


def test_a_dataset_embedded_from_the_registry_equals_the_published_weights(registered, synthetic_dataset: Path, tmp_path: Path) -> None:
    uri, model_uri = registered
    by_uri = load_embeddings(embed(model_uri, synthetic_dataset, tmp_path / "a.zarr", tracking_uri=uri, progress=False))
    by_name = load_embeddings(embed("galileo_nano", synthetic_dataset, tmp_path / "b.zarr", progress=False))
    assert by_uri.vectors.shape == (len(by_name.ids), 128)
    np.testing.assert_array_equal(by_uri.vectors, by_name.vectors)
    assert np.isfinite(by_uri.vectors).all() and by_uri.vectors.std(axis=0).mean() > 0


def test_the_pyfunc_encodes_arrays_and_refuses_bad_ones(registered) -> None:
    uri, model_uri = registered
    mlflow.set_tracking_uri(uri)
    served = mlflow.pyfunc.load_model(model_uri)
    rng = np.random.default_rng(1)
    pixels = rng.uniform(0, 4000, (2, 3, 12, 16, 16)).astype(np.float32)
    months = np.array([[3, 4, 5], [6, 7, 8]])
    pooled = served.predict({"sentinel2_l2a": pixels, "sentinel2_l2a/months": months})
    reference = load_external("galileo_nano", SHARED_WEIGHTS).encode({"sentinel2_l2a": pixels}, {"sentinel2_l2a": months}, 10.0)
    np.testing.assert_allclose(pooled, reference.pooled, rtol=1e-5, atol=1e-6)
    maps = served.predict({"sentinel2_l2a": pixels, "sentinel2_l2a/months": months}, params={"output": "patch_maps"})
    assert maps.shape == (2, 4, 4, 128)
    with pytest.raises(mlflow.exceptions.MlflowException, match="sentinel2_l2a"):
        served.predict({"sentinel2_l2a": pixels[:, :, :5], "sentinel2_l2a/months": months})
