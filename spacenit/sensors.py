"""Sensors and their bands, as data.

A `SensorSpec` says what one sensor delivers: band names (the only way code
selects bands), the spectral groups that are tokenized together, the native
ground-sample distance of each group, and whether the sensor is spatial,
temporal or categorical. The built-in table follows section 3.1 of the
SpaceNit specification; users add their own sensor from a YAML file
(`SensorRegistry.load_yaml`) without touching code.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

#: Missing value, timestep or sensor. Never a real value; never enters stats or losses.
SENTINEL = -99999.0


@dataclass(frozen=True)
class BandGroup:
    """Bands tokenized together, all at one native resolution."""

    name: str
    bands: tuple[str, ...]
    gsd_m: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "bands", tuple(self.bands))
        if not self.bands:
            raise ValueError(f"band group {self.name!r} has no bands")


@dataclass(frozen=True)
class SensorSpec:
    """One sensor: bands, spectral groups, resolution and flags."""

    name: str
    #: Band names in the order files deliver them (and the order they are stored).
    bands: tuple[str, ...]
    groups: tuple[BandGroup, ...]
    spatial: bool = True
    temporal: bool = True
    categorical: bool = False
    #: Wavelength centre per band in nanometres, where the band has one.
    wavelengths_nm: dict[str, float] = field(default_factory=dict)
    #: Plausible (min, max) of the raw values, used to sanity-check inputs.
    value_range: tuple[float, float] = (-1e9, 1e9)
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "bands", tuple(self.bands))
        object.__setattr__(self, "groups", tuple(self.groups))
        if len(set(self.bands)) != len(self.bands):
            raise ValueError(f"sensor {self.name!r} lists a band twice: {self.bands}")
        grouped = [b for g in self.groups for b in g.bands]
        if sorted(grouped) != sorted(self.bands):
            raise ValueError(
                f"sensor {self.name!r}: the groups must cover every band exactly once; "
                f"bands {self.bands}, grouped {grouped}"
            )

    @property
    def band_names(self) -> tuple[str, ...]:
        return self.bands

    @property
    def num_bands(self) -> int:
        return len(self.band_names)

    def band_index(self, bands: Iterable[str]) -> list[int]:
        """Positions of `bands` in this sensor's band order; unknown names fail loudly."""
        order = {b: i for i, b in enumerate(self.band_names)}
        missing = [b for b in bands if b not in order]
        if missing:
            raise KeyError(
                f"sensor {self.name!r} has no band(s) {missing}; its bands are {list(self.band_names)}"
            )
        return [order[b] for b in bands]

    @property
    def min_gsd_m(self) -> float:
        return min(g.gsd_m for g in self.groups)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bands"] = list(self.bands)
        d["groups"] = [{"name": g.name, "bands": list(g.bands), "gsd_m": g.gsd_m} for g in self.groups]
        d["value_range"] = list(self.value_range)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SensorSpec:
        try:
            groups = tuple(BandGroup(g["name"], tuple(g["bands"]), float(g["gsd_m"])) for g in d["groups"])
            return cls(
                name=d["name"],
                bands=tuple(d.get("bands") or [b for g in groups for b in g.bands]),
                groups=groups,
                spatial=bool(d.get("spatial", True)),
                temporal=bool(d.get("temporal", True)),
                categorical=bool(d.get("categorical", False)),
                wavelengths_nm={k: float(v) for k, v in (d.get("wavelengths_nm") or {}).items()},
                value_range=tuple(d.get("value_range", (-1e9, 1e9))),
                description=d.get("description", ""),
            )
        except KeyError as e:
            raise ValueError(f"sensor definition is missing the field {e}: {d!r}") from None


def _s2_wavelengths() -> dict[str, float]:
    return {
        "B01": 443, "B02": 490, "B03": 560, "B04": 665, "B05": 705, "B06": 740, "B07": 783,
        "B08": 842, "B8A": 865, "B09": 945, "B10": 1375, "B11": 1610, "B12": 2190,
    }  # fmt: skip


