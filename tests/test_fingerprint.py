"""The input fingerprint that keys the pipeline's `convert` cache (spacenit/fingerprint.py, components/fingerprint.py)."""

import os
from pathlib import Path

import pytest

from components.fingerprint import fingerprint_input
from spacenit.fingerprint import FingerprintError, fingerprint_directory


def _key(root: Path) -> str:
    """What the pipeline's fingerprint step hands to convert (its cache-key input)."""
    return fingerprint_input.python_func(input_dir=str(root))


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    root = tmp_path / "raw"
    for name in ("forest/a.tif", "forest/b.tif", "river/c.tif"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"\x00" * 64)
    return root


def test_unchanged_input_keeps_its_key(inputs: Path):
    assert _key(inputs) == _key(inputs) == fingerprint_directory(inputs)
    assert len(_key(inputs)) == 64


def test_a_rewritten_file_changes_the_key(inputs: Path):
    before = _key(inputs)
    path = inputs / "forest" / "a.tif"
    stat = path.stat()
    path.write_bytes(b"\x01" * 64)  # same size, new content
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert _key(inputs) != before


@pytest.mark.parametrize("change", ["grow", "add", "remove", "rename"])
def test_file_list_changes_change_the_key(inputs: Path, change: str):
    before = _key(inputs)
    path = inputs / "river" / "c.tif"
    stat = path.stat()
    if change == "grow":
        path.write_bytes(b"\x00" * 65)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime: size alone tells
    elif change == "add":
        (inputs / "river" / "d.tif").write_bytes(b"\x00" * 64)
    elif change == "remove":
        path.unlink()
    else:
        path.rename(inputs / "river" / "e.tif")
    assert _key(inputs) != before


def test_linked_folders_count_and_cycles_end(inputs: Path, tmp_path: Path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "x.tif").write_bytes(b"\x00" * 8)
    (inputs / "lake").symlink_to(outside, target_is_directory=True)
    (inputs / "forest" / "loop").symlink_to(inputs, target_is_directory=True)
    before = _key(inputs)
    (outside / "x.tif").write_bytes(b"\x00" * 9)
    assert _key(inputs) != before


def test_a_file_or_a_missing_path_is_refused(inputs: Path):
    with pytest.raises(FingerprintError, match="a file, not a directory"):
        fingerprint_directory(inputs / "forest" / "a.tif")
    with pytest.raises(FingerprintError, match="missing"):
        fingerprint_directory(inputs / "nope")
