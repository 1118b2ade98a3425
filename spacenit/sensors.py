"""Sensors and their bands, as data.

A `SensorSpec` says what one sensor delivers: band names (the only way code
selects bands), the spectral groups that are tokenized together, the native
ground-sample distance of each group, and whether the sensor is spatial,
temporal or categorical. The built-in table covers the 18 sensors of section
3.1 of the SpaceNit specification (docs/sensors.md lists them); users add
their own sensor from a YAML file (`SensorRegistry.load_yaml`, or
`spacenit convert --sensor-yaml`) without touching code.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction
from pathlib import Path

import numpy as np
import yaml

#: Missing value, timestep or sensor. Never a real value; never enters stats or losses.
SENTINEL = -99999.0


class SensorSpecError(ValueError):
    """A sensor definition that is incomplete or contradicts itself; the message says which field."""


@dataclass(frozen=True)
class BandGroup:
    """Bands tokenized together, all at one native resolution."""

    name: str
    bands: tuple[str, ...]
    gsd_m: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "bands", tuple(self.bands))
        if not self.bands:
            raise SensorSpecError(f"band group {self.name!r} has no bands")
        if not self.gsd_m > 0:
            raise SensorSpecError(f"band group {self.name!r} has gsd_m={self.gsd_m}; it must be > 0 metres")


def grid_name(gsd_m: float) -> str:
    """The name of a pixel grid by its pixel size: "10m", "20m", "0.6m"."""
    return f"{gsd_m:g}m"


def metres(value: float) -> Fraction:
    """A ground distance as an exact fraction of millimetres, for whole-pixel arithmetic."""
    return Fraction(round(float(value) * 1000), 1000)


@dataclass(frozen=True)
class Grid:
    """Bands of one sensor stored on one pixel grid: every band at the same pixel size.

    A sample stores each spatial sensor as one array per grid over the sample's
    footprint (docs/format.md): Sentinel-2 L2A natively as 10m (B02 B03 B04 B08),
    20m (B05 B06 B07 B8A B11 B12) and 60m (B01 B09). Bands a file delivers at
    another resolution than the registry's are stored at the one they have
    (EuroSAT's 13 bands, all at 10 m, are one 10m grid).
    """

    name: str
    bands: tuple[str, ...]
    gsd_m: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "bands", tuple(self.bands))
        object.__setattr__(self, "gsd_m", float(self.gsd_m))
        if not self.bands or not self.gsd_m > 0:
            raise SensorSpecError(f"grid {self.name!r} needs bands and a positive gsd_m, got {self.bands}, {self.gsd_m}")

    def to_dict(self) -> dict:
        return {"name": self.name, "bands": list(self.bands), "gsd_m": self.gsd_m}

    @classmethod
    def from_dict(cls, d: dict) -> Grid:
        return cls(str(d["name"]), tuple(d["bands"]), float(d["gsd_m"]))


def grids_of(bands_gsd: dict[str, float], band_order: tuple[str, ...]) -> tuple[Grid, ...]:
    """Bands -> the grids that hold them: one per distinct pixel size, finest first, bands in `band_order`."""
    sizes = sorted(set(bands_gsd.values()))
    return tuple(Grid(grid_name(g), tuple(b for b in band_order if bands_gsd.get(b) == g), g) for g in sizes)


@dataclass(frozen=True)
class SensorSpec:
    """One sensor: bands, spectral groups, resolution and flags."""

    name: str
    #: Band names in the order files deliver them (and the order they are stored).
    bands: tuple[str, ...]
    groups: tuple[BandGroup, ...]
    #: False for sensors stored as one value per band and timestep, `(T, C)` (ERA5).
    spatial: bool = True
    #: False for static sensors (a DEM, a land-cover map): stored with T = 1.
    temporal: bool = True
    #: True when values are class codes: warped with nearest neighbour, never z-scored.
    categorical: bool = False
    #: Wavelength centre per band in nanometres, where the band has one.
    wavelengths_nm: dict[str, float] = field(default_factory=dict)
    #: Plausible (min, max) of the raw values, in the units files deliver.
    value_range: tuple[float, float] = (-1e9, 1e9)
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "bands", tuple(self.bands))
        object.__setattr__(self, "groups", tuple(self.groups))
        object.__setattr__(self, "value_range", tuple(float(v) for v in self.value_range))
        if not self.name or not self.name.replace("_", "").isalnum():
            raise SensorSpecError(f"sensor name {self.name!r} must be non-empty letters, digits and '_'")
        if not self.bands:
            raise SensorSpecError(f"sensor {self.name!r} has no bands")
        if len(set(self.bands)) != len(self.bands):
            raise SensorSpecError(f"sensor {self.name!r} lists a band twice: {self.bands}")
        grouped = [b for g in self.groups for b in g.bands]
        if sorted(grouped) != sorted(self.bands):
            raise SensorSpecError(
                f"sensor {self.name!r}: the groups must cover every band exactly once; "
                f"bands {self.bands}, grouped {grouped}"
            )
        unknown = sorted(set(self.wavelengths_nm) - set(self.bands))
        if unknown:
            raise SensorSpecError(f"sensor {self.name!r} gives wavelengths for unknown bands {unknown}")
        low, high = self.value_range
        if not low < high:
            raise SensorSpecError(f"sensor {self.name!r} has value_range {self.value_range}; it needs min < max")

    @property
    def band_names(self) -> tuple[str, ...]:
        return self.bands

    @property
    def num_bands(self) -> int:
        return len(self.band_names)

    def band_index(self, bands: Iterable[str]) -> list[int]:
        """Positions of `bands` in this sensor's band order; unknown names fail loudly."""
        order = {b: i for i, b in enumerate(self.band_names)}
        bands = list(bands)
        missing = [b for b in bands if b not in order]
        if missing:
            raise KeyError(
                f"sensor {self.name!r} has no band(s) {missing}; its bands are {list(self.band_names)}"
            )
        return [order[b] for b in bands]

    def select(self, array: np.ndarray, bands: Iterable[str]) -> np.ndarray:
        """The named `bands` of `array` (T, C, ...) stored in this sensor's band order."""
        return array[:, self.band_index(bands)]

    @property
    def min_gsd_m(self) -> float:
        return min(g.gsd_m for g in self.groups)

    def native_grids(self) -> tuple[Grid, ...]:
        """The sensor's bands on their native grids (one per distinct group GSD), finest first."""
        return grids_of({b: g.gsd_m for g in self.groups for b in g.bands}, self.bands)

    def one_grid(self, gsd_m: float) -> tuple[Grid, ...]:
        """Every band on one grid of `gsd_m` metres (the layout of upsampled stacks)."""
        return (Grid(grid_name(gsd_m), self.bands, gsd_m),)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bands"] = list(self.bands)
        d["groups"] = [{"name": g.name, "bands": list(g.bands), "gsd_m": g.gsd_m} for g in self.groups]
        d["value_range"] = list(self.value_range)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SensorSpec:
        """Build a spec from plain data (YAML, dataset.json); unknown or missing fields fail by name."""
        if not isinstance(d, dict):
            raise SensorSpecError(f"a sensor definition must be a mapping, got {d!r}")
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise SensorSpecError(f"sensor {d.get('name')!r} has unknown field(s) {unknown}; valid fields: {sorted(valid)}")
        missing = [k for k in ("name", "groups") if k not in d]
        if missing:
            raise SensorSpecError(f"sensor definition {d.get('name')!r} is missing the field(s) {missing}")
        try:
            groups = tuple(BandGroup(g["name"], tuple(g["bands"]), float(g["gsd_m"])) for g in d["groups"])
        except (KeyError, TypeError) as e:
            raise SensorSpecError(
                f"sensor {d['name']!r}: every group needs name, bands and gsd_m (problem: {e!r})"
            ) from None
        return cls(
            name=str(d["name"]),
            bands=tuple(d.get("bands") or [b for g in groups for b in g.bands]),
            groups=groups,
            spatial=bool(d.get("spatial", True)),
            temporal=bool(d.get("temporal", True)),
            categorical=bool(d.get("categorical", False)),
            wavelengths_nm={k: float(v) for k, v in (d.get("wavelengths_nm") or {}).items()},
            value_range=tuple(d.get("value_range", (-1e9, 1e9))),
            description=str(d.get("description", "")),
        )


def _s2_wavelengths() -> dict[str, float]:
    return {
        "B01": 443, "B02": 490, "B03": 560, "B04": 665, "B05": 705, "B06": 740, "B07": 783,
        "B08": 842, "B8A": 865, "B09": 945, "B10": 1375, "B11": 1610, "B12": 2190,
    }  # fmt: skip


def _single_band(name: str, band: str, gsd_m: float, **flags) -> SensorSpec:
    """A one-band, one-group sensor (DEMs, maps, indices)."""
    return SensorSpec(name=name, bands=(band,), groups=(BandGroup(band, (band,), gsd_m),), **flags)


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
    description="Sentinel-1 IW GRD backscatter in dB, VV and VH.",
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
    description="Landsat 8/9 OLI/TIRS Collection 2 Level-1 digital numbers, 11 bands "
    "(pan B8 and the thermal B10/B11 as delivered on the 30 m grid).",
)

