"""Shared pytest fixtures: a small synthetic GeoTIFF set, and the optional real data folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from spacenit.conversion.synthetic import make_synthetic


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic samples-layout set (24 samples, 24 px of 10 m, 2 dates; Sentinel-2 bands at 10, 20
    and 60 m, a 30 m DEM), written once per session."""
    return make_synthetic(
        tmp_path_factory.mktemp("synthetic"), num_samples=24, tile_size_px=24, num_dates=2, seed=0
    )


@pytest.fixture
def shared_data() -> Path:
    """The real-data folder next to the checkout (../shared/data); tests skip without it."""
    path = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not path.is_dir():
        pytest.skip(
            f"real data folder {path} is absent; these tests need ../shared/data next to the repo"
        )
    return path


@pytest.fixture(scope="session")
def synthetic_dataset(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`synthetic_dir` converted to a dataset (24 px tiles), with stats.json."""
    from spacenit.conversion.convert import convert
    from spacenit.data.stats import compute_stats

    out = tmp_path_factory.mktemp("dataset") / "dataset"
    report = convert(synthetic_dir, out, tile_size_px=24, samples_per_shard=10, progress=False)
    assert report.ok, report.failures
    compute_stats(out, progress=False)
    return out


@pytest.fixture(scope="session")
def pretrained(synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    """A few pretraining steps on the synthetic dataset, tracked in a sqlite MLflow store."""
    from spacenit.train.pretrain import build_config, pretrain

    root = tmp_path_factory.mktemp("pretrain")
    cfg = build_config(
        overrides=["train.steps=4", "train.log_every=1", "train.global_batch_size=8", "model.depth=2", "model.decoder_depth=1"],
        preset="small",
    )
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    result = pretrain(synthetic_dataset, synthetic_dataset / "stats.json", root / "out", cfg, tracking_uri=tracking_uri)
    return result, tracking_uri
