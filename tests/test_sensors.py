"""The sensor registry: the 18 sensors of the specification as data, and user sensors from YAML."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spacenit.cli import main
from spacenit.data.format import load_dataset_info
from spacenit.sensors import (
    BUILTIN_SENSORS,
    REGISTRY,
    SENTINEL2_L2A,
    SensorRegistry,
    SensorSpec,
    SensorSpecError,
)
from tests.rasters import write_tif

# Section 3.1 of the specification: sensor -> (bands, groups, spatial, temporal).
TABLE = {
    "sentinel2_l2a": (12, 3, True, True),
    "sentinel1": (2, 1, True, True),
    "landsat": (11, 2, True, True),
    "naip": (4, 1, True, False),
    "era5": (6, 1, False, True),
    "worldcover": (1, 1, True, False),
    "srtm": (1, 1, True, False),
    "openstreetmap_raster": (30, 1, True, False),
    "cdl": (1, 1, True, False),
    "worldcereal": (8, 1, True, False),
    "worldpop": (1, 1, True, False),
    "wri_canopy_height": (1, 1, True, False),
    "gse": (64, 1, True, False),
}


def test_the_specification_table_and_five_variants() -> None:
    assert len(BUILTIN_SENSORS) == 18 and all(spec.name in REGISTRY for spec in BUILTIN_SENSORS)
    for name, (bands, groups, spatial, temporal) in TABLE.items():
        spec = REGISTRY.get(name)
        assert (spec.num_bands, len(spec.groups), spec.spatial, spec.temporal) == (bands, groups, spatial, temporal), name
    assert {g.name: g.gsd_m for g in SENTINEL2_L2A.groups} == {"10m": 10.0, "20m": 20.0, "60m": 60.0}
    assert REGISTRY.get("sentinel2_l1c").num_bands == 13 and REGISTRY.get("sentinel1").bands == ("VV", "VH")
    assert {s.name for s in BUILTIN_SENSORS if s.categorical} == {"worldcover", "cdl", "worldcereal", "openstreetmap_raster", "eurocrops"}


def test_every_builtin_is_consistent_and_round_trips() -> None:
    for spec in BUILTIN_SENSORS:
        assert sorted(b for g in spec.groups for b in g.bands) == sorted(spec.bands)
        assert set(spec.wavelengths_nm) <= set(spec.bands)
        low, high = spec.value_range
        assert low < high and spec.min_gsd_m > 0 and spec.description
        assert SensorSpec.from_dict(spec.to_dict()) == spec
    assert all(w > 400 for w in SENTINEL2_L2A.wavelengths_nm.values()) and len(SENTINEL2_L2A.wavelengths_nm) == 12


def test_bands_are_selected_by_name() -> None:
    array = np.arange(12, dtype=np.float32).reshape(1, 12, 1, 1) * np.ones((1, 12, 2, 2), np.float32)
    picked = SENTINEL2_L2A.select(array, ["B08", "B04"])
    assert picked[0, :, 0, 0].tolist() == [7.0, 3.0]  # B08 is 8th, B04 4th in storage order
    with pytest.raises(KeyError, match=r"no band\(s\) \['B10'\]"):
        SENTINEL2_L2A.select(array, ["B10"])


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("name: x\ngroups: [{name: a, bands: [b1], gsd_m: 3}]\ncolour: red\n", r"unknown field\(s\) \['colour'\]"),
        ("name: x\nbands: [b1]\n", r"missing the field\(s\) \['groups'\]"),
        ("name: x\nbands: [b1, b1]\ngroups: [{name: a, bands: [b1, b1], gsd_m: 3}]\n", "lists a band twice"),
        ("name: x\nbands: [b1, b2]\ngroups: [{name: a, bands: [b1], gsd_m: 3}]\n", "cover every band exactly once"),
        ("name: x\ngroups: [{name: a, bands: [b1], gsd_m: 0}]\n", "must be > 0 metres"),
        ("name: x\ngroups: [{name: a, bands: [b1], gsd_m: 3}]\nvalue_range: [5, 1]\n", "needs min < max"),
        ("name: x\ngroups: [{name: a, bands: [b1]}]\n", "every group needs name, bands and gsd_m"),
        ("name: sentinel1\ngroups: [{name: a, bands: [b1], gsd_m: 3}]\n", "already registered"),
        ("!!python/object/apply:os.system ['echo hacked']\n", "not valid YAML"),
    ],
)
def test_bad_sensor_yaml_names_the_file_and_the_field(tmp_path: Path, yaml_text: str, message: str) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(yaml_text)
    with pytest.raises(SensorSpecError, match=message) as error:
        SensorRegistry().load_yaml(path)
    assert str(path) in str(error.value)


def test_user_sensor_from_yaml_converts_without_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "planet.yaml").write_text(
        "sensors:\n"
        "  - name: planetscope\n"
        "    bands: [blue, green, red, nir]\n"
        "    groups: [{name: all, bands: [blue, green, red, nir], gsd_m: 3.0}]\n"
        "    wavelengths_nm: {blue: 490, green: 565, red: 665, nir: 865}\n"
        "    value_range: [0, 10000]\n"
    )
    rng = np.random.default_rng(0)
    for cls in ("field", "town"):
        write_tif(tmp_path / "in" / cls / f"{cls}.tif", rng.integers(1, 3000, (4, 16, 16), dtype=np.uint16), res=3.0)
    argv = ["convert", str(tmp_path / "in"), str(tmp_path / "ds"), "--sensor", "planetscope", "--tile-size-px", "16",
            "--gsd-m", "3", "--sensor-yaml", str(tmp_path / "planet.yaml")]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    spec = load_dataset_info(tmp_path / "ds").sensors["planetscope"]  # the dataset carries the definition
    assert spec.bands == ("blue", "green", "red", "nir") and spec.groups[0].gsd_m == 3.0