LANDSAT_SR = SensorSpec(
    name="landsat_sr",
    bands=("SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B6", "SR_B7"),
    groups=(
        BandGroup("vnir", ("SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5"), 30.0),
        BandGroup("swir", ("SR_B6", "SR_B7"), 30.0),
    ),
    wavelengths_nm={"SR_B1": 443, "SR_B2": 482, "SR_B3": 562, "SR_B4": 655, "SR_B5": 865,
                    "SR_B6": 1609, "SR_B7": 2201},  # fmt: skip
    value_range=(-10000, 65535),
    description="Landsat 8/9 OLI surface reflectance (Collection 2 Level-2 or reflectance x 10000), 7 bands.",
)

_NAIP_BANDS = ("R", "G", "B", "NIR")
_NAIP_WAVELENGTHS = {"R": 635.0, "G": 555.0, "B": 470.0, "NIR": 860.0}

NAIP = SensorSpec(
    name="naip",
    bands=_NAIP_BANDS,
    groups=(BandGroup("rgbn", _NAIP_BANDS, 0.6),),
    temporal=False,
    wavelengths_nm=_NAIP_WAVELENGTHS,
    value_range=(0, 255),
    description="USDA NAIP aerial imagery, red/green/blue/near-infrared, 8-bit, 0.6 m.",
)

