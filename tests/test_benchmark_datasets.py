"""Readers of the published benchmark datasets, each on a tiny fixture in its release's exact layout.

Every expected value is read from the fixture files directly (h5py, numpy, rasterio), not
through the reader under test. Fixtures: tests/data/benchmarks.py.
"""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import rasterio
from rasterio.warp import transform as warp_transform

from spacenit.conversion.cdl import CDL_CLASSES, CdlError, prepare_cdl
from spacenit.conversion.geobench import GeoBenchError, prepare_geobench, safe_loads
from spacenit.conversion.mados import CLASSES as MADOS_CLASSES
from spacenit.conversion.mados import MadosError, band_of, prepare_mados
from spacenit.conversion.pastis import CLASSES as PASTIS_CLASSES
from spacenit.conversion.pastis import prepare_pastis
from spacenit.conversion.sen1floods11 import prepare_sen1floods11
from spacenit.conversion.so2sat import CLASSES as LCZ
from spacenit.conversion.so2sat import So2SatError, prepare_so2sat
from spacenit.data.shards import IGNORE, DatasetReader
from spacenit.sensors import SENTINEL
from tests.data import benchmarks as fx


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("published")
    for folder, write in fx.WRITERS.items():
        write(root / folder)
    return root


def _grid(sample, sensor: str, grid: str = "10m") -> np.ndarray:
    return next(x for g, x in sample.data[sensor].items() if g.name == grid)


def _band(reader: DatasetReader, sample, sensor: str, band: str) -> np.ndarray:
    """(T, H, W) of one band, from whichever grid holds it."""
    for g, x in sample.data[sensor].items():
        if band in g.bands:
            return x[:, g.bands.index(band)]
    raise KeyError(band)


def test_so2sat_reads_every_split_with_its_bands_and_labels(fixtures: Path, tmp_path: Path) -> None:
    out = prepare_so2sat(fixtures / "so2sat_lcz42", tmp_path / "so2sat")
    reader = DatasetReader(out)
    assert len(reader) == sum(fx.SO2SAT_SIZES.values())
    by_split = {split: [r for r in reader.records if r.split == split] for split in ("train", "val", "test")}
    assert {k: len(v) for k, v in by_split.items()} == {"train": 34, "val": 12, "test": 17}
    with h5py.File(fixtures / "so2sat_lcz42" / "testing.h5") as f:
        sen1, sen2, label = f["sen1"][:], f["sen2"][:], f["label"][:]
    index = [r.id for r in reader.records].index("testing-000000")
    sample = reader[index]
    assert sample.record.label == LCZ[int(label[0].argmax())]
    s2 = _grid(sample, "sentinel2_l1c")[0]  # (13, 32, 32)
    bands = reader.info.sensors["sentinel2_l1c"].bands
    for i, band in enumerate(("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")):
        np.testing.assert_allclose(s2[bands.index(band)], (sen2[0, :, :, i] * 10000).astype(np.float32), rtol=1e-6)
    for band in ("B01", "B09", "B10"):  # not in So2Sat
        assert (s2[bands.index(band)] == SENTINEL).all()
    np.testing.assert_allclose(_grid(sample, "so2sat_sentinel1")[0], sen1[0].transpose(2, 0, 1).astype(np.float32), rtol=1e-6)
    vv, vh = _grid(sample, "sentinel1")[0]
    np.testing.assert_allclose(vv, 10 * np.log10(sen1[0, :, :, 5]), atol=1e-5)  # from float32 intensities
    assert (vh == SENTINEL).all()  # row 0's Lee-filtered VH intensity is 0: no dB value
    assert set(reader.info.classes) == {LCZ[0], LCZ[4], LCZ[10], LCZ[16]}


