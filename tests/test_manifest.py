"""Manifests (CSV, JSON lines): multi-sensor, multi-date, one file per band; every bad row is reported."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio

from spacenit.conversion.convert import ConversionError, convert
from spacenit.conversion.manifest import ManifestError
from spacenit.data.format import load_dataset_info
from spacenit.data.shards import DatasetReader
from spacenit.evaluation.datasets import task_from_dataset
from spacenit.evaluation.errors import ProbeError
from spacenit.sensors import SENTINEL, SENTINEL2_L2A
from tests.rasters import bands_of, write_tif

ORIGIN = (600_000.0, 5_100_000.0)  # EPSG:32632


def _s2_band_files(root: Path, sample: str, date: str, rng: np.random.Generator) -> list[tuple[str, str]]:
    """One file per Sentinel-2 L2A band at its native GSD (10 / 20 / 60 m), all covering 360 m (and one pixel more)."""
    rows = []
    for group in SENTINEL2_L2A.groups:
        size = int(360 // group.gsd_m) + 1
        for band in group.bands:
            rel = f"{sample}/s2/{date}/{band}.tif"
            write_tif(root / rel, rng.integers(100, 4000, (1, size, size), dtype=np.uint16), res=group.gsd_m, origin=ORIGIN)
            rows.append((band, rel))
    return rows


def _write_csv(path: Path, rows: list[dict]) -> Path:
    columns = ["sample_id", "sensor", "path", "date", "label", "split", "bands"]
    lines = [",".join(columns)] + [",".join(str(r.get(c, "")) for c in columns) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_manifest_with_one_file_per_band_and_several_dates(tmp_path: Path) -> None:
    root, rng = tmp_path / "in", np.random.default_rng(0)
    rows = []
    for sample, label in (("a", "crop"), ("b", "forest")):
        for date in ("2021-05-01", "2021-07-01"):
            for band, rel in _s2_band_files(root, sample, date, rng):
                rows.append({"sample_id": sample, "sensor": "sentinel2_l2a", "path": rel, "date": date,
                             "label": label, "split": "train", "bands": band})  # fmt: skip
    vv_vh = write_tif(root / "a" / "s1.tif", rng.normal(-12, 2, (2, 36, 36)).astype(np.float32), origin=ORIGIN)
    rows.append({"sample_id": "a", "sensor": "sentinel1", "path": "a/s1.tif", "date": "2021-07-02", "label": "crop", "split": "train"})
    report = convert(root, tmp_path / "ds", manifest=_write_csv(tmp_path / "m.csv", rows), tile_size_px=36, progress=False)
    assert report.ok and report.num_samples == 2

    reader = DatasetReader(tmp_path / "ds")
    a, b = reader[0], reader[1]
    assert (a.record.label, a.record.split, b.record.label) == ("crop", "train", "forest")
    assert a.record.dates == {"sentinel1": ["2021-07-02"], "sentinel2_l2a": ["2021-05-01", "2021-07-01"]}
    assert b.present["sentinel1"].tolist() == [False] and (bands_of(b, "sentinel1") == SENTINEL).all()
    with rasterio.open(vv_vh) as src:
        np.testing.assert_array_equal(bands_of(a, "sentinel1")[0], src.read())
    # Every band is copied as its file has it, at 10, 20 or 60 m: 36, 18 and 6 px over the 360 m tile.
    for grid, stored in a.data["sentinel2_l2a"].items():
        side = int(360 // grid.gsd_m)
        assert stored.shape == (2, len(grid.bands), side, side)
        for c, band in enumerate(grid.bands):
            with rasterio.open(root / "a" / "s2" / "2021-07-01" / f"{band}.tif") as src:
                np.testing.assert_array_equal(stored[1, c], src.read(1)[:side, :side])


def test_jsonl_manifest_with_a_band_list(tmp_path: Path) -> None:
    root = tmp_path / "in"
    data = np.stack([np.full((16, 16), v, np.int16) for v in (2, 3, 4, 5, 6, 7, 99)])
    write_tif(root / "scene.tif", data)
    row = {"sample_id": "x", "sensor": "landsat_sr", "path": "scene.tif", "date": "2019-07-27",
           "bands": ["SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B6", "SR_B7", "_"]}  # fmt: skip
    (tmp_path / "m.jsonl").write_text(json.dumps(row) + "\n")
    assert convert(root, tmp_path / "ds", manifest=tmp_path / "m.jsonl", tile_size_px=16, gsd_m=10, progress=False).ok
    x = bands_of(DatasetReader(tmp_path / "ds")[0], "landsat_sr")[0]
    assert (x[0] == SENTINEL).all()  # SR_B1 is in no file: missing, not zero
    assert x[1:, 0, 0].tolist() == [2, 3, 4, 5, 6, 7]  # the skipped 7th band (99) is nowhere


def test_samples_layout_with_one_file_per_band(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    _s2_band_files(tmp_path / "in", "p1", "2021-06-01", rng)
    (tmp_path / "in" / "p1" / "s2").rename(tmp_path / "in" / "p1" / "sentinel2_l2a")
    assert convert(tmp_path / "in", tmp_path / "ds", tile_size_px=36, progress=False).ok
    sample = DatasetReader(tmp_path / "ds")[0]
    assert sample.record.dates["sentinel2_l2a"] == ["2021-06-01"] and not (bands_of(sample, "sentinel2_l2a") == SENTINEL).all()
    assert [g.gsd_m for g in sample.data["sentinel2_l2a"]] == [10.0, 20.0, 60.0]


def test_every_bad_row_fails_its_sample_with_line_and_reason(tmp_path: Path) -> None:
    root = tmp_path / "in"
    rng = np.random.default_rng(2)
    for name in ("good", "other"):
        write_tif(root / f"{name}.tif", rng.integers(1, 3000, (2, 8, 8), dtype=np.uint16).astype(np.float32))
    outside = write_tif(tmp_path / "outside.tif", np.ones((2, 8, 8), np.float32))
    os.symlink(outside, root / "link.tif")
    os.symlink(tmp_path, root / "linked_folder")  # a folder under the root that lies outside it
    s1 = {"sensor": "sentinel1", "date": "2021-01-01"}
    rows = [
        {"sample_id": "ok", "path": "good.tif", **s1},
        {"sample_id": "escape", "path": "../outside.tif", **s1},
        {"sample_id": "absolute", "path": str(outside), **s1},
        {"sample_id": "symlink", "path": "link.tif", **s1},
        {"sample_id": "sensor", "path": "good.tif", "sensor": "sentinel9", "date": "2021-01-01"},
        {"sample_id": "missing", "path": "nope.tif", **s1},
        {"sample_id": "date", "path": "good.tif", "sensor": "sentinel1", "date": "June"},
        {"sample_id": "band", "path": "good.tif", "bands": "VV HH", **s1},
        {"sample_id": "dup", "path": "good.tif", **s1},
        {"sample_id": "dup", "path": "other.tif", **s1},
        {"sample_id": "label", "path": "good.tif", "label": "a", **s1},
        {"sample_id": "label", "path": "other.tif", "label": "b", "sensor": "sentinel1", "date": "2021-02-01"},
        {"sample_id": "folder", "path": "linked_folder/outside.tif", **s1},
    ]
    report = convert(root, tmp_path / "ds", manifest=_write_csv(tmp_path / "m.csv", rows), tile_size_px=8, progress=False)
    assert report.num_samples == 1
    reasons = {f.sample_id: f.reason for f in report.failures}
    expected = {
        "escape": "line 3: path '../outside.tif' escapes the input root",
        "absolute": "line 4: path", "symlink": "line 5: path 'link.tif' escapes",
        "sensor": "line 6: unknown sensor 'sentinel9'", "missing": "nope.tif does not exist",
        "date": "date 'June' is not an ISO date", "band": "has no band(s) ['HH']",
        "dup": "line 11: sample id 'dup' already has sentinel1 on date 2021-01-01",
        "label": "line 13: label/labels/split (b, None, None) differ from line 12",
        "folder": "line 14: path 'linked_folder/outside.tif' escapes",
    }  # fmt: skip
    assert set(reasons) == set(expected)
    for sample_id, text in expected.items():
        assert text in reasons[sample_id] and "m.csv" in reasons[sample_id], reasons[sample_id]
    assert "escapes the input root" in reasons["absolute"]
    assert next(f for f in report.failures if f.sample_id == "escape").path == str(root / "../outside.tif")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("m.csv", "sample_id,path\nx,a.tif\n", r"missing column\(s\) \['sensor'\]"),
        ("m.csv", "sample_id,sensor,path,colour\nx,srtm,a.tif,red\n", r"unknown column\(s\) \['colour'\]"),
        ("m.jsonl", '{"sample_id": "x", "sensor": "srtm", "path": "a.tif"}\n{not json\n', "line 2 is not valid JSON"),
        ("m.jsonl", '["x", "srtm", "a.tif"]\n', "line 1 must be a JSON object"),
        ("m.csv", "sample_id,sensor,path\n,srtm,a.tif\n", "line 2: the 'sample_id' column is empty"),
        ("m.txt", "sample_id,sensor,path\n", "must be a .csv or a .jsonl"),
        ("m.csv", "sample_id,sensor,path\n", "has no rows"),
    ],
)
def test_unreadable_manifest_is_one_clear_error(tmp_path: Path, name: str, text: str, message: str) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / name).write_text(text)
    with pytest.raises(ManifestError, match=message):
        convert(tmp_path / "in", tmp_path / "ds", manifest=tmp_path / name, progress=False)


# --- real data: BigEarthNet patches have no georeferencing at all ---


def _bigearthnet_manifest(shared_data: Path, path: Path) -> tuple[Path, list[dict]]:
    root = shared_data / "bigearthnet" / "v1"
    labels = json.loads((root / "labels.json").read_text())
    with path.open("w") as f:
        for patch in labels:
            pid = patch["patch_id"]
            for sensor, rel in (("sentinel2_l2a", f"s2/{pid}_12band_120px.tif"), ("sentinel1", f"s1/{pid}_S1.tif")):
                row = {"sample_id": pid, "sensor": sensor, "path": rel, "split": patch["split"], "labels": patch["labels_19"]}
                f.write(json.dumps(row) + "\n")
    return root, labels


@pytest.mark.realdata
@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_bigearthnet_needs_assume_crs_and_then_converts(shared_data: Path, tmp_path: Path) -> None:
    root, labels = _bigearthnet_manifest(shared_data, tmp_path / "m.jsonl")
    with pytest.raises(ConversionError, match=r"_S1\.tif has no CRS.*--assume-crs"):
        convert(root, tmp_path / "no-crs", manifest=tmp_path / "m.jsonl", tile_size_px=120, progress=False)

    report = convert(root, tmp_path / "ds", manifest=tmp_path / "m.jsonl", tile_size_px=120, assume_crs="EPSG:32634",
                     storage="hdf5", progress=False)  # fmt: skip
    assert report.ok and report.num_samples == len(labels) == 30
    reader = DatasetReader(tmp_path / "ds")
    sample = reader[5]
    assert sample.record.crs == "EPSG:32634" and sample.record.bounds == (0.0, -1200.0, 1200.0, 0.0)  # 120 px at 10 m
    # The upsampled 120 px stack has every band at 10 m, and is stored so (one grid), as dataset.json says.
    assert reader.info.grids["sentinel2_l2a"] == SENTINEL2_L2A.one_grid(10.0)
    with rasterio.open(root / "s2" / f"{sample.id}_12band_120px.tif") as src:
        np.testing.assert_array_equal(bands_of(sample, "sentinel2_l2a")[0], src.read().astype(np.float32))
    with rasterio.open(root / "s1" / f"{sample.id}_S1.tif") as src:
        np.testing.assert_array_equal(bands_of(sample, "sentinel1")[0], src.read())
    # The multi-label classes travel through dataset.json into a task: targets as labels.json says.
    task = task_from_dataset(tmp_path / "ds")
    classes = sorted({lbl for patch in labels for lbl in patch["labels_19"]})
    by_id = {patch["patch_id"]: patch["labels_19"] for patch in labels}
    expected = np.array([[c in by_id[i] for c in classes] for i in task.ids], dtype=np.int64)
    assert task.multilabel and task.class_names == classes
    np.testing.assert_array_equal(task.targets, expected)


def test_multi_label_samples_from_a_csv_manifest_become_a_multi_label_task(tmp_path: Path) -> None:
    root, rng = tmp_path / "in", np.random.default_rng(3)
    lines = ["sample_id,sensor,path,labels,split"]
    classes_of = {"a": "water;forest", "b": "forest", "c": "", "d": "urban; water"}  # c: an empty cell, no labels
    for sample, cell in classes_of.items():
        write_tif(root / f"{sample}.tif", rng.normal(-12, 2, (2, 16, 16)).astype(np.float32), origin=ORIGIN)
        lines.append(f"{sample},sentinel1,{sample}.tif,{cell},train")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    convert(root, tmp_path / "ds", manifest=tmp_path / "m.csv", tile_size_px=16, progress=False)
    records = {s.id: s for s in load_dataset_info(tmp_path / "ds").samples}
    assert records["a"].labels == ["forest", "water"] and records["a"].label is None
    assert records["d"].labels == ["urban", "water"] and records["c"].labels is None
    with pytest.raises(ProbeError, match="3 have `labels` .* 1 have neither"):
        task_from_dataset(tmp_path / "ds")

    (tmp_path / "m.csv").write_text("\n".join(lines).replace("c.tif,,", "c.tif,urban,") + "\n")
    convert(root, tmp_path / "ds", manifest=tmp_path / "m.csv", tile_size_px=16, progress=False)
    task = task_from_dataset(tmp_path / "ds")
    assert task.multilabel and task.class_names == ["forest", "urban", "water"]
    expected = {"a": [1, 0, 1], "b": [1, 0, 0], "c": [0, 1, 0], "d": [0, 1, 1]}
    np.testing.assert_array_equal(task.targets, np.array([expected[i] for i in task.ids]))


def test_label_and_labels_on_one_sample_is_reported(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    for sample in ("good", "both"):
        write_tif(tmp_path / "in" / f"{sample}.tif", rng.normal(-12, 2, (2, 16, 16)).astype(np.float32), origin=ORIGIN)
    rows = [{"sample_id": "good", "sensor": "sentinel1", "path": "good.tif", "labels": ["water"]},
            {"sample_id": "both", "sensor": "sentinel1", "path": "both.tif", "label": "crop", "labels": ["water"]}]  # fmt: skip
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = convert(tmp_path / "in", tmp_path / "ds", manifest=tmp_path / "m.jsonl", tile_size_px=16, progress=False)
    assert report.num_samples == 1 and [f.sample_id for f in report.failures] == ["both"]
    assert "`label` (one class) or `labels` (multi-label), not both" in report.failures[0].reason