NAIP_10 = SensorSpec(
    name="naip_10",
    bands=_NAIP_BANDS,
    groups=(BandGroup("rgbn", _NAIP_BANDS, 10.0),),
    temporal=False,
    wavelengths_nm=_NAIP_WAVELENGTHS,
    value_range=(0, 255),
    description="NAIP resampled to 10 m, to pair with Sentinel-2 at its resolution.",
)

_ERA5_BANDS = (
    "2m_temperature", "2m_dewpoint_temperature", "surface_pressure",
    "10m_u_wind", "10m_v_wind", "total_precipitation",
)  # fmt: skip

ERA5 = SensorSpec(
    name="era5",
    bands=_ERA5_BANDS,
    groups=(BandGroup("weather", _ERA5_BANDS, 27750.0),),
    spatial=False,
    value_range=(-1000, 120000),
    description="ERA5 reanalysis (K, Pa, m/s, m): one value per band and timestep, the footprint mean.",
)

WORLDCOVER = _single_band(
    "worldcover", "landcover_class", 10.0, temporal=False, categorical=True, value_range=(0, 100),
    description="ESA WorldCover land-cover classes (10 tree cover ... 100 moss and lichen), 10 m.",
)  # fmt: skip

SRTM = _single_band(
    "srtm", "elevation", 30.0, temporal=False, value_range=(-500, 9000),
    description="SRTM digital elevation model, metres.",
)  # fmt: skip

_OSM_CATEGORIES = (
    "aerialway_pylon", "aerodrome", "airstrip", "amenity_fuel", "building", "chimney",
    "communications_tower", "crane", "flagpole", "fountain", "generator_wind", "helipad",
    "highway", "leisure", "lighthouse", "obelisk", "observatory", "parking", "petroleum_well",
    "power_plant", "power_substation", "power_tower", "river", "runway", "satellite_dish",
    "silo", "storage_tank", "taxiway", "water_tower", "works",
)  # fmt: skip

OPENSTREETMAP_RASTER = SensorSpec(
    name="openstreetmap_raster",
    bands=_OSM_CATEGORIES,
    groups=(BandGroup("features", _OSM_CATEGORIES, 2.5),),
    temporal=False,
    categorical=True,
    value_range=(0, 255),
    description="OpenStreetMap features rasterized to 30 presence bands, 2.5 m.",
)

