"""The Python API: load an encoder and embed arrays or GeoTIFFs, in three lines.

    from spacenit import load_encoder, embed
    encoder = load_encoder("models:/spacenit-encoder@champion")   # a checkpoint, a models:/ URI, "galileo_nano", "presto"
    vectors = embed(encoder, {"sentinel2_l2a": "s2_chip.tif"})      # (1, D): one chip; or numpy arrays

Inputs, per sensor (any subset of the encoder's sensors; the others are missing):
  - a numpy array of the sensor's bands in its registry order, (T, C, H, W) for one sample or
    (B, T, C, H, W), on a grid of the training data's pixel size (10 m for Sentinel-2);
  - its grids at their own resolutions, {Grid or grid name ("10m", "20m", "60m"): array};
  - a GeoTIFF path, or a list of paths (Sentinel-2 delivered as 10, 20 and 60 m band files): each
    file's bands by their descriptions (or its file name "B05.tif" for one band; else, in the
    sensor's order), at the file's own pixel size, one date.
`months` (sensor -> (T,) or (B, T), 1-12, 0 unknown) is optional. Values are raw, in the
units the sensor stores (reflectance x 10000, dB, metres); the sentinel -99999 or NaN is missing.

`patch_maps=True` returns per-patch maps (B, h, w, D) instead of pooled vectors (B, D). For a
scene larger than one window use `spacenit embed SCENE.tif OUT.tif` (sliding windows, a COG).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio

from spacenit.data.images import to_one_grid
from spacenit.sensors import SENTINEL, Grid, SensorSpec, get_sensor, grid_name


class APIError(ValueError):
    """Inputs the API cannot use; the message names the input and what to do."""


@dataclass
class Encoder:
    """A loaded encoder: a SpaceNit model (with its checkpoint metadata) or an external one."""

    name: str
    sensors: tuple[str, ...]
    _model: object
    _meta: object | None = None  # CheckpointMeta of a SpaceNit model

    @property
    def is_spacenit(self) -> bool:
        return self._meta is not None

    def embed(self, inputs: Mapping, *, months: Mapping | None = None, patch_maps: bool = False) -> np.ndarray:
        """Pooled embeddings (B, D), or per-patch maps (B, h, w, D) with NaN where a patch has no data."""
        grids = {sensor: _sensor_grids(sensor, value) for sensor, value in inputs.items()}
        unknown = sorted(set(grids) - set(self.sensors))
        if unknown:
            raise APIError(f"{self.name} has no sensor(s) {unknown}; its sensors are {list(self.sensors)}")
        months = {s: np.asarray(m) for s, m in (months or {}).items()}
        if self.is_spacenit:
            return self._embed_spacenit(grids, months, patch_maps)
        return self._embed_external(grids, months, patch_maps)

    def _embed_spacenit(self, grids, months, patch_maps: bool) -> np.ndarray:
        from spacenit.evaluation.embed import embed_arrays

        arrays: dict = {}
        for sensor, sensor_grids in grids.items():
            arrays[sensor] = sensor_grids
            if sensor in months:
                arrays[f"{sensor}/months"] = months[sensor]
        return embed_arrays(self._model, self._meta, arrays, patch_maps=patch_maps)

    def _embed_external(self, grids, months, patch_maps: bool) -> np.ndarray:
        images, gsd = {}, None
        for sensor, sensor_grids in grids.items():
            spec = get_sensor(sensor)
            batched = {g: _with_batch(x, spec) for g, x in sensor_grids.items()}
            images[sensor] = to_one_grid(batched, spec)  # every band on the finest grid, as these models take them
            if spec.spatial:
                gsd = min(g.gsd_m for g in sensor_grids) if gsd is None else min(gsd, *(g.gsd_m for g in sensor_grids))
        batch_months = {}
        for sensor, x in images.items():
            m = months.get(sensor, np.zeros(x.shape[:2], dtype=np.int64))
            batch_months[sensor] = m[None] if m.ndim == 1 else m
        out = self._model.encode(images, batch_months, gsd or 10.0)
        return out.patches if patch_maps else out.pooled


def load_encoder(model: str | Path, *, tracking_uri: str | None = None, weights_dir: str | Path | None = None) -> Encoder:
    """An encoder from a checkpoint directory, a `models:/` or `runs:/` URI (of a SpaceNit model, or of an
    external one registered with `spacenit register`), or an external model's name ("galileo_nano",
    "presto": their published weights, from `weights_dir` or $SPACENIT_WEIGHTS_DIR)."""
    from spacenit.evaluation.embed import load_external_model, resolve_model
    from spacenit.external import EXTERNAL_ENCODERS, load_external
    from spacenit.train.checkpoint import load_checkpoint

    external = load_external(str(model), weights_dir) if str(model) in EXTERNAL_ENCODERS else load_external_model(model, tracking_uri)
    if external is not None:
        return Encoder(external.name, tuple(external.sensors), external)

    net, meta = load_checkpoint(resolve_model(model, tracking_uri))
    return Encoder(str(model), tuple(s.name for s in meta.sensors), net.eval(), meta)


def embed(encoder: Encoder | str | Path, inputs: Mapping, *, months: Mapping | None = None,
          patch_maps: bool = False, tracking_uri: str | None = None) -> np.ndarray:  # fmt: skip
    """Embed `inputs` with `encoder` (a loaded Encoder, or what `load_encoder` takes)."""
    if not isinstance(encoder, Encoder):
        encoder = load_encoder(encoder, tracking_uri=tracking_uri)
    return encoder.embed(inputs, months=months, patch_maps=patch_maps)


def _sensor_grids(sensor: str, value) -> dict:
    """One sensor's input as an array, or {Grid: array} for files and named grids."""
    spec = _spec(sensor)
    if isinstance(value, str | Path):
        return read_geotiffs(spec, [value])
    if isinstance(value, Sequence) and value and all(isinstance(v, str | Path) for v in value):
        return read_geotiffs(spec, list(value))
    if isinstance(value, Mapping):
        named = {g.name: g for g in spec.native_grids()}
        out = {}
        for key, x in value.items():
            if isinstance(key, Grid):
                out[key] = np.asarray(x)
            elif key in named:
                out[named[key]] = np.asarray(x)
            else:
                raise APIError(f"{sensor}: no grid {key!r}; its native grids are {list(named)} (or give Grid keys)")
        return out
    return np.asarray(value)


