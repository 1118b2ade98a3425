"""GEO-Bench (Lacoste et al., NeurIPS 2023) tasks as SpaceNit datasets, read without the geobench package.

A task folder of the release (`classification_v1.0/m-eurosat/`, `segmentation_v1.0/m-cashew-plant/`, ...):

    <sample>.hdf5            one file per sample: one HDF5 dataset per band, named after the band
                             ("02 - Blue"; "02 - Blue_2019-11-05" for a dated band of a time series),
                             a `label` dataset (H, W) for segmentation tasks; the file attribute
                             `pickle` is str(pickle.dumps(...)) of a dict: `bands_order`, `label`
                             (the class of a classification sample), and per band its date, CRS,
                             transform and band info
    default_partition.json   {"train": [...], "valid": [...], "test": [...]} sample names
    task_specs.pkl           the task: band infos, label type with class names (a pickle)

The pickles are read by a restricted unpickler: geobench's classes and the georeferencing
ones (`affine.Affine`, `rasterio.crs.CRS`) become inert records of their pickled state,
whatever library versions wrote them; dates and plain numpy arrays are rebuilt; anything
else is refused, so a crafted file cannot run code.

Bands are Sentinel-2 ("01 - Coastal aerosol" ... "12 - SWIR", "08A - ..."): `sentinel2_l1c` or
`sentinel2_l2a` by the task's processing level (`S2_LEVELS`; others by whether B10 is there), all on one 10 m grid (the tasks' Sentinel-2
pixels are 10 m; some band infos say otherwise, m-cashew-plant's 0.5 m is its labels' source).
Two released tasks store wrong band names over correct pixels (geo-bench issues 28, 29):
m-eurosat's channels are EuroSAT's B01-B08, B09, B10, B11, B12, B8A and m-brick-kiln's
B01-B05, B07, B8A, B08, B11, B12 then true-colour R, G, B; both are mapped by position.
So2Sat's Sentinel-1 channels go to `so2sat_sentinel1`; cloud-probability bands are left out.
Classification samples carry their class name; segmentation samples their label raster.
"""

from __future__ import annotations

import ast
import datetime as dt
import io
import json
import pickle
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from rasterio.crs import CRS
from rasterio.errors import CRSError

from spacenit.conversion.so2sat import SO2SAT_SENTINEL1
from spacenit.conversion.writer import write_dataset
from spacenit.data.format import DATASET_JSON, DatasetFormatError, LabelRasterSpec, SampleRecord
from spacenit.data.shards import array_key
from spacenit.sensors import SENTINEL, SENTINEL2_L1C, SENTINEL2_L2A, SensorSpec, grid_name

PARTITION = "default_partition.json"
TASK_SPECS = "task_specs.pkl"
SPLITS = {"train": "train", "valid": "val", "test": "test"}
#: Released band name (its number prefix) -> Sentinel-2 band.
S2_NAMES = {
    "01": "B01", "02": "B02", "03": "B03", "04": "B04", "05": "B05", "06": "B06", "07": "B07", "08": "B08",
    "08A": "B8A", "09": "B09", "10": "B10", "11": "B11", "12": "B12",
}  # fmt: skip
#: Tasks whose stored band names do not match their pixels: stored number -> the band the pixels are
#: (None: not a Sentinel-2 reflectance band, left out).
MISLABELLED = {
    "m-eurosat": {"08A": "B09", "09": "B10", "10": "B11", "11": "B12", "12": "B8A"},
    "m-brick-kiln": {"06": "B07", "07": "B8A", "08": "B08", "08A": "B11", "09": "B12", "10": None, "11": None, "12": None},
}
#: The processing level of the tasks' Sentinel-2 pixels; other tasks: L1C when they have B10, else L2A.
S2_LEVELS = {"m-eurosat": SENTINEL2_L1C, "m-brick-kiln": SENTINEL2_L1C, "m-so2sat": SENTINEL2_L1C,
             "m-bigearthnet": SENTINEL2_L2A, "m-cashew-plant": SENTINEL2_L2A, "m-SA-crop-type": SENTINEL2_L2A}  # fmt: skip
SO2SAT_S1_NAMES = {
    "01 - VH.Real": "VH_real", "02 - VH.Imaginary": "VH_imag", "03 - VV.Real": "VV_real", "04 - VV.Imaginary": "VV_imag",
    "05 - VH.LEE Filtered": "VH_lee_intensity", "06 - VV.LEE Filtered": "VV_lee_intensity",
    "07 - VH.LEE Filtered.Real": "C12_lee_real", "08 - VV.LEE Filtered.Imaginary": "C12_lee_imag",
}  # fmt: skip
SKIPPED_BANDS = ("Cloud Probability",)
#: Pixel size of the Sentinel-2 (and So2Sat Sentinel-1) bands of the tasks read here.
GSD_M = 10.0
_S2_NAME = re.compile(r"^(?P<number>\d\dA?) - ")
_DATED = re.compile(r"^(?P<name>.+)_(?P<date>\d{4}-\d{2}-\d{2})$")