def test_so2sat_subset_is_seeded_and_bad_files_are_refused(fixtures: Path, tmp_path: Path) -> None:
    a = DatasetReader(prepare_so2sat(fixtures / "so2sat_lcz42", tmp_path / "a", max_per_split=5, seed=3))
    b = DatasetReader(prepare_so2sat(fixtures / "so2sat_lcz42", tmp_path / "b", max_per_split=5, seed=3))
    assert len(a) == 15 and [r.id for r in a.records] == [r.id for r in b.records]
    bad = tmp_path / "bad"
    bad.mkdir()
    with h5py.File(bad / "training.h5", "w") as f:
        f.create_dataset("sen2", data=np.zeros((2, 32, 32, 10)))
    with pytest.raises(So2SatError, match="no 'sen1' array"):
        prepare_so2sat(bad, tmp_path / "bad-out")
    with pytest.raises(So2SatError, match="none of"):
        prepare_so2sat(tmp_path / "a", tmp_path / "empty-out")


def test_sen1floods11_converts_chips_with_their_hand_labels(fixtures: Path, tmp_path: Path) -> None:
    out = prepare_sen1floods11(fixtures / "sen1floods11", tmp_path / "s1f")
    reader = DatasetReader(out)
    info = reader.info
    expected = {c: ("val" if s == "valid" else s) for s, chips in fx.SEN1FLOODS11_CHIPS.items() if s != "bolivia" for c in chips}
    assert {r.id: r.split for r in reader.records} == expected
    assert info.label_raster.classes == ["not water", "water"] and info.label_raster.ignore_value == -1
    hand = fixtures / "sen1floods11" / "v1.1" / "data" / "flood_events" / "HandLabeled"
    i = [r.id for r in reader.records].index("Ghana_24858")
    sample = reader[i]
    with rasterio.open(hand / "LabelHand" / "Ghana_24858_LabelHand.tif") as src:
        label = src.read(1)
    with rasterio.open(hand / "S2Hand" / "Ghana_24858_S2Hand.tif") as src:
        s2 = src.read().astype(np.float32)
    with rasterio.open(hand / "S1Hand" / "Ghana_24858_S1Hand.tif") as src:
        s1 = src.read()
    np.testing.assert_array_equal(sample.label_raster, np.where(label == -1, IGNORE, label))
    assert (sample.label_raster[:3, :3] == IGNORE).all() and set(np.unique(sample.label_raster)) == {IGNORE, 0, 1}
    # S2Hand's band 9 is B8A (B1..B8, B8A, B9..B12), whichever grid the reader put it on
    np.testing.assert_array_equal(_band(reader, sample, "sentinel2_l1c", "B8A")[0], s2[8])
    np.testing.assert_array_equal(_band(reader, sample, "sentinel2_l1c", "B12")[0], s2[12])
    vv = _band(reader, sample, "sentinel1", "VV")[0]
    assert vv[5, 5] == SENTINEL and np.isclose(vv[0, 0], s1[0, 0, 0])  # NaN -> missing
    assert sample.record.crs == "EPSG:4326"
    assert sample.record.dates == {"sentinel1": ["2018-09-18"], "sentinel2_l1c": ["2018-09-19"]}
    usa = reader[[r.id for r in reader.records].index("USA_232191")]
    assert usa.record.dates["sentinel1"] == [""]  # no metadata for the location
    bolivia = DatasetReader(prepare_sen1floods11(fixtures / "sen1floods11", tmp_path / "bolivia", bolivia=True))
    assert {r.id: r.split for r in bolivia.records} == dict.fromkeys(fx.SEN1FLOODS11_CHIPS["bolivia"], "test")
    assert bolivia[0].record.dates["sentinel2_l1c"] == ["2018-02-15"]


