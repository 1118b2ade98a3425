"""The CLI's rough edges of issue 19, one test each: a message instead of a traceback or a silent
wrong result, for each input seen to go wrong."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from spacenit.cli import main
from tests.rasters import write_tif
from tests.test_eval_sliding import SCENE_BANDS, landsat_checkpoint


def error_of(capsys, *argv: str) -> str:
    """The one error line `spacenit argv` prints (exit code 2, no traceback; libraries may log above it)."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith(f"spacenit {argv[0]}: error: ")]
    assert "Traceback" not in err, err
    return line


def parse_error_of(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    """A 6-band Landsat scene (the bands of SCENE_BANDS) of 32 x 32 px."""
    values = np.random.default_rng(0).normal(1000, 200, (6, 32, 32)).astype(np.float32)
    return write_tif(
        tmp_path / "scene.tif", values, crs="EPSG:32620", res=30.0, descriptions=SCENE_BANDS
    )


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return landsat_checkpoint(tmp_path / "ckpt", np.ones((6, 4, 4), np.float32))


def test_unknown_registered_model_is_a_message(tmp_path: Path, capsys) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    err = error_of(capsys, "embed", "models:/no-such-model@champion", str(tmp_path), str(tmp_path / "e.zarr"),
                   "--tracking-uri", uri)  # fmt: skip
    assert "models:/no-such-model@champion: not found" in err and uri in err


def test_png_output_is_a_message(tmp_path: Path, scene: Path, capsys) -> None:
    (tmp_path / "dataset").mkdir()
    err = error_of(capsys, "embed", "ckpt", str(tmp_path / "dataset"), str(tmp_path / "out.png"))
    assert "out.png" in err and "Zarr group" in err and "out.zarr" in err
    err = error_of(capsys, "embed", "ckpt", str(scene), str(tmp_path / "out.png"))
    assert "out.png" in err and ".tif" in err and ".zarr" in err
    assert not (tmp_path / "out.png").exists()


def test_probe_on_a_scene_embedding_says_what_it_is(tmp_path: Path, capsys) -> None:
    from spacenit.evaluation.georaster import open_writer

    writer = open_writer(tmp_path / "scene_emb.zarr", channels=4, height=2, width=2, crs=CRS.from_epsg(32620),
                         transform=Affine(240.0, 0, 0, 0, -240.0, 0), tags={})  # fmt: skip
    writer.write_rows(0, np.zeros((4, 2, 2), np.float32))
    writer.close()
    err = error_of(capsys, "probe", str(tmp_path / "scene_emb.zarr"), str(tmp_path / "p.json"))
    assert "scene embedding" in err and "spacenit embed MODEL DATASET" in err


def test_probe_on_a_text_file_says_what_it_needs(tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("not embeddings\n")
    err = error_of(capsys, "probe", str(tmp_path / "notes.txt"), str(tmp_path / "p.json"))
    assert "notes.txt is not a Zarr group of embeddings" in err


@pytest.mark.parametrize(
    "verb, name, expected",
    [
        ("convert", "dataset.json", "is a file; convert takes the directory of GeoTIFFs"),
        ("stats", "dataset.json", "is a file; stats takes the dataset directory"),
        ("embed", "roads.shp", "is a file, neither a dataset directory"),
    ],
)
def test_an_existing_file_is_not_reported_missing(
    tmp_path: Path, capsys, verb: str, name: str, expected: str
) -> None:
    path = tmp_path / name
    path.write_text("{}")
    argv = {"convert": [str(path), str(tmp_path / "out")], "stats": [str(path)],
            "embed": ["ckpt", str(path), str(tmp_path / "e.zarr")]}[verb]  # fmt: skip
    err = error_of(capsys, verb, *argv)
    assert expected in err and "does not exist" not in err


def test_a_scene_lacking_bands_needs_allow_missing_bands(
    tmp_path: Path, checkpoint: Path, capsys
) -> None:
    three = write_tif(tmp_path / "three.tif", np.ones((3, 32, 32), np.float32), crs="EPSG:32620", res=30.0,
                      descriptions=SCENE_BANDS[:3])  # fmt: skip
    args = [
        "embed",
        str(checkpoint),
        str(three),
        str(tmp_path / "e.tif"),
        "--window-px",
        "32",
        "--overlap-px",
        "8",
    ]
    err = error_of(capsys, *args)
    assert "the model expects bands" in err and "['B2', 'B3', 'B4']" in err
    assert not (tmp_path / "e.tif").exists()
    assert main([*args, "--allow-missing-bands"]) == 0
    assert (tmp_path / "e.tif").is_file()


def test_a_sensor_map_is_never_ignored(tmp_path: Path, scene: Path, checkpoint: Path, synthetic_dataset: Path,
                                       capsys) -> None:  # fmt: skip
    # A scene has one sensor: a map does not apply and is refused.
    err = error_of(
        capsys,
        "embed",
        str(checkpoint),
        str(scene),
        str(tmp_path / "e.tif"),
        "--sensor-map",
        "foo=bar",
    )
    assert "--sensor-map" in err and "--sensor" in err
    # On a dataset, a map naming a sensor the model lacks is refused.
    err = error_of(capsys, "embed", str(checkpoint), str(synthetic_dataset), str(tmp_path / "e.zarr"),
                   "--sensor-map", "foo=bar")  # fmt: skip
    assert "model sensor(s) ['foo']" in err and "landsat" in err
    assert not (tmp_path / "e.zarr").exists()


def test_experiment_options_have_distinct_names(capsys) -> None:
    from spacenit.cli import _parser

    pretrain = _parser().parse_args(["pretrain", "d", "--stats", "s", "--output-dir", "o", "--experiment-config",
                                     "merged_bandsets_cross_random_masked_neg", "--mlflow-experiment", "mine"])  # fmt: skip
    assert pretrain.experiment_config == "merged_bandsets_cross_random_masked_neg"
    assert pretrain.mlflow_experiment == "mine"
    assert (
        _parser()
        .parse_args(["probe", "e.zarr", "p.json", "--mlflow-experiment", "x"])
        .mlflow_experiment
        == "x"
    )
    assert (
        _parser().parse_args(["evaluate", "eurosat", "--mlflow-experiment", "x"]).mlflow_experiment
        == "x"
    )
    # The old, ambiguous spelling is an error that names the new ones.
    err = parse_error_of(
        capsys, "pretrain", "d", "--stats", "s", "--output-dir", "o", "--experiment", "x"
    )
    assert (
        "--experiment was renamed" in err
        and "--experiment-config" in err
        and "--mlflow-experiment" in err
    )
    for argv in (["probe", "e.zarr", "p.json"], ["evaluate", "eurosat"]):
        err = parse_error_of(capsys, *argv, "--experiment", "x")
        assert "--experiment was renamed" in err and "--mlflow-experiment" in err


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_honour_the_umask(tmp_path: Path, checkpoint: Path, umask: int) -> None:
    """dataset.json, convert_report.json, stats.json and model.safetensors get 0o666 less the umask, not 0600."""
    from spacenit.train.checkpoint import load_checkpoint, save_checkpoint

    write_tif(tmp_path / "in" / "Forest" / "a.tif", np.ones((13, 16, 16), np.uint16))
    model, meta = load_checkpoint(checkpoint)
    old = os.umask(umask)
    try:
        assert (
            main(["convert", str(tmp_path / "in"), str(tmp_path / "ds"), "--tile-size-px", "16"])
            == 0
        )
        assert main(["stats", str(tmp_path / "ds")]) == 0
        save_checkpoint(tmp_path / "ckpt2", model, meta)
    finally:
        os.umask(old)
    for path in [
        "ds/dataset.json",
        "ds/convert_report.json",
        "ds/stats.json",
        "ckpt2/model.safetensors",
    ]:
        assert stat.S_IMODE((tmp_path / path).stat().st_mode) == 0o666 & ~umask, path