class GeoBenchError(DatasetFormatError):
    """A folder that is not a GEO-Bench task as released; the message says what is missing."""


# ---- the restricted unpickler ---------------------------------------------------------------


class Record:
    """What a pickled object becomes: its constructor arguments and state, nothing else."""

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj.args, obj.state = args, None
        obj.__dict__.update(kwargs)
        return obj

    def __init__(self, *args, **kwargs) -> None:
        pass  # everything was kept by __new__

    def __setstate__(self, state) -> None:
        if isinstance(state, tuple) and len(state) == 2 and all(isinstance(s, dict | None) for s in state):
            state = {**(state[0] or {}), **(state[1] or {})}  # (dict state, slots state)
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.state = state  # e.g. a CRS pickled as its WKT string


def _no_objects(*args) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise GeoBenchError("the pickle holds an object array; GEO-Bench files hold plain numbers")
    return dtype


def _array(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise GeoBenchError(f"the pickle holds an array subclass {subtype!r}")
    return np.ndarray.__new__(np.ndarray, shape, _no_objects(dtype))


def _scalar(dtype, data):
    return np.frombuffer(data, dtype=_no_objects(dtype))[0] if isinstance(data, bytes) else np.array(data, dtype=_no_objects(dtype))[()]


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module.split(".")[0] in ("geobench", "ccb") or (module, name) in (("affine", "Affine"), ("rasterio.crs", "CRS")):
            return Record
        allowed = {
            ("datetime", "date"): dt.date, ("datetime", "datetime"): dt.datetime, ("datetime", "timedelta"): dt.timedelta,
            ("datetime", "timezone"): dt.timezone, ("collections", "OrderedDict"): dict,
            ("numpy", "dtype"): _no_objects, ("numpy", "ndarray"): np.ndarray,
            ("numpy.core.multiarray", "_reconstruct"): _array, ("numpy._core.multiarray", "_reconstruct"): _array,
            ("numpy.core.multiarray", "scalar"): _scalar, ("numpy._core.multiarray", "scalar"): _scalar,
        }  # fmt: skip
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise GeoBenchError(f"refusing to unpickle {module}.{name}: it is not part of GEO-Bench's file format")


def safe_loads(data: bytes):
    """Unpickle GEO-Bench metadata: geobench classes as `Record`s, only known harmless types."""
    return _Unpickler(io.BytesIO(data)).load()


def sample_attributes(f: h5py.File, path: Path) -> dict:
    """The dict pickled in a sample file's `pickle` attribute."""
    if "pickle" not in f.attrs:
        raise GeoBenchError(f"{path} has no 'pickle' attribute; it is not a GEO-Bench sample")
    text = f.attrs["pickle"]
    text = text.decode() if isinstance(text, bytes) else str(text)
    try:
        payload = ast.literal_eval(text)  # str(bytes) -> bytes, without evaluating code
        return safe_loads(payload)
    except (ValueError, SyntaxError, pickle.UnpicklingError, EOFError) as e:
        raise GeoBenchError(f"{path}: its 'pickle' attribute cannot be read ({e})") from None


# ---- the task ------------------------------------------------------------------------------


@dataclass
class TaskInfo:
    name: str
    kind: str  # "classification" or "segmentation"
    class_names: list[str] = field(default_factory=list)


def task_info(task_dir: Path, first_sample: Path) -> TaskInfo:
    """The task's kind (segmentation when its samples have a `label` band) and class names from
    task_specs.pkl ("0".."K-1" when it names none)."""
    path = task_dir / TASK_SPECS
    if not path.is_file():
        raise GeoBenchError(f"{task_dir} has no {TASK_SPECS}: not a GEO-Bench task folder")
    try:
        specs = safe_loads(path.read_bytes())
    except (pickle.UnpicklingError, EOFError) as e:
        raise GeoBenchError(f"{path} cannot be read ({e})") from None
    label_type = getattr(specs, "label_type", None)
    if label_type is None:
        raise GeoBenchError(f"{path} names no label type")
    with h5py.File(first_sample, "r") as f:
        kind = "segmentation" if "label" in f else "classification"
    n = getattr(label_type, "n_classes", None)
    names = getattr(label_type, "_class_names", None) or getattr(label_type, "class_name", None)
    if isinstance(names, list | tuple) and names:
        return TaskInfo(task_dir.name, kind, [str(c) for c in names])
    return TaskInfo(task_dir.name, kind, [str(i) for i in range(int(n))] if n else [])


@dataclass(frozen=True)
class BandPlan:
    """Where each stored band goes: (sensor, band) or None (left out)."""

    targets: dict[str, tuple[str, str] | None]
    sensors: dict[str, SensorSpec]


def band_plan(task: str, names: list[str], path: Path) -> BandPlan:
    """Map the stored band names (undated) of `task` to SpaceNit sensors and bands."""
    fixes = MISLABELLED.get(task, {})
    targets: dict[str, tuple[str, str] | None] = {}
    for name in names:
        if name in SKIPPED_BANDS:
            targets[name] = None
        elif name in SO2SAT_S1_NAMES:
            targets[name] = (SO2SAT_SENTINEL1.name, SO2SAT_S1_NAMES[name])
        elif (m := _S2_NAME.match(name)) and m["number"] in S2_NAMES:
            band = fixes.get(m["number"], S2_NAMES[m["number"]])
            targets[name] = ("s2", band) if band else None
        else:
            raise GeoBenchError(f"{path}: band {name!r} is neither Sentinel-2 nor So2Sat Sentinel-1; "
                                "this reader takes the Sentinel-2 GEO-Bench tasks")  # fmt: skip
    s2 = S2_LEVELS.get(task) or (SENTINEL2_L1C if any(t == ("s2", "B10") for t in targets.values()) else SENTINEL2_L2A)
    targets = {k: ((s2.name, v[1]) if v and v[0] == "s2" else v) for k, v in targets.items()}
    foreign = [k for k, v in targets.items() if v and v[0] == s2.name and v[1] not in s2.bands]
    if foreign:
        raise GeoBenchError(f"{path}: band(s) {foreign} are not {s2.name} bands ({task}'s Sentinel-2 level)")
    used = {t[0] for t in targets.values() if t}
    sensors = {s.name: s for s in (s2, SO2SAT_SENTINEL1) if s.name in used}
    return BandPlan(targets, sensors)


def read_partition(task_dir: Path) -> dict[str, str]:
    """Sample name -> split (train / val / test) from default_partition.json."""
    path = task_dir / PARTITION
    if not path.is_file():
        raise GeoBenchError(f"{task_dir} has no {PARTITION}: not a GEO-Bench task folder")
    out = {}
    for split, names in json.loads(path.read_text()).items():
        if split not in SPLITS:
            raise GeoBenchError(f"{path} has a split {split!r}; GEO-Bench partitions have {list(SPLITS)}")
        for name in names:
            if name in out:
                raise GeoBenchError(f"{path} lists sample {name!r} in {out[name]!r} and {SPLITS[split]!r}")
            out[name] = SPLITS[split]
    return out


def prepare_geobench(task_dir: str | Path, out: str | Path, *, samples_per_shard: int = 64) -> Path:
    """Write the GEO-Bench task folder `task_dir` as a dataset at `out`, unless one is there."""
    task_dir, out = Path(task_dir), Path(out)
    if (out / DATASET_JSON).is_file():
        return out
    partition = read_partition(task_dir)
    files = [task_dir / f"{name}.hdf5" for name in sorted(partition)]
    missing = [str(p) for p in files if not p.is_file()]
    if missing or not files:
        raise GeoBenchError(f"{len(missing)} sample file(s) of {PARTITION} are missing, e.g. {missing[0]}" if missing
                            else f"{task_dir / PARTITION} lists no sample")  # fmt: skip
    info = task_info(task_dir, files[0])
    plan, (height, width), steps = _layout(files[0], info)
    gsd = GSD_M
    if height != width:
        raise GeoBenchError(f"{files[0]}: bands are {height} x {width} px; SpaceNit tiles are square")
    grids = {name: spec.one_grid(gsd) for name, spec in plan.sensors.items()}
    label = LabelRasterSpec(gsd, -1.0, info.class_names) if info.kind == "segmentation" else None
    write_dataset(out, plan.sensors, grids, dict.fromkeys(plan.sensors, steps),
                  _samples(files, partition, info, plan, height, gsd, steps), tile_size_px=height, gsd_m=gsd,
                  layout="one_grid", label_raster=label, samples_per_shard=samples_per_shard)  # fmt: skip
    return out


def _split_name(descriptor: str) -> tuple[str, str]:
    """"02 - Blue_2019-11-05" -> ("02 - Blue", "2019-11-05"); undated -> (name, "")."""
    m = _DATED.match(descriptor)
    return (m["name"], m["date"]) if m else (descriptor, "")


def _band_names(f: h5py.File, attrs: dict) -> list[str]:
    order = attrs.get("bands_order") or list(f.keys())
    return [b for b in order if not b.startswith("label")]


def _layout(path: Path, info: TaskInfo) -> tuple[BandPlan, tuple[int, ...], int]:
    """The band plan, the bands' shape and the number of dates, from the first sample."""
    with h5py.File(path, "r") as f:
        descriptors = _band_names(f, sample_attributes(f, path))
        names = list(dict.fromkeys(_split_name(d)[0] for d in descriptors))
        plan = band_plan(info.name, names, path)
        kept = [d for d in descriptors if plan.targets[_split_name(d)[0]]]
        shapes = {f[d].shape for d in kept}
    if len(shapes) != 1:
        raise GeoBenchError(f"{path}: the bands have shapes {sorted(shapes)}; this reader needs them on one grid")
    return plan, next(iter(shapes)), len({_split_name(d)[1] for d in kept})


def _samples(files: list[Path], partition: dict[str, str], info: TaskInfo, plan: BandPlan, side: int, gsd: float,
             steps: int) -> Iterator[tuple[SampleRecord, dict]]:  # fmt: skip
    for path in files:
        with h5py.File(path, "r") as f:
            attrs = sample_attributes(f, path)
            descriptors = _band_names(f, attrs)
            dates = sorted({_split_name(d)[1] for d in descriptors if plan.targets.get(_split_name(d)[0])})
            if len(dates) > steps:
                raise GeoBenchError(f"{path} has {len(dates)} dates, the task's first sample {steps}")
            arrays = {array_key(name, grid_name(gsd)): np.full((steps, spec.num_bands, side, side), SENTINEL, np.float32)
                      for name, spec in plan.sensors.items()}  # fmt: skip
            crs, bounds = None, None
            for d in descriptors:
                name, date = _split_name(d)
                if name not in plan.targets:
                    raise GeoBenchError(f"{path}: band {name!r} is not in the task's first sample")
                target = plan.targets[name]
                if target is None:
                    continue
                sensor, band = target
                data = np.asarray(f[d], dtype=np.float32)
                if data.shape != (side, side):
                    raise GeoBenchError(f"{path}: band {d!r} is {data.shape}, the task's bands are {side} x {side}")
                arrays[array_key(sensor, grid_name(gsd))][dates.index(date), plan.sensors[sensor].band_index([band])[0]] = data
                crs, bounds = crs or _crs(attrs.get(d)), bounds or _bounds(attrs.get(d), side)
            record = SampleRecord(id=path.stem, shard="", row=-1, split=partition[path.stem],
                                  dates={s: dates + [""] * (steps - len(dates)) for s in plan.sensors},
                                  present={s: [True] * len(dates) + [False] * (steps - len(dates)) for s in plan.sensors})  # fmt: skip
            if crs and bounds:
                record.crs, record.bounds = crs, bounds
            if info.kind == "segmentation":
                if "label" not in f:
                    raise GeoBenchError(f"{path} has no 'label' band; samples of a segmentation task carry one")
                arrays["label_raster"] = np.asarray(f["label"], dtype=np.float32).reshape(side, side)
                record.label_raster = True
            else:
                record.label = _class_name(attrs.get("label"), info, path)
        yield record, arrays


def _class_name(label, info: TaskInfo, path: Path) -> str:
    if isinstance(label, list | tuple | np.ndarray):
        raise GeoBenchError(f"{path}: multi-label GEO-Bench tasks (m-bigearthnet) are read by the BigEarthNet task")
    if label is None:
        raise GeoBenchError(f"{path} has no label")
    index = int(label)
    if info.class_names and not 0 <= index < len(info.class_names):
        raise GeoBenchError(f"{path}: label {index} is outside the task's {len(info.class_names)} classes")
    return info.class_names[index] if info.class_names else str(index)


def _crs(band_attrs) -> str | None:
    """The CRS of a band's pickled `crs` record: its WKT (string state, or {"wkt": ...}) or its
    PROJ dict ({"data": {...}}, older rasterio)."""
    record = band_attrs.get("crs") if isinstance(band_attrs, dict) else None
    if not isinstance(record, Record):
        return None
    text = record.state if isinstance(record.state, str) else record.__dict__.get("wkt") or record.__dict__.get("_wkt")
    data = record.__dict__.get("data")
    try:
        crs = CRS.from_wkt(text) if text else CRS.from_dict(data) if isinstance(data, dict) and data else None
    except CRSError:
        return None
    return crs.to_string() if crs else None


def _bounds(band_attrs, side: int) -> tuple[float, float, float, float] | None:
    """Bounds from a band's pickled `transform` record: six coefficients as constructor arguments
    (affine 2, a namedtuple) or as attributes a..f (affine 3)."""
    record = band_attrs.get("transform") if isinstance(band_attrs, dict) else None
    if not isinstance(record, Record):
        return None
    coefficients = [record.__dict__.get(k) for k in "abcdef"]
    if any(c is None for c in coefficients):
        coefficients = list(record.args[:6])
    if len(coefficients) != 6:
        return None
    a, _, c, _, e, f = (float(v) for v in coefficients)
    xs, ys = (c, c + a * side), (f, f + e * side)
    return (min(xs), min(ys), max(xs), max(ys))