def test_pastis_picks_evenly_spaced_dates_and_ignores_void(fixtures: Path, tmp_path: Path) -> None:
    out = prepare_pastis(fixtures / "pastis", tmp_path / "pastis", num_timesteps=4)
    reader = DatasetReader(out)
    assert [r.id for r in reader.records] == [str(p) for p in sorted(fx.PASTIS_PATCHES)]
    assert [r.split for r in reader.records] == ["train", "train", "train", "val", "test"]
    assert reader.info.label_raster.classes == PASTIS_CLASSES and reader.info.num_timesteps == {"sentinel2_l2a": 4, "sentinel1": 4}
    meta = {f["properties"]["ID_PATCH"]: f for f in json.loads((fixtures / "pastis" / "metadata.geojson").read_text())["features"]}
    for index, (pid, (_, steps)) in enumerate(fx.PASTIS_PATCHES.items()):
        sample = reader[index]
        picked = np.linspace(0, steps - 1, 4).round().astype(int) if steps > 4 else np.arange(steps)
        raw = np.load(fixtures / "pastis" / "DATA_S2" / f"S2_{pid}.npy")
        b02 = _band(reader, sample, "sentinel2_l2a", "B02")
        b12 = _band(reader, sample, "sentinel2_l2a", "B12")
        np.testing.assert_array_equal(b02[: len(picked)], raw[picked, 0])
        np.testing.assert_array_equal(b12[: len(picked), 0, 0], 100 * (picked + 1) + 9)
        assert sample.present["sentinel2_l2a"].tolist() == [True] * len(picked) + [False] * (4 - len(picked))
        assert (b02[len(picked):] == SENTINEL).all() and (_band(reader, sample, "sentinel2_l2a", "B01") == SENTINEL).all()
        dates = meta[pid]["properties"]["dates-S2"]
        assert sample.record.dates["sentinel2_l2a"][: len(picked)] == [
            f"{dates[str(t)] // 10000}-{dates[str(t)] // 100 % 100:02d}-{dates[str(t)] % 100:02d}" for t in picked]
        target = np.load(fixtures / "pastis" / "ANNOTATIONS" / f"TARGET_{pid}.npy")[0]
        np.testing.assert_array_equal(sample.label_raster, np.where(target == 19, IGNORE, target))
        ring = np.array(meta[pid]["geometry"]["coordinates"][0])
        assert sample.record.crs == "EPSG:2154" and sample.record.bounds == (ring[:, 0].min(), ring[:, 1].min(), ring[:, 0].max(), ring[:, 1].max())
        assert sample.present["sentinel1"].tolist() == [True, True, False, False]  # dates-S1A given as a JSON string


def test_mados_matches_wavelengths_to_bands_on_native_grids(fixtures: Path, tmp_path: Path) -> None:
    reader = DatasetReader(prepare_mados(fixtures / "mados", tmp_path / "mados"))
    expected = {c: s for s, crops in fx.MADOS_CROPS.items() for c in crops}
    assert {r.id: r.split for r in reader.records} == expected
    assert reader.info.label_raster.classes == MADOS_CLASSES
    names = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]  # the fixture's band order
    for crop in ("Scene_0_2", "Scene_1_3"):
        sample = reader[[r.id for r in reader.records].index(crop)]
        scene, number = crop.rsplit("_", 1)
        for i, band in enumerate(names):
            values = _band(reader, sample, "sentinel2_l2a", band)[0]
            side = {"B01": 40}.get(band, 240 if band in ("B02", "B03", "B04", "B08") else 120)
            assert values.shape == (side, side)
            assert values[0, 0] == SENTINEL  # NaN in the file
            assert values[1, 1] == pytest.approx((0.001 * (i + 1) + 0.01 * int(number)) * 10000, rel=1e-5)
        assert (_band(reader, sample, "sentinel2_l2a", "B09") == SENTINEL).all()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # Scene_1 has no georeferencing
            with rasterio.open(fixtures / "mados" / scene / "10" / f"{scene}_L2R_cl_{number}.tif") as src:
                mask = src.read(1).astype(np.int64)
        np.testing.assert_array_equal(sample.label_raster, np.where(mask == 0, IGNORE, mask - 1))
    geo = reader[[r.id for r in reader.records].index("Scene_0_2")].record
    bare = reader[[r.id for r in reader.records].index("Scene_1_3")].record
    assert geo.crs == "EPSG:32634" and geo.bounds == (504800.0, 4197600.0, 507200.0, 4200000.0) and geo.dates["sentinel2_l2a"] == ["2020-07-24"]
    assert bare.crs is None and bare.dates["sentinel2_l2a"] == [""]
    assert band_of(2186, 20, Path("x")) == "B12" and band_of(2202, 20, Path("x")) == "B12"
    with pytest.raises(MadosError, match="60 m band"):
        band_of(443, 10, Path("x.tif"))


