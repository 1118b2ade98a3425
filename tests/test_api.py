"""The notebook API: `from spacenit import load_encoder, embed`, the README's snippet run as written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from spacenit.api import APIError, read_geotiffs
from spacenit.data.loader import months_of
from spacenit.data.shards import DatasetReader
from spacenit.evaluation.embed import embed_arrays
from spacenit.sensors import SENTINEL2_L2A
from spacenit.train.checkpoint import load_checkpoint
from tests.rasters import write_tif

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_snippet() -> str:
    """The Python block under the README's "Embeddings in Python" heading."""
    text = README.read_text()
    section = text[text.index("## Embeddings in Python") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_snippet_runs_as_written(pretrained, synthetic_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    result, tracking_uri = pretrained
    sample = DatasetReader(synthetic_dataset)[0]
    # The chip the snippet names: Sentinel-2's twelve bands, described, on one 10 m grid (as most tools export them).
    from spacenit.data.images import to_one_grid

    chip = to_one_grid(sample.data["sentinel2_l2a"], SENTINEL2_L2A, mode="nearest")[0]  # (12, H, W)
    write_tif(tmp_path / "s2_chip.tif", chip, nodata=-99999.0, descriptions=SENTINEL2_L2A.bands)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    namespace: dict = {}
    exec(readme_snippet(), namespace)  # noqa: S102 - the project's own README, the point of the test
    vectors = namespace["vectors"]
    model, meta = load_checkpoint(result.checkpoint_dir)
    expected = embed_arrays(model, meta, {"sentinel2_l2a": chip[None, None]})
    assert vectors.shape == (1, 128)
    np.testing.assert_allclose(vectors, expected, rtol=1e-5, atol=1e-5)


def test_arrays_native_grids_band_files_and_a_subset_of_sensors(pretrained, synthetic_dataset: Path, tmp_path: Path) -> None:
    from spacenit import embed, load_encoder

    result, _ = pretrained
    encoder = load_encoder(result.checkpoint_dir)
    assert encoder.sensors == ("sentinel1", "sentinel2_l2a", "srtm")
    sample = DatasetReader(synthetic_dataset)[2]
    months = {s: months_of(d) for s, d in sample.record.dates.items()}
    # Every sensor at its native grids (Grid keys), one sample: what `spacenit embed` computes.
    full = embed(encoder, sample.data, months=months)
    model, meta = load_checkpoint(result.checkpoint_dir)
    flat = {f"{s}/{g.name}": x[None] for s, grids in sample.data.items() for g, x in grids.items()}
    flat.update({f"{s}/months": m[None] for s, m in months.items()})
    np.testing.assert_allclose(full, embed_arrays(model, meta, flat), rtol=1e-5, atol=1e-5)
    # Grids by name, Sentinel-2 alone (the others missing), and the same bands as 10/20/60 m band files.
    by_name = {g.name: x for g, x in sample.data["sentinel2_l2a"].items()}
    s2_only = embed(encoder, {"sentinel2_l2a": by_name}, months={"sentinel2_l2a": months["sentinel2_l2a"]})
    files = []
    for grid, x in sample.data["sentinel2_l2a"].items():
        for c, band in enumerate(grid.bands):
            files.append(write_tif(tmp_path / f"{band}.tif", x[:1, c], res=grid.gsd_m, nodata=-99999.0))
    first_date = embed(encoder, {"sentinel2_l2a": files}, months={"sentinel2_l2a": months["sentinel2_l2a"][:1]})
    only_first = {g.name: x[:1] for g, x in sample.data["sentinel2_l2a"].items()}
    expected = embed(encoder, {"sentinel2_l2a": only_first}, months={"sentinel2_l2a": months["sentinel2_l2a"][:1]})
    np.testing.assert_allclose(first_date, expected, rtol=1e-5, atol=1e-5)
    assert s2_only.shape == (1, 128) and not np.allclose(s2_only, full, atol=1e-3)
    maps = embed(encoder, {"sentinel2_l2a": by_name}, patch_maps=True)
    assert maps.shape == (1, 3, 3, 128)


def test_band_files_become_grids_at_their_own_pixel_size(tmp_path: Path) -> None:
    files = [write_tif(tmp_path / "B02.tif", np.ones((1, 12, 12), np.uint16)),
             write_tif(tmp_path / "B05.tif", np.full((1, 6, 6), 2, np.uint16), res=20.0),
             write_tif(tmp_path / "B8A.tif", np.full((1, 6, 6), 3, np.uint16), res=20.0)]  # fmt: skip
    grids = read_geotiffs(SENTINEL2_L2A, files)
    assert [(g.name, g.bands, x.shape) for g, x in grids.items()] == [
        ("10m", ("B02",), (1, 1, 1, 12, 12)), ("20m", ("B05", "B8A"), (1, 1, 2, 6, 6))]  # fmt: skip


def test_bad_inputs_are_messages(pretrained, tmp_path: Path) -> None:
    from spacenit import embed, load_encoder

    result, _ = pretrained
    encoder = load_encoder(result.checkpoint_dir)
    with pytest.raises(APIError, match="has no sensor.*landsat"):
        embed(encoder, {"landsat": np.zeros((1, 11, 8, 8))})
    with pytest.raises(APIError, match="nope.tif does not exist"):
        embed(encoder, {"sentinel2_l2a": tmp_path / "nope.tif"})
    write_tif(tmp_path / "three.tif", np.ones((3, 8, 8), np.uint16))
    with pytest.raises(APIError, match="3 unnamed bands.*band descriptions"):
        embed(encoder, {"sentinel2_l2a": tmp_path / "three.tif"})
