"""convert under bad input and concurrency (issue 20): locked outputs, links, caps, sparse files,
dates outside the tile, failed samples, stale reports, orphaned workers. Each case reproduces what
used to give a wrong dataset with exit code 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from spacenit.conversion.convert import REPORT_JSON, convert
from spacenit.data.format import DATASET_JSON, load_dataset_info
from spacenit.data.shards import DatasetReader
from tests.rasters import bands_of, write_tif

ORIGIN = (500_000.0, 5_000_000.0)


def _chips(root: Path, classes=("Forest", "River"), n: int = 3, value: int = 1) -> Path:
    rng = np.random.default_rng(value)
    for cls in classes:
        for i in range(n):
            write_tif(root / cls / f"{cls}_{i}.tif", rng.integers(1, 3000, (13, 12, 12), dtype=np.uint16))
    return root


def test_a_second_convert_into_the_same_directory_fails_at_once(tmp_path: Path) -> None:
    # Two real processes: the first converts, paused after it took the lock and planned its shards
    # until the test lets it go on; the second must fail at once, naming the directory and the holder.
    _chips(tmp_path / "in", n=40)
    out, release = tmp_path / "out", tmp_path / "release"
    code = ("import sys, time, pathlib; import spacenit.conversion.convert as c; real = c._convert_shards\n"
            "def paused(*a):\n"
            "    deadline = time.time() + 120\n"
            "    while not pathlib.Path(sys.argv[3]).exists() and time.time() < deadline: time.sleep(0.05)\n"
            "    return real(*a)\n"
            "c._convert_shards = paused; c.convert(sys.argv[1], sys.argv[2], tile_size_px=12, progress=False)")  # fmt: skip
    first = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "in"), str(out), str(release)])
    deadline = time.time() + 60
    while not (out / ".spacenit.lock").exists() or not (out / ".spacenit.lock").read_text():
        assert time.time() < deadline and first.poll() is None, "the first convert never took the lock"
        time.sleep(0.05)
    second = subprocess.run([sys.executable, "-m", "spacenit.cli", "convert", str(tmp_path / "in"), str(out),
                             "--tile-size-px", "12"], capture_output=True, text=True, timeout=120)  # fmt: skip
    release.touch()
    first_code = first.wait(timeout=300)
    assert second.returncode == 2 and "is being written by spacenit convert (pid" in second.stderr, second.stderr
    assert first_code == 0
    assert len(DatasetReader(out)) == 80  # the first run's dataset is whole


def test_links_inside_the_root_are_followed_and_links_outside_are_reported(tmp_path: Path) -> None:
    # Issues 19 and 20: a class folder that is a link was skipped with nothing in the report (its
    # chips silently vanished), and a file linking outside the root was converted unreported.
    root = _chips(tmp_path / "in", classes=("Forest", "River"))
    (root / "store").mkdir()
    os.rename(root / "River", root / "store" / "River")
    os.symlink(root / "store" / "River", root / "River")  # a class folder linked to a folder inside the root
    elsewhere = _chips(tmp_path / "elsewhere", classes=("Pasture",), value=2)
    os.symlink(elsewhere / "Pasture", root / "Pasture")  # a linked folder outside the root
    os.symlink(elsewhere / "Pasture" / "Pasture_0.tif", root / "Forest" / "stray.tif")  # a linked file outside
    os.symlink(tmp_path / "nothing.tif", root / "Forest" / "broken.tif")  # a link to nothing
    os.symlink(root, root / "Forest" / "loop")  # a cycle: not walked twice
    report = convert(root, tmp_path / "out", layout="class_folders", tile_size_px=12, progress=False)
    assert sorted(r.label for r in load_dataset_info(tmp_path / "out").samples) == ["Forest"] * 3
    failed: dict[str, list[str]] = {}
    for f in report.failures:
        failed.setdefault(str(Path(f.path).relative_to(root) if Path(f.path).is_relative_to(root) else f.path), []).append(f.reason)
    # The River chips, reached through the link and through store/: both paths reported, naming each other.
    for i in range(3):
        assert "occurs 2 times" in failed[f"River/River_{i}.tif"][0] and "store/River" in failed[f"River/River_{i}.tif"][0]
        assert f"store/River/River_{i}.tif" in failed
    for i in range(3):
        assert "outside the input root" in failed[f"Pasture/Pasture_{i}.tif"][0]
    assert "outside the input root" in failed["Forest/stray.tif"][0] and "broken link" in failed["Forest/broken.tif"][0]


def test_a_raster_declaring_too_many_pixels_is_refused_and_the_cap_can_be_raised(tmp_path: Path) -> None:
    # A 1.8 MB sparse 100000 x 100000 x 13 GeoTIFF used to convert to an all-zero sample, and with
    # --tile-scenes to plan 2,442,970 tiles.
    path = tmp_path / "in" / "Forest" / "huge.tif"
    path.parent.mkdir(parents=True)
    with rasterio.open(path, "w", driver="GTiff", width=100_000, height=100_000, count=13, dtype="uint16",
                       crs="EPSG:32632", transform=Affine(10, 0, *ORIGIN[:1], 0, -10, ORIGIN[1]), tiled=True,
                       blockxsize=256, blockysize=256, SPARSE_OK=True):  # fmt: skip
        pass
    assert path.stat().st_size < 3_000_000
    _chips(tmp_path / "in", classes=("River",))
    report = convert(tmp_path / "in", tmp_path / "out", layout="class_folders", tile_size_px=12, progress=False)
    (failure,) = report.failures
    assert "declares 100000 x 100000 pixels" in failure.reason and "--max-raster-pixels" in failure.reason
    assert report.num_samples == 3  # the good chips are converted
    # With the cap raised, the file opens, but every block under the tile is sparse: no data there.
    report = convert(tmp_path / "in", tmp_path / "raised", layout="class_folders", tile_size_px=12,
                     max_raster_pixels=10**11, progress=False)  # fmt: skip
    (failure,) = report.failures
    assert "sparse" in failure.reason
    # As a scene to tile, it is refused for its tile count before anything is read.
    report = convert(tmp_path / "in", tmp_path / "tiles", layout="class_folders", tile_size_px=12,
                     max_raster_pixels=10**11, tile_scenes=True, progress=False)  # fmt: skip
    assert any("tiles per scene" in f.reason and "--max-tiles-per-scene" in f.reason for f in report.failures)


def test_a_date_that_does_not_overlap_the_tile_is_stored_absent_and_reported(tmp_path: Path) -> None:
    root = tmp_path / "in"
    rng = np.random.default_rng(3)
    write_tif(root / "s" / "sentinel1" / "2021-01-01.tif", rng.normal(-12, 2, (2, 12, 12)).astype(np.float32), origin=ORIGIN)
    far = (ORIGIN[0] + 50_000, ORIGIN[1])  # the same CRS, 50 km east: no pixel under the tile
    write_tif(root / "s" / "sentinel1" / "2021-02-01.tif", rng.normal(-12, 2, (2, 12, 12)).astype(np.float32), origin=far)
    report = convert(root, tmp_path / "out", tile_size_px=12, progress=False)
    record = load_dataset_info(tmp_path / "out").samples[0]
    assert record.present["sentinel1"] == [True, False] and record.dates["sentinel1"] == ["2021-01-01", ""]
    (absent,) = report.absent_timesteps
    assert (absent.sample_id, absent.sensor, absent.date) == ("s", "sentinel1", "2021-02-01")
    assert "absent_timesteps" in json.loads((tmp_path / "out" / REPORT_JSON).read_text())


def test_a_failed_sample_does_not_add_its_sensor_to_the_dataset(tmp_path: Path) -> None:
    root = tmp_path / "in"
    write_tif(root / "good" / "sentinel1" / "2021-01-01.tif", np.ones((2, 12, 12), np.float32), origin=ORIGIN)
    write_tif(root / "bad" / "sentinel2_l2a" / "2021-01-01.tif", np.ones((12, 12, 12), np.uint16), crs=None)  # no CRS
    report = convert(root, tmp_path / "out", tile_size_px=12, progress=False)
    assert [f.sample_id for f in report.failures] == ["bad"] and report.dropped_sensors == ["sentinel2_l2a"]
    info = load_dataset_info(tmp_path / "out")
    assert list(info.sensors) == ["sentinel1"] and list(info.samples[0].present) == ["sentinel1"]


def test_a_failed_rerun_leaves_no_report_claiming_success(tmp_path: Path) -> None:
    _chips(tmp_path / "in")
    out = tmp_path / "out"
    assert convert(tmp_path / "in", out, layout="class_folders", tile_size_px=12, progress=False).ok
    for path in (tmp_path / "in").rglob("*.tif"):
        path.write_bytes(b"not a tiff any more")
    with pytest.raises(Exception, match="could be converted"):
        convert(tmp_path / "in", out, layout="class_folders", tile_size_px=12, progress=False)
    report = json.loads((out / REPORT_JSON).read_text())
    assert report["ok"] is False and not (out / DATASET_JSON).exists()


def test_killing_convert_kills_its_workers(tmp_path: Path) -> None:
    _chips(tmp_path / "in", n=300)
    code = ("from spacenit.conversion.convert import convert; import sys; "
            "convert(sys.argv[1], sys.argv[2], tile_size_px=12, samples_per_shard=4, workers=2, progress=False)")  # fmt: skip
    parent = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "in"), str(tmp_path / "out")])
    deadline, workers = time.time() + 60, []
    while len(workers) < 2 and time.time() < deadline:
        out = subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True, text=True).stdout.split()
        workers = [int(p) for p in out]
        time.sleep(0.05)
    assert len(workers) >= 2, "the pool never started"
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(timeout=30)
    deadline = time.time() + 30
    alive = workers
    while alive and time.time() < deadline:
        alive = [p for p in alive if Path(f"/proc/{p}").exists() and "Z" not in Path(f"/proc/{p}/stat").read_text().split()[2]]
        time.sleep(0.1)
    assert not alive, f"workers {alive} outlived their parent"


def test_a_file_coarser_than_its_bands_grid_is_refused_naming_it(tmp_path: Path) -> None:
    root = tmp_path / "in"
    write_tif(root / "a" / "sentinel1" / "2021-01-01.tif", np.ones((2, 12, 12), np.float32), origin=ORIGIN)
    write_tif(root / "b" / "sentinel1" / "2021-01-01.tif", np.ones((2, 6, 6), np.float32), res=20.0, origin=ORIGIN)
    report = convert(root, tmp_path / "out", tile_size_px=12, progress=False)
    (failure,) = report.failures
    assert failure.sample_id == "b" and "has 20 m pixels" in failure.reason and "--one-grid" in failure.reason
    one = convert(root, tmp_path / "one", tile_size_px=12, one_grid=True, progress=False)
    assert one.ok and bands_of(DatasetReader(tmp_path / "one")[1], "sentinel1").shape == (1, 2, 12, 12)


def test_a_tile_that_is_not_whole_pixels_of_every_grid_names_the_sizes_that_are(tmp_path: Path) -> None:
    root = tmp_path / "in"
    write_tif(root / "a" / "sentinel1" / "2021-01-01.tif", np.ones((2, 32, 32), np.float32), origin=ORIGIN)
    write_tif(root / "a" / "srtm" / "dem.tif", np.ones((1, 11, 11), np.float32), res=30.0, origin=ORIGIN)
    with pytest.raises(Exception, match=r"not a whole number of 30 m pixels.*multiple of 3 \(e\.g\. 30 or 33\)"):
        convert(root, tmp_path / "out", tile_size_px=32, progress=False)