def test_geobench_classification_fixes_released_band_names_and_reads_labels(fixtures: Path, tmp_path: Path) -> None:
    task = fixtures / "geobench" / "classification_v1.0" / "m-eurosat"
    reader = DatasetReader(prepare_geobench(task, tmp_path / "gbe"))
    assert list(reader.info.sensors) == ["sentinel2_l1c"]
    partition = json.loads((task / "default_partition.json").read_text())
    assert {r.id: r.split for r in reader.records} == {n: {"valid": "val"}.get(s, s) for s, names in partition.items() for n in names}
    sample = reader[[r.id for r in reader.records].index("id_0006")]
    label = 6 % 4
    assert sample.record.label == fx.EUROSAT_CLASSES[label]
    with h5py.File(task / "id_0006.hdf5") as f:
        stored = {name: np.asarray(f[name], dtype=np.float32) for name in fx.S2_13}
    # released names 08A .. 12 hold EuroSAT's B09, B10, B11, B12, B8A (geo-bench issue 28)
    for name, band in [("02 - Blue", "B02"), ("08A - Vegetation Red Edge", "B09"), ("09 - Water vapour", "B10"),
                       ("10 - SWIR - Cirrus", "B11"), ("11 - SWIR", "B12"), ("12 - SWIR", "B8A")]:  # fmt: skip
        np.testing.assert_array_equal(_band(reader, sample, "sentinel2_l1c", band)[0], stored[name])
    assert sample.record.crs == "EPSG:32631" and sample.record.bounds == (400960.0, 4999840.0, 401120.0, 5000000.0)


def test_geobench_segmentation_reads_dates_and_label_rasters(fixtures: Path, tmp_path: Path) -> None:
    task = fixtures / "geobench" / "segmentation_v1.0" / "m-cashew-plant"
    reader = DatasetReader(prepare_geobench(task, tmp_path / "gbc"))
    assert list(reader.info.sensors) == ["sentinel2_l2a"] and reader.info.num_timesteps == {"sentinel2_l2a": 2}
    assert reader.info.label_raster.classes == fx.CASHEW_CLASSES
    sample = reader[3]
    assert sample.record.dates["sentinel2_l2a"] == ["2019-11-05", "2019-12-10"]
    with h5py.File(task / f"{sample.id}.hdf5") as f:
        np.testing.assert_array_equal(sample.label_raster, np.asarray(f["label"]))
        np.testing.assert_array_equal(_band(reader, sample, "sentinel2_l2a", "B8A")[1], np.asarray(f["08A - Vegetation Red Edge_2019-12-10"]))


def test_geobench_pickles_cannot_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    with pytest.raises(GeoBenchError, match="refusing to unpickle"):
        safe_loads(pickle.dumps({"label": Evil()}))
    assert not marker.exists()
    with pytest.raises(GeoBenchError, match="object array"):
        safe_loads(pickle.dumps(np.array([object()], dtype=object)))
    plain = {"label": [np.int64(3), np.arange(4.0).reshape(2, 2)]}  # what the released pickles hold does load
    loaded = safe_loads(pickle.dumps(plain))
    assert loaded["label"][0] == 3 and np.array_equal(loaded["label"][1], plain["label"][1])