SENTINEL2_L2A = SensorSpec(
    name="sentinel2_l2a",
    bands=("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"),
    groups=(
        BandGroup("10m", ("B02", "B03", "B04", "B08"), 10.0),
        BandGroup("20m", ("B05", "B06", "B07", "B8A", "B11", "B12"), 20.0),
        BandGroup("60m", ("B01", "B09"), 60.0),
    ),
    wavelengths_nm={k: v for k, v in _s2_wavelengths().items() if k != "B10"},
    value_range=(0, 20000),
    description="Sentinel-2 MSI Level-2A surface reflectance x 10000 (12 bands; B10 dropped).",
)

SENTINEL2_L1C = SensorSpec(
    name="sentinel2_l1c",
    bands=("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"),
    groups=(
        BandGroup("10m", ("B02", "B03", "B04", "B08"), 10.0),
        BandGroup("20m", ("B05", "B06", "B07", "B8A", "B11", "B12"), 20.0),
        BandGroup("60m", ("B01", "B09", "B10"), 60.0),
    ),
    wavelengths_nm=_s2_wavelengths(),
    value_range=(0, 28000),
    description="Sentinel-2 MSI Level-1C top-of-atmosphere reflectance x 10000 (13 bands).",
)

SENTINEL1 = SensorSpec(
    name="sentinel1",
    bands=("VV", "VH"),
    groups=(BandGroup("vv_vh", ("VV", "VH"), 10.0),),
    value_range=(-60, 40),
    description="Sentinel-1 GRD backscatter in dB, VV and VH.",
)

SRTM = SensorSpec(
    name="srtm",
    bands=("elevation",),
    groups=(BandGroup("elevation", ("elevation",), 30.0),),
    temporal=False,
    value_range=(-500, 9000),
    description="SRTM digital elevation model, metres.",
)

LANDSAT = SensorSpec(
    name="landsat",
    bands=("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11"),
    groups=(
        BandGroup("vnir", ("B1", "B2", "B3", "B4", "B5", "B8"), 30.0),
        BandGroup("swir_tir", ("B6", "B7", "B9", "B10", "B11"), 30.0),
    ),
    wavelengths_nm={"B1": 443, "B2": 482, "B3": 562, "B4": 655, "B5": 865, "B6": 1609,
                    "B7": 2201, "B8": 590, "B9": 1373, "B10": 10895, "B11": 12005},  # fmt: skip
    value_range=(-2000, 65535),
    description="Landsat 8/9 OLI/TIRS, 11 bands.",
)

BUILTIN_SENSORS: tuple[SensorSpec, ...] = (SENTINEL2_L2A, SENTINEL2_L1C, SENTINEL1, SRTM, LANDSAT)


class SensorRegistry:
    """Name -> SensorSpec, with the built-ins preloaded and user sensors from YAML."""

    def __init__(self, sensors: Iterable[SensorSpec] = BUILTIN_SENSORS) -> None:
        self._sensors: dict[str, SensorSpec] = {}
        for s in sensors:
            self.register(s)

    def register(self, spec: SensorSpec, *, replace: bool = False) -> None:
        if spec.name in self._sensors and not replace:
            raise ValueError(f"sensor {spec.name!r} is already registered")
        self._sensors[spec.name] = spec

    def get(self, name: str) -> SensorSpec:
        try:
            return self._sensors[name]
        except KeyError:
            raise KeyError(
                f"unknown sensor {name!r}; known sensors: {sorted(self._sensors)}. "
                "Add your own with a YAML file (see docs/sensors.md)."
            ) from None

    __getitem__ = get

    def __contains__(self, name: object) -> bool:
        return name in self._sensors

    def __iter__(self) -> Iterator[SensorSpec]:
        return iter(self._sensors.values())

    def names(self) -> list[str]:
        return sorted(self._sensors)

    def load_yaml(self, path: str | Path) -> list[SensorSpec]:
        """Register every sensor in a YAML file (a mapping or a list under `sensors:`)."""
        text = Path(path).read_text()
        doc = yaml.safe_load(text)
        entries = doc.get("sensors", [doc]) if isinstance(doc, dict) else doc
        specs = [SensorSpec.from_dict(e) for e in entries]
        for s in specs:
            self.register(s)
        return specs


#: The process-wide default registry.
REGISTRY = SensorRegistry()


def get_sensor(name: str) -> SensorSpec:
    return REGISTRY.get(name)
