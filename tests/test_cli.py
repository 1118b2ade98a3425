"""The `spacenit` command: every verb teaches by example, and bad input gets one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from spacenit.cli import main

VERBS = ["convert", "stats", "pretrain", "embed", "probe"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spacenit.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("verb", VERBS)
def test_help_shows_a_working_example(verb: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([verb, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out and f"spacenit {verb} " in out


def test_help_examples_parse(capsys) -> None:
    """The example lines in --help use options that exist."""
    from spacenit.cli import EXAMPLES, _parser

    parser = _parser()
    for verb, text in EXAMPLES.items():
        lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith(f"spacenit {verb} ")]
        assert lines, verb
        for line in lines:
            argv = line.split("#")[0].rstrip(" \\").split()[1:]
            if verb == "pretrain":
                argv += ["--output-dir", "x"] if "--output-dir" not in argv else []
            parser.parse_args(argv)


def test_convert_reports_a_non_geotiff_by_name(tmp_path: Path) -> None:
    import numpy as np

    from tests.rasters import write_tif

    write_tif(tmp_path / "in" / "Forest" / "ok.tif", np.ones((13, 64, 64), np.uint16))
    (tmp_path / "in" / "Forest" / "photo.tif").write_bytes(b"\x89PNG\r\n\x1a\n not a tiff")
    proc = run_cli("convert", str(tmp_path / "in"), str(tmp_path / "out"))
    assert proc.returncode == 1
    assert "photo.tif" in proc.stderr and "not a readable GeoTIFF" in proc.stderr
    assert "convert_report.json" in proc.stderr
    assert (tmp_path / "out" / "dataset.json").exists()  # the good sample was converted


def test_convert_empty_directory_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = run_cli("convert", str(tmp_path / "empty"), str(tmp_path / "out"))
    assert proc.returncode == 2
    assert f"{tmp_path / 'empty'} is empty" in proc.stderr and "Traceback" not in proc.stderr


def test_pretrain_without_stats_names_the_file(synthetic_dataset: Path, tmp_path: Path) -> None:
    missing = tmp_path / "stats.json"
    proc = run_cli("pretrain", str(synthetic_dataset), "--stats", str(missing), "--output-dir", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert str(missing) in proc.stderr and "spacenit stats" in proc.stderr and "Traceback" not in proc.stderr


def test_stats_on_a_non_dataset_says_how_to_make_one(tmp_path: Path) -> None:
    proc = run_cli("stats", str(tmp_path))
    assert proc.returncode == 2 and "dataset.json" in proc.stderr and "spacenit convert" in proc.stderr


def test_pretrain_dry_run_prints_resolved_config(synthetic_dataset: Path, capsys) -> None:
    code = main(["pretrain", str(synthetic_dataset), "--stats", "s.json", "--output-dir", "o", "--dry-run",
                 "--model", "spacenit_tiny", "--set", "train.lr=2e-4"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "lr: 0.0002" in out and "dim: 192" in out


def test_bad_override_is_a_clear_error(capsys) -> None:
    code = main(["pretrain", "d", "--stats", "s.json", "--output-dir", "o", "--dry-run", "--set", "train.lr_typo=1"])
    assert code == 2
    assert "train.lr_typo" in capsys.readouterr().err