def test_cdl_labels_are_the_cdl_codes_warped_onto_each_chip(fixtures: Path, tmp_path: Path) -> None:
    out = prepare_cdl(fixtures / "cdl", tmp_path / "cdl")
    reader = DatasetReader(out)
    assert {r.id: r.split for r in reader.records} == fx.CDL_CHIPS
    assert reader.info.label_raster.gsd_m == 30.0 and reader.info.label_raster.classes == CDL_CLASSES
    assert CDL_CLASSES[1] == "Corn" and CDL_CLASSES[176] == "Grassland/Pasture"
    with rasterio.open(fixtures / "cdl" / "2021_30m_cdls.tif") as cdl:
        codes, inverse = cdl.read(1).astype(np.int64), ~cdl.transform
    agree = total = 0
    for sample in reader:
        left, _, _, top = sample.record.bounds
        rows, cols = np.mgrid[0:10, 0:10]
        xs, ys = left + 30 * (cols.ravel() + 0.5), top - 30 * (rows.ravel() + 0.5)  # label cell centres
        ax, ay = warp_transform(sample.record.crs, "EPSG:5070", xs, ys)
        c, r = inverse @ (np.array(ax), np.array(ay))
        expected = codes[np.floor(r).astype(int), np.floor(c).astype(int)].reshape(10, 10)
        expected = np.where(expected == 0, IGNORE, expected)
        agree += int((sample.label_raster == expected).sum())
        total += expected.size
    assert agree == total  # nearest neighbour: every label cell takes the CDL pixel under its centre
    with pytest.raises(CdlError, match="exactly one CDL raster"):
        prepare_cdl(fixtures / "cdl" / "imagery", tmp_path / "none")


def test_readers_refuse_folders_of_another_layout(fixtures: Path, tmp_path: Path) -> None:
    from spacenit.conversion.pastis import PastisError
    from spacenit.conversion.sen1floods11 import Sen1Floods11Error

    with pytest.raises(Sen1Floods11Error, match="not Sen1Floods11"):
        prepare_sen1floods11(fixtures / "pastis", tmp_path / "a")
    with pytest.raises(PastisError, match="not PASTIS"):
        prepare_pastis(fixtures / "mados", tmp_path / "b")
    with pytest.raises(MadosError, match="not MADOS"):
        prepare_mados(fixtures / "pastis", tmp_path / "c")
    with pytest.raises(GeoBenchError, match="default_partition.json"):
        prepare_geobench(fixtures / "geobench", tmp_path / "d")


def test_a_failed_conversion_is_redone_not_reused(fixtures: Path, tmp_path: Path) -> None:
    import shutil

    from spacenit.conversion.sen1floods11 import Sen1Floods11Error

    source = shutil.copytree(fixtures / "sen1floods11", tmp_path / "src")
    chip = source / "v1.1" / "data" / "flood_events" / "HandLabeled" / "S2Hand" / "Spain_6537196_S2Hand.tif"
    kept = chip.rename(tmp_path / chip.name)
    with pytest.raises(Sen1Floods11Error, match="1 Sen1Floods11 chip.*Spain_6537196"):
        prepare_sen1floods11(source, tmp_path / "out")
    kept.rename(chip)
    reader = DatasetReader(prepare_sen1floods11(source, tmp_path / "out"))  # converted again, not the partial result
    assert "Spain_6537196" in [r.id for r in reader.records] and reader.info.label_raster.classes == ["not water", "water"]


def test_geobench_georeferencing_from_older_pickle_forms(monkeypatch) -> None:
    """affine 2 pickled Affine as a namedtuple (six constructor arguments), older rasterio its CRS as a
    PROJ dict; the reader takes both without those libraries' classes."""
    import collections

    import affine
    import rasterio.crs

    from spacenit.conversion.geobench import _bounds, _crs

    old_affine = type("Affine", (collections.namedtuple("Affine", "a b c d e f"),), {"__module__": "affine"})
    old_crs = type("CRS", (), {"__module__": "rasterio.crs", "__getstate__": lambda self: {"data": {"init": "epsg:32631"}}})
    monkeypatch.setattr(affine, "Affine", old_affine)
    monkeypatch.setattr(rasterio.crs, "CRS", old_crs)
    payload = pickle.dumps({"b": {"transform": old_affine(10.0, 0.0, 400000.0, 0.0, -10.0, 5000000.0), "crs": old_crs()}})
    monkeypatch.undo()
    attrs = safe_loads(payload)["b"]
    assert _bounds(attrs, 16) == (400000.0, 4999840.0, 400160.0, 5000000.0)
    assert _crs(attrs) == "EPSG:32631"
