"""Tiny fixtures of the published benchmark datasets, each in its release's exact on-disk layout.

Deterministic (seeded) writers, as torchgeo's tests/data scripts: the tests call them
into a temporary folder, and `python -m tests.data.benchmarks OUT_DIR` writes them all
for a look. What each release looks like is documented in the reader modules
(spacenit/conversion/{so2sat,sen1floods11,pastis,mados,geobench,cdl}.py) and in
tests/data/README.md. The writers use only h5py, numpy, rasterio and pickle, never the
readers, so a test compares the readers against the layout, not against themselves.
Pixel values carry the class (so a probe has something to find) and known markers
(so a test can find a value again after conversion).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import pickle
import sys
import types
import warnings
from pathlib import Path

import h5py
import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.warp import transform


def _tif(path: Path, data: np.ndarray, *, crs: str | None, transform: Affine | None, nodata=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = data if data.ndim == 3 else data[None]
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype=data.dtype, nodata=nodata)
    if crs:
        profile.update(crs=crs, transform=transform)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # MADOS ships some crops without georeferencing
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
    return path


# ---- So2Sat LCZ42: training.h5 / validation.h5 / testing.h5 ----------------------------------

SO2SAT_SIZES = {"training.h5": 34, "validation.h5": 12, "testing.h5": 17}


def write_so2sat(root: Path, seed: int = 0, sizes: dict[str, int] = SO2SAT_SIZES) -> Path:
    """sen1 (N, 32, 32, 8), sen2 (N, 32, 32, 10) float64, label (N, 17) one-hot; classes 0, 4, 10, 16 only.
    sen2 band b of a sample of class c is 0.02 * (b + 1) + 0.01 * c (+ noise); sen1 channels 5 and 6
    (Lee-filtered intensities) are positive, channel 4 is zero in row 0 of each file (no dB value)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for name, n in sizes.items():
        classes = np.array([0, 4, 10, 16])[np.arange(n) % 4]
        sen2 = 0.02 * (np.arange(10) + 1)[None, None, None, :] + 0.01 * classes[:, None, None, None]
        sen2 = sen2 + 0.002 * rng.standard_normal((n, 32, 32, 10))
        sen1 = rng.standard_normal((n, 32, 32, 8)) * 0.1
        sen1[..., 4:6] = rng.uniform(0.01, 1.0, (n, 32, 32, 2))
        sen1[0, :, :, 4] = 0.0
        label = np.zeros((n, 17))
        label[np.arange(n), classes] = 1.0
        with h5py.File(root / name, "w") as f:
            f.create_dataset("sen1", data=sen1)
            f.create_dataset("sen2", data=sen2)
            f.create_dataset("label", data=label)
    return root


# ---- Sen1Floods11 v1.1 hand-labelled chips ---------------------------------------------------

SEN1FLOODS11_CHIPS = {
    "train": ["Ghana_103272", "Ghana_24858", "India_1018327", "India_1068117"],
    "valid": ["Spain_6537196"],
    "test": ["USA_1010394", "USA_232191"],
    "bolivia": ["Bolivia_103757", "Bolivia_195474"],
}
SEN1FLOODS11_PX = 32


