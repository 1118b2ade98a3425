"""Shared pytest fixtures: a small synthetic GeoTIFF set, and the optional real data folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from spacenit.conversion.synthetic import make_synthetic


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic samples-layout set (24 samples, 32 px, 2 dates), written once per session."""
    return make_synthetic(
        tmp_path_factory.mktemp("synthetic"), num_samples=24, tile_size_px=32, num_dates=2, seed=0
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