def read_geotiffs(spec: SensorSpec, paths: list[str | Path]) -> dict[Grid, np.ndarray]:
    """GeoTIFFs of one sensor and date -> {Grid: (1, C, H, W)} at each file's own pixel size.

    A file's bands are its band descriptions, or its name for a one-band file named after a
    band ("B05.tif"), or else the sensor's bands in order. Files of one pixel size join one grid.
    """
    by_size: dict[float, dict[str, np.ndarray]] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise APIError(f"{path} does not exist")
        with rasterio.open(path) as src:
            names = list(src.descriptions) if all(src.descriptions) else None
            if names is None and src.count == 1 and path.stem in spec.bands:
                names = [path.stem]
            if names is None:
                if src.count != spec.num_bands:
                    raise APIError(f"{path} has {src.count} unnamed bands; {spec.name} has {spec.num_bands} "
                                   f"({', '.join(spec.bands)}): name them in the file's band descriptions")  # fmt: skip
                names = list(spec.bands)
            unknown = [n for n in names if n not in spec.bands]
            if unknown:
                raise APIError(f"{path}: band(s) {unknown} are not bands of {spec.name} ({', '.join(spec.bands)})")
            data = src.read(masked=True)
            values = data.filled(np.nan).astype(np.float32)
            size = round(abs(src.transform.a), 3) if src.crs is None or not src.crs.is_geographic else spec.min_gsd_m
        values[~np.isfinite(values)] = SENTINEL
        bands = by_size.setdefault(size, {})
        for name, band in zip(names, values, strict=True):
            bands[name] = band
    out = {}
    for size, bands in sorted(by_size.items()):
        order = [b for b in spec.bands if b in bands]
        out[Grid(grid_name(size), tuple(order), size)] = np.stack([bands[b] for b in order])[None, None]  # (1, 1, C, H, W)
    return out


def _spec(sensor: str) -> SensorSpec:
    try:
        return get_sensor(sensor)
    except KeyError as e:
        raise APIError(str(e.args[0])) from None


def _with_batch(x: np.ndarray, spec: SensorSpec) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    rank = 5 if spec.spatial else 3
    return x[None] if x.ndim == rank - 1 else x