CDL = _single_band(
    "cdl", "crop_type", 30.0, temporal=False, categorical=True, value_range=(0, 255),
    description="USDA Cropland Data Layer crop-type codes, 30 m.",
)  # fmt: skip

_WORLDCEREAL_PRODUCTS = (
    "temporarycrops", "maize_main_irrigation", "maize_main", "maize_second_irrigation",
    "maize_second", "springcereals", "wintercereals_irrigation", "wintercereals",
)  # fmt: skip

WORLDCEREAL = SensorSpec(
    name="worldcereal",
    bands=_WORLDCEREAL_PRODUCTS,
    groups=(BandGroup("products", _WORLDCEREAL_PRODUCTS, 10.0),),
    temporal=False,
    categorical=True,
    value_range=(0, 255),
    description="ESA WorldCereal classification products (8 crop / irrigation maps), 10 m.",
)

WORLDPOP = _single_band(
    "worldpop", "population", 100.0, temporal=False, value_range=(0, 100000),
    description="WorldPop people per pixel, 100 m.",
)  # fmt: skip

WRI_CANOPY_HEIGHT = _single_band(
    "wri_canopy_height", "canopy_height", 1.0, temporal=False, value_range=(0, 120),
    description="WRI / Meta global canopy height, metres, 1 m.",
)  # fmt: skip

_GSE_BANDS = tuple(f"A{i:02d}" for i in range(64))

GSE = SensorSpec(
    name="gse",
    bands=_GSE_BANDS,
    groups=(BandGroup("embedding", _GSE_BANDS, 10.0),),
    temporal=False,
    value_range=(-1, 1),
    description="Google Satellite Embedding (AlphaEarth), 64 dimensions per 10 m pixel.",
)

NDVI = _single_band(
    "ndvi", "ndvi", 10.0, value_range=(-1, 1),
    description="Normalized difference vegetation index from Sentinel-2 (B08 - B04) / (B08 + B04).",
)  # fmt: skip

EUROCROPS = _single_band(
    "eurocrops", "crop_class", 10.0, temporal=False, categorical=True, value_range=(0, 2**24),
    description="EuroCrops harmonised crop classes (indices below 2**24, exact in float32).",
)  # fmt: skip

BUILTIN_SENSORS: tuple[SensorSpec, ...] = (
    SENTINEL2_L2A, SENTINEL2_L1C, SENTINEL1, LANDSAT, LANDSAT_SR, NAIP, NAIP_10, ERA5,
    WORLDCOVER, SRTM, OPENSTREETMAP_RASTER, CDL, WORLDCEREAL, WORLDPOP, WRI_CANOPY_HEIGHT,
    GSE, NDVI, EUROCROPS,
)  # fmt: skip


class SensorRegistry:
    """Name -> SensorSpec, with the built-ins preloaded and user sensors from YAML."""

    def __init__(self, sensors: Iterable[SensorSpec] = BUILTIN_SENSORS) -> None:
        self._sensors: dict[str, SensorSpec] = {}
        for s in sensors:
            self.register(s)

    def register(self, spec: SensorSpec, *, replace: bool = False) -> None:
        if spec.name in self._sensors and not replace and self._sensors[spec.name] != spec:
            raise SensorSpecError(
                f"sensor {spec.name!r} is already registered with another definition; "
                "pick a new name for your sensor"
            )
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

    def __len__(self) -> int:
        return len(self._sensors)

    def names(self) -> list[str]:
        return sorted(self._sensors)

    def load_yaml(self, path: str | Path) -> list[SensorSpec]:
        """Register every sensor in a YAML file: one mapping, a list, or a list under `sensors:`.

        Loaded with `yaml.safe_load`; errors name the file and the faulty field.
        """
        path = Path(path)
        try:
            doc = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise SensorSpecError(f"{path} is not valid YAML: {e}") from None
        entries = doc.get("sensors", [doc]) if isinstance(doc, dict) else doc
        if not isinstance(entries, list) or not entries:
            raise SensorSpecError(f"{path} holds no sensor definition (a mapping, or a list under `sensors:`)")
        try:
            specs = [SensorSpec.from_dict(e) for e in entries]
            for s in specs:
                self.register(s)
        except SensorSpecError as e:
            raise SensorSpecError(f"{path}: {e}") from None
        return specs


#: The process-wide default registry.
REGISTRY = SensorRegistry()


def get_sensor(name: str) -> SensorSpec:
    return REGISTRY.get(name)