def write_sen1floods11(root: Path, seed: int = 0) -> Path:
    """The v1.1 folder: S1Hand (VV, VH dB, float32, NaN gaps), S2Hand (13 bands uint16), LabelHand
    (int16: -1 no data, 0, 1), split CSVs, Sen1Floods11_Metadata.geojson; EPSG:4326 chips of 32 px."""
    rng = np.random.default_rng(seed)
    v11 = root / "v1.1"
    hand = v11 / "data" / "flood_events" / "HandLabeled"
    px, deg = SEN1FLOODS11_PX, 8.983e-5  # ~10 m at the equator
    for k, (split, chips) in enumerate(SEN1FLOODS11_CHIPS.items()):
        lines = []
        for i, chip in enumerate(chips):
            transform = Affine(deg, 0.0, -1.5 + 0.01 * (4 * k + i), 0.0, -deg, 6.5)
            water = np.zeros((px, px), np.int16)
            water[:, : px // 2 + i] = 1
            label = water.copy()
            label[:3, :3] = -1
            s1 = np.stack([np.where(water == 1, -20.0, -8.0), np.where(water == 1, -26.0, -14.0)]).astype(np.float32)
            s1 += 0.1 * rng.standard_normal(s1.shape).astype(np.float32)
            s1[:, 5, 5] = np.nan
            s2 = (1000 + 100 * np.arange(13)[:, None, None] + 300 * (1 - water)[None]).astype(np.uint16)
            _tif(hand / "S1Hand" / f"{chip}_S1Hand.tif", s1, crs="EPSG:4326", transform=transform)
            _tif(hand / "S2Hand" / f"{chip}_S2Hand.tif", s2, crs="EPSG:4326", transform=transform)
            _tif(hand / "LabelHand" / f"{chip}_LabelHand.tif", label, crs="EPSG:4326", transform=transform)
            lines.append(f"{chip}_S1Hand.tif,{chip}_LabelHand.tif")
        splits = v11 / "splits" / "flood_handlabeled"
        splits.mkdir(parents=True, exist_ok=True)
        (splits / f"flood_{split}_data.csv").write_text("\n".join(lines) + "\n")
    features = [{"type": "Feature", "geometry": None,
                 "properties": {"location": loc, "s1_date": s1d, "s2_date": s2d}}
                for loc, s1d, s2d in (("Ghana", "2018-09-18", "2018/09/19"), ("India", "2016-08-12", "20160812"),
                                      ("Bolivia", "2018-02-15", "2018-02-15T00:00:00"))]  # fmt: skip
    (v11 / "Sen1Floods11_Metadata.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return root


# ---- PASTIS: metadata.geojson, DATA_S2, ANNOTATIONS (and PASTIS-R's DATA_S1A) ------------------

PASTIS_PATCHES = {10000: (1, 5), 10001: (2, 4), 10002: (3, 7), 10003: (4, 3), 10004: (5, 6)}  # id: (fold, T)


def write_pastis(root: Path, seed: int = 0, with_s1: bool = True) -> Path:
    """Five 128 px patches, one per fold, T = 3-7 dates; S2 (T, 10, 128, 128) int16 with value
    100 * (t + 1) + band in the top-left pixel; TARGET (3, 128, 128) with classes 0-18 and void (19)."""
    rng = np.random.default_rng(seed)
    for d in ("DATA_S2", "ANNOTATIONS") + (("DATA_S1A",) if with_s1 else ()):
        (root / d).mkdir(parents=True, exist_ok=True)
    features = []
    for k, (pid, (fold, steps)) in enumerate(PASTIS_PATCHES.items()):
        dates = [int((dt.date(2018, 9, 24) + dt.timedelta(days=20 * t)).strftime("%Y%m%d")) for t in range(steps)]
        s2 = rng.integers(0, 3000, (steps, 10, 128, 128)).astype(np.int16)
        s2[:, :, 0, 0] = 100 * (np.arange(steps)[:, None] + 1) + np.arange(10)[None]
        np.save(root / "DATA_S2" / f"S2_{pid}.npy", s2)
        target = np.zeros((3, 128, 128), np.int16)
        target[0] = (np.arange(128)[None, :] // 8 + k) % 19
        target[0, :4] = 19  # void along the top
        np.save(root / "ANNOTATIONS" / f"TARGET_{pid}.npy", target)
        props = {"ID_PATCH": pid, "Fold": fold, "N_Parcel": 3, "Parcel_Cover": 0.5, "TILE": "t30uxv",
                 "dates-S2": {str(t): d for t, d in enumerate(dates)}}  # fmt: skip
        if with_s1:
            s1_dates = dates[:2]
            s1 = (-10.0 * np.ones((len(s1_dates), 3, 128, 128))).astype(np.float32)
            np.save(root / "DATA_S1A" / f"S1A_{pid}.npy", s1)
            props["dates-S1A"] = json.dumps({str(t): d for t, d in enumerate(s1_dates)})  # a JSON string, as some copies have
        x0, y0 = 600000.0 + 1280 * k, 6800000.0
        ring = [[x0, y0], [x0 + 1280, y0], [x0 + 1280, y0 + 1280], [x0, y0 + 1280], [x0, y0]]
        features.append({"type": "Feature", "properties": props, "geometry": {"type": "Polygon", "coordinates": [ring]}})
    doc = {"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::2154"}},
           "features": features[::-1]}  # fmt: skip
    (root / "metadata.geojson").write_text(json.dumps(doc))
    return root


# ---- MADOS: Scene_<n>/{10,20,60}/..._L2R_rhorc_<nm>_<crop>.tif, _cl_ masks, splits --------------

#: (wavelength nm, resolution m) of each band file, as Sentinel-2A and 2B name them.
MADOS_S2A = [(443, 60), (492, 10), (560, 10), (665, 10), (704, 20), (740, 20), (783, 20), (833, 10), (865, 20), (1614, 20), (2202, 20)]
MADOS_S2B = [(442, 60), (492, 10), (559, 10), (665, 10), (704, 20), (739, 20), (780, 20), (833, 10), (864, 20), (1610, 20), (2186, 20)]
MADOS_CROPS = {"train": ["Scene_0_1", "Scene_0_2", "Scene_1_1"], "val": ["Scene_1_3"], "test": ["Scene_0_3"]}


def write_mados(root: Path, seed: int = 0) -> Path:
    """Scene_0 (Sentinel-2A wavelengths, georeferenced, ACOLITE file prefix with a date) and Scene_1
    (2B wavelengths, no georeferencing). Band files hold 0.001 * (band position + 1) + 0.01 * crop,
    NaN in the top-left pixel; masks 0 (not annotated) and 1-15."""
    rng = np.random.default_rng(seed)
    for split_crops in MADOS_CROPS.values():
        for crop in split_crops:
            scene, number = crop.rsplit("_", 1)
            georef = scene == "Scene_0"
            bands = MADOS_S2A if georef else MADOS_S2B
            prefix = "S2A_MSI_2020_07_24_09_41_33_T34SEJ" if georef else scene
            for i, (wavelength, res) in enumerate(bands):
                side = 240 * 10 // res
                values = np.full((side, side), 0.001 * (i + 1) + 0.01 * int(number), np.float32)
                values[0, 0] = np.nan
                transform = Affine(res, 0.0, 500000.0 + 2400 * int(number), 0.0, -res, 4200000.0)
                _tif(root / scene / str(res) / f"{prefix}_L2R_rhorc_{wavelength}_{number}.tif", values,
                     crs="EPSG:32634" if georef else None, transform=transform if georef else None)  # fmt: skip
            mask = rng.integers(0, 16, (240, 240)).astype(np.uint8)
            mask[:10] = 0
            transform = Affine(10.0, 0.0, 500000.0 + 2400 * int(number), 0.0, -10.0, 4200000.0)
            _tif(root / scene / "10" / f"{scene}_L2R_cl_{number}.tif", mask,
                 crs="EPSG:32634" if georef else None, transform=transform if georef else None)  # fmt: skip
            _tif(root / scene / "10" / f"{scene}_L2R_conf_{number}.tif", (mask > 0).astype(np.uint8),
                 crs="EPSG:32634" if georef else None, transform=transform if georef else None)  # fmt: skip
    (root / "splits").mkdir(parents=True, exist_ok=True)
    for split, crops in MADOS_CROPS.items():
        (root / "splits" / f"{split}_X.txt").write_text("\n".join(crops) + "\n")
    return root


# ---- GEO-Bench: <benchmark>/<task>/<sample>.hdf5 with pickled attributes -------------------------

S2_13 = ["01 - Coastal aerosol", "02 - Blue", "03 - Green", "04 - Red", "05 - Vegetation Red Edge",
         "06 - Vegetation Red Edge", "07 - Vegetation Red Edge", "08 - NIR", "08A - Vegetation Red Edge",
         "09 - Water vapour", "10 - SWIR - Cirrus", "11 - SWIR", "12 - SWIR"]  # fmt: skip
EUROSAT_CLASSES = ["Annual Crop", "Forest", "Herbaceous Vegetation", "Highway", "Industrial", "Pasture",
                   "Permanent Crop", "Residential", "River", "SeaLake"]  # fmt: skip
CASHEW_CLASSES = ["no data", "well-managed plantation", "poorly-managed plantation", "non-plantation",
                  "residential", "background", "uncertain"]  # fmt: skip


@contextlib.contextmanager
def geobench_classes():
    """Stand-ins for geobench's pickled classes, importable under their released module names while
    pickling (the files must name geobench.dataset.Sentinel2 etc., as the release's pickles do)."""
    modules = {name: types.ModuleType(name) for name in ("geobench", "geobench.dataset", "geobench.label", "geobench.task")}

    def make(module: str, name: str, base=object):
        cls = type(name, (base,), {"__module__": module})
        setattr(modules[module], name, cls)
        return cls

    band_info = make("geobench.dataset", "BandInfo")
    classes = {
        "SpectralBand": make("geobench.dataset", "SpectralBand", band_info),
        "CloudProbability": make("geobench.dataset", "CloudProbability", band_info),
        "SegmentationClasses": make("geobench.dataset", "SegmentationClasses", band_info),
        "Classification": make("geobench.label", "Classification"),
        "TaskSpecifications": make("geobench.task", "TaskSpecifications"),
    }
    classes["Sentinel2"] = make("geobench.dataset", "Sentinel2", classes["SpectralBand"])
    saved = {k: sys.modules.get(k) for k in modules}
    sys.modules.update(modules)
    try:
        yield types.SimpleNamespace(**classes)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def _obj(cls, **attrs):
    obj = cls.__new__(cls)
    obj.__dict__.update(attrs)
    return obj


def _write_geobench_sample(path: Path, bands: dict[str, np.ndarray], attrs: dict, label) -> None:
    with h5py.File(path, "w") as f:
        for name, data in bands.items():
            f.create_dataset(name, data=data)
        if isinstance(label, np.ndarray):
            f.create_dataset("label", data=label)
        payload = {"bands_order": list(bands) + (["label"] if isinstance(label, np.ndarray) else []), **attrs}
        if not isinstance(label, np.ndarray):
            payload["label"] = label
        f.attrs["pickle"] = str(pickle.dumps(payload))


def write_geobench(root: Path, seed: int = 0) -> Path:
    """classification_v1.0/m-eurosat (13 bands as released, 16 px, 12 samples, classes 0-3) and
    segmentation_v1.0/m-cashew-plant (12 bands + cloud probability, 2 dates per sample, label band).
    Band `k` (file order) of a sample holds 100 * (k + 1) + 1000 * class; m-eurosat is georeferenced."""
    rng = np.random.default_rng(seed)
    with geobench_classes() as gb:
        task = root / "classification_v1.0" / "m-eurosat"
        task.mkdir(parents=True, exist_ok=True)
        infos = [_obj(gb.Sentinel2, name=n, alt_names=(), spatial_resolution=10, wavelength=None) for n in S2_13]
        partition = {"train": [], "valid": [], "test": []}
        for i in range(12):
            label = i % 4
            name = f"id_{i:04d}"
            bands = {n: (100 * (k + 1) + 1000 * label + rng.integers(0, 20, (16, 16))).astype(np.int16) for k, n in enumerate(S2_13)}
            crs, transform = CRS.from_epsg(32631), Affine(10.0, 0.0, 400000.0 + 160 * i, 0.0, -10.0, 5000000.0)
            attrs = {n: {"date": None, "date_id": None, "spatial_resolution": 10, "band_info": info, "meta_info": None,
                         "transform": transform, "crs": crs} for n, info in zip(S2_13, infos, strict=True)}  # fmt: skip
            _write_geobench_sample(task / f"{name}.hdf5", bands, attrs, label)
            partition["train" if i < 6 else "valid" if i < 8 else "test"].append(name)
        (task / "default_partition.json").write_text(json.dumps(partition))
        specs = _obj(gb.TaskSpecifications, dataset_name="m-eurosat", bands_info=infos, spatial_resolution=10, patch_size=(16, 16),
                     n_time_steps=1, label_type=_obj(gb.Classification, n_classes=10, _class_names=EUROSAT_CLASSES))  # fmt: skip
        (task / "task_specs.pkl").write_bytes(pickle.dumps(specs, protocol=4))

        task = root / "segmentation_v1.0" / "m-cashew-plant"
        task.mkdir(parents=True, exist_ok=True)
        names = [n for n in S2_13 if not n.startswith("10 ")] + ["Cloud Probability"]
        infos = [_obj(gb.Sentinel2, name=n, alt_names=(), spatial_resolution=0.5, wavelength=None) for n in names[:-1]]
        infos.append(_obj(gb.CloudProbability, name="Cloud Probability", alt_names=("CLD",), spatial_resolution=0.5))
        label_type = _obj(gb.SegmentationClasses, name="label", spatial_resolution=0.5, n_classes=7, _class_names=CASHEW_CLASSES)
        partition = {"train": [], "valid": [], "test": []}
        for i in range(6):
            name = f"sample_{i}"
            label = (np.arange(16)[:, None] // 4 + np.arange(16)[None, :] // 8 + i) % 7
            bands, attrs = {}, {}
            for date in (dt.date(2019, 11, 5), dt.date(2019, 12, 10)):
                for k, (n, info) in enumerate(zip(names, infos, strict=True)):
                    key = f"{n}_{date:%Y-%m-%d}"
                    bands[key] = np.full((16, 16), 100 * (k + 1) + (date.month % 11), np.float32)
                    attrs[key] = {"date": date, "date_id": date, "spatial_resolution": 0.5, "band_info": info,
                                  "meta_info": None, "transform": None, "crs": None}  # fmt: skip
            attrs["label"] = {"date": None, "date_id": None, "spatial_resolution": 0.5, "band_info": label_type,
                              "meta_info": None, "transform": None, "crs": None}  # fmt: skip
            _write_geobench_sample(task / f"{name}.hdf5", bands, attrs, label.astype(np.int64))
            partition[("train", "train", "train", "train", "valid", "test")[i]].append(name)
        (task / "default_partition.json").write_text(json.dumps(partition))
        specs = _obj(gb.TaskSpecifications, dataset_name="m-cashew-plant", bands_info=infos, spatial_resolution=0.5,
                     patch_size=(16, 16), n_time_steps=1, label_type=label_type)  # fmt: skip
        (task / "task_specs.pkl").write_bytes(pickle.dumps(specs, protocol=4))
    return root


# ---- CDL: <year>_30m_cdls.tif (EPSG:5070) + Sentinel-2 chips in UTM ---------------------------

CDL_CHIPS = {"chip_a": "train", "chip_b": "train", "chip_c": "test"}
CDL_CHIP_PX = 30


def cdl_codes(rows: int, cols: int) -> np.ndarray:
    """The fixture's CDL codes: 3 x 3 blocks of 1 (corn), 5 (soybeans), 24 (winter wheat), 176 (grass),
    0 (background)."""
    palette = np.array([1, 5, 24, 176, 0], np.uint8)
    r, c = np.meshgrid(np.arange(rows) // 3, np.arange(cols) // 3, indexing="ij")
    return palette[(r * 7 + c * 3) % len(palette)]


def write_cdl(root: Path, seed: int = 0) -> Path:
    """A CDL raster in Albers (EPSG:5070, 30 m) over three 30 px Sentinel-2 L2A chips in UTM 15N
    (EPSG:32615, 10 m, 12 bands), with imagery/labels.csv giving their splits."""
    rng = np.random.default_rng(seed)
    origins = {name: (500000.0 + 1000.0 * i, 4650000.0) for i, name in enumerate(CDL_CHIPS)}
    corners = [(x + dx, y - dy) for x, y in origins.values() for dx in (0, 300) for dy in (0, 300)]
    xs, ys = transform("EPSG:32615", "EPSG:5070", *zip(*corners, strict=True))
    left, top = np.floor(min(xs) / 30) * 30 - 300, np.ceil(max(ys) / 30) * 30 + 300
    cols, rows = int((max(xs) + 300 - left) // 30) + 1, int((top - (min(ys) - 300)) // 30) + 1
    _tif(root / "2021_30m_cdls.tif", cdl_codes(rows, cols), crs="EPSG:5070", transform=Affine(30.0, 0.0, left, 0.0, -30.0, top))
    for name, (x, y) in origins.items():
        chip = (500 + 100 * np.arange(12)[:, None, None] + rng.integers(0, 50, (12, CDL_CHIP_PX, CDL_CHIP_PX))).astype(np.uint16)
        _tif(root / "imagery" / name / "sentinel2_l2a" / "2021-07-01.tif", chip, crs="EPSG:32615",
             transform=Affine(10.0, 0.0, x, 0.0, -10.0, y))  # fmt: skip
    (root / "imagery" / "labels.csv").write_text("sample_id,split\n" + "".join(f"{k},{v}\n" for k, v in CDL_CHIPS.items()))
    return root


WRITERS = {
    "so2sat_lcz42": write_so2sat, "sen1floods11": write_sen1floods11, "pastis": write_pastis,
    "mados": write_mados, "geobench": write_geobench, "cdl": write_cdl,
}  # fmt: skip


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmark-fixtures")
    for folder, write in WRITERS.items():
        print(write(out / folder))
