"""So2Sat LCZ42 (Zhu et al., IEEE GRSM 2020) as a SpaceNit dataset, from its published HDF5 files.

The release (mediatum.ub.tum.de/1454690; versions 2 and 3 add `testing.h5`)
holds one file per split, `training.h5`, `validation.h5`, `testing.h5`, each with
three arrays of N co-registered 32 x 32 patches at 10 m, channels last:

- `sen1` (N, 32, 32, 8) float64, Sentinel-1: real and imaginary parts of the
  unfiltered VH and VV signals, the intensities of the Lee-filtered VH and VV
  signals, real and imaginary parts of the Lee-filtered covariance off-diagonal;
- `sen2` (N, 32, 32, 10) float64, Sentinel-2 L1C cloud-free composites (Schmitt et
  al. 2019), bands B2 B3 B4 B5 B6 B7 B8 B8A B11 B12 as reflectance (DN / 10000), the
  20 m bands upsampled to 10 m by the authors;
- `label` (N, 17) one-hot: local climate zones 1-10 (built types) and A-G (land cover).

Written as three sensors on one 32 px grid of 10 m (the data has no georeferencing):
`sentinel2_l1c` (reflectance x 10000 as the registry's L1C; B01, B09 and B10 are not
in the data and stay missing), `so2sat_sentinel1` (the 8 channels as published) and
`sentinel1` (VV and VH in dB, 10 log10 of the Lee-filtered intensities, so models
trained on GRD backscatter read them). Splits: training -> train, validation -> val,
testing -> test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from spacenit.conversion.writer import write_dataset
from spacenit.data.format import DATASET_JSON, DatasetFormatError, SampleRecord
from spacenit.data.shards import array_key
from spacenit.sensors import SENTINEL, SENTINEL1, SENTINEL2_L1C, BandGroup, SensorSpec

FILES = {"training.h5": "train", "validation.h5": "val", "testing.h5": "test"}
PATCH_PX = 32
GSD_M = 10.0
#: `sen2` channels, in file order.
SEN2_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
#: Local climate zones in the order of the one-hot `label` columns (zero-padded so they sort in order).
CLASSES = (
    "01 compact high-rise", "02 compact mid-rise", "03 compact low-rise", "04 open high-rise",
    "05 open mid-rise", "06 open low-rise", "07 lightweight low-rise", "08 large low-rise",
    "09 sparsely built", "10 heavy industry", "A dense trees", "B scattered trees", "C bush, scrub",
    "D low plants", "E bare rock or paved", "F bare soil or sand", "G water",
)  # fmt: skip

_SEN1_BANDS = ("VH_real", "VH_imag", "VV_real", "VV_imag", "VH_lee_intensity", "VV_lee_intensity",
               "C12_lee_real", "C12_lee_imag")  # fmt: skip
SO2SAT_SENTINEL1 = SensorSpec(
    name="so2sat_sentinel1",
    bands=_SEN1_BANDS,
    groups=(BandGroup("sar", _SEN1_BANDS, GSD_M),),
    temporal=False,
    value_range=(-1e6, 1e6),
    description="So2Sat LCZ42's Sentinel-1 channels: unfiltered VH/VV complex parts, Lee-filtered VH/VV "
    "intensities and covariance off-diagonal (linear units).",
)


class So2SatError(DatasetFormatError):
    """A folder or file that is not So2Sat LCZ42 as published; the message says what is missing."""


def prepare_so2sat(source: str | Path, out: str | Path, *, max_per_split: int | None = None, seed: int = 0,
                   samples_per_shard: int = 256) -> Path:  # fmt: skip
    """Write the So2Sat files in `source` as a dataset at `out`, unless one is there already.

    `max_per_split` keeps a seeded random subset of each file (the full release is 400k patches).
    """
    source, out = Path(source), Path(out)
    if (out / DATASET_JSON).is_file():
        return out
    files = [(source / name, split) for name, split in FILES.items() if (source / name).is_file()]
    if not files:
        raise So2SatError(f"{source} holds none of {list(FILES)}: not the So2Sat LCZ42 release")
    sensors = {s.name: s for s in (SENTINEL2_L1C, SENTINEL1, SO2SAT_SENTINEL1)}
    grids = {SENTINEL2_L1C.name: SENTINEL2_L1C.one_grid(GSD_M), SENTINEL1.name: SENTINEL1.native_grids(),
             SO2SAT_SENTINEL1.name: SO2SAT_SENTINEL1.native_grids()}  # fmt: skip
    write_dataset(out, sensors, grids, dict.fromkeys(sensors, 1),
                  _samples(files, max_per_split, seed), tile_size_px=PATCH_PX, gsd_m=GSD_M, layout="one_grid",
                  samples_per_shard=samples_per_shard)  # fmt: skip
    return out


def _samples(files: list[tuple[Path, str]], max_per_split: int | None, seed: int,
             block: int = 512) -> Iterator[tuple[SampleRecord, dict]]:  # fmt: skip
    s2_index = SENTINEL2_L1C.band_index(SEN2_BANDS)
    for path, split in files:
        with h5py.File(path, "r") as f:
            _check(f, path)
            n = f["label"].shape[0]
            rows = np.arange(n)
            if max_per_split is not None and max_per_split < n:
                rows = np.sort(np.random.default_rng(seed).choice(n, max_per_split, replace=False))
            for start in range(0, len(rows), block):
                chunk = rows[start : start + block]  # increasing: h5py reads them in one selection
                sen1 = np.moveaxis(f["sen1"][chunk], -1, 1).astype(np.float32)  # (B, 8, 32, 32)
                sen2 = np.moveaxis(f["sen2"][chunk], -1, 1).astype(np.float32)  # (B, 10, 32, 32)
                labels = f["label"][chunk]
                for i, row in enumerate(chunk):
                    yield _sample(path, split, int(row), sen1[i], sen2[i], labels[i], s2_index)


def _check(f: h5py.File, path: Path) -> None:
    expected = {"sen1": (PATCH_PX, PATCH_PX, 8), "sen2": (PATCH_PX, PATCH_PX, 10), "label": (len(CLASSES),)}
    for key, shape in expected.items():
        if key not in f:
            raise So2SatError(f"{path} has no {key!r} array; So2Sat files hold sen1, sen2 and label")
        if f[key].shape[1:] != shape:
            raise So2SatError(f"{path}: {key} has shape {f[key].shape}, expected (N, {', '.join(map(str, shape))})")


def _sample(path: Path, split: str, row: int, sen1: np.ndarray, sen2: np.ndarray, onehot: np.ndarray,
            s2_index: list[int]) -> tuple[SampleRecord, dict]:  # fmt: skip
    if onehot.sum() != 1 or set(np.unique(onehot)) - {0, 1}:
        raise So2SatError(f"{path} row {row}: the label is not one-hot ({onehot.tolist()})")
    s2 = np.full((1, SENTINEL2_L1C.num_bands, PATCH_PX, PATCH_PX), SENTINEL, np.float32)
    s2[0, s2_index] = sen2 * 10000.0  # reflectance -> the registry's DN (reflectance x 10000)
    intensity = sen1[[5, 4]]  # Lee-filtered VV, VH (linear power)
    with np.errstate(divide="ignore", invalid="ignore"):
        db = np.where(intensity > 0, 10.0 * np.log10(intensity), SENTINEL).astype(np.float32)
    sample_id = f"{path.stem}-{row:06d}"
    record = SampleRecord(id=sample_id, shard="", row=-1, split=split, label=CLASSES[int(onehot.argmax())],
                          dates={name: [""] for name in (SENTINEL2_L1C.name, SENTINEL1.name, SO2SAT_SENTINEL1.name)},
                          present={name: [True] for name in (SENTINEL2_L1C.name, SENTINEL1.name, SO2SAT_SENTINEL1.name)})  # fmt: skip
    arrays = {
        array_key(SENTINEL2_L1C.name, "10m"): s2,
        array_key(SENTINEL1.name, "10m"): db[None],
        array_key(SO2SAT_SENTINEL1.name, "10m"): sen1[None],
    }
    return record, arrays
