"""Embedding a GeoTIFF scene larger than the model's window: sliding windows, blended, georeferenced.

A scene is one sensor's bands at one date: a multiband file, or several band
files at their own resolutions (Sentinel-2's 10, 20 and 60 m bands; `SceneFiles`).
The finest file sets the reference grid; each window is read from every file at
the file's own resolution over the same ground (nothing is upsampled before the
model: it tokenizes every band at its native resolution), so the files must
share the CRS and their pixels must line up (Sentinel-2 tiles do).

The scene is cut into windows of `window_px` reference pixels overlapping by
`overlap_px` (both multiples of the patch size); window corners fall on whole
pixels of every file. Each window goes through the encoder and becomes a
per-patch embedding map (`patch_maps.py`). Where windows overlap, a cell's
embedding is the weighted mean of the windows' values, the weight a tent that
is 1 at a window's centre and falls towards its edges: tokens near a window
edge saw less context, and the seams vanish.

The output grid is the reference grid coarsened by the patch size (same CRS
and origin, pixels `patch_size` times larger), or a chosen pixel size
(`output_gsd_m`): then each output pixel takes the embedding of the patch its
centre lies in. When the scene's size is not a multiple of the patch size, the
last row/column of cells reaches past the scene by less than one patch
(padded with no-data). Cells without any valid pixel are NaN.

The encoder is a SpaceNit model (a checkpoint or `models:/` URI) or a published
external one ("galileo_nano", "presto"), which take every band on one grid.

Windows are processed a row of windows at a time and finished rows go to the
writers at once, so memory holds about one window-row of the output.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.windows import Window
from tqdm import tqdm

from spacenit.data.images import to_one_grid
from spacenit.evaluation.embed import EmbedError, resolve_model, to_device
from spacenit.evaluation.georaster import TIFF_SUFFIXES, open_writer
from spacenit.evaluation.inputs import InputBindingError, ModelInputs, bind_sensors
from spacenit.evaluation.patch_maps import embed_with_maps
from spacenit.sensors import SENTINEL, Grid, SensorSpec, get_sensor, grid_name, metres


@dataclass
class SceneEmbedding:
    outputs: list[Path]
    crs: str
    transform: tuple[float, ...]
    shape: tuple[int, int]  # (rows, cols) of the embedding grid
    channels: int
    windows: int


def window_starts(cells: int, window_cells: int, stride_cells: int, align_cells: int = 1) -> list[int]:
    """Start cells of windows covering [0, cells): every stride, plus one flush with the end (moved on to a
    multiple of `align_cells`, so the last window may reach past the end, padded with no data)."""
    if cells <= window_cells:
        return [0]
    starts = list(range(0, cells - window_cells + 1, stride_cells))
    if starts[-1] + window_cells < cells:
        starts.append(-(-(cells - window_cells) // align_cells) * align_cells)
    return starts


def tent_weights(n: int) -> np.ndarray:
    """(n,) weights: 1 at the centre, falling linearly to 1 / ceil(n / 2) at the edges; never 0."""
    i = np.arange(n)
    return (np.minimum(i, n - 1 - i) + 1) / math.ceil(n / 2)


# ---------------------------------------------------------------- the scene's files


@dataclass
class _SceneFile:
    path: Path
    src: rasterio.DatasetReader
    bands: list[str]
    #: Pixel size over the reference pixel size (2 for a 20 m file beside 10 m ones).
    ratio: Fraction
    #: (row, col) of the file's top-left corner on the reference grid, in reference pixels.
    offset: tuple[int, int]


class SceneFiles:
    """One sensor's files of one date, each at its own resolution; the finest sets the reference grid."""

    def __init__(self, paths: Sequence[Path], bands: Sequence[str] | None, candidates: Sequence[SensorSpec]) -> None:
        if not paths:
            raise EmbedError("a scene needs at least one GeoTIFF")
        self.sources = [rasterio.open(p) for p in paths]
        try:
            self._check_crs(paths)
            names = [self._file_bands(p, src, bands if len(paths) == 1 else None, candidates)
                     for p, src in zip(paths, self.sources, strict=True)]  # fmt: skip
            finest = min(range(len(paths)), key=lambda i: abs(self.sources[i].res[0]))
            ref = self.sources[finest]
            self.crs, self.res = ref.crs, abs(ref.res[0])
            self.transform = ref.transform
            self.files = [self._place(p, src, n) for p, src, n in zip(paths, self.sources, names, strict=True)]
            self.height = max(f.offset[0] + math.ceil(f.src.height * f.ratio) for f in self.files)
            self.width = max(f.offset[1] + math.ceil(f.src.width * f.ratio) for f in self.files)
        except BaseException:
            self.close()
            raise

    @property
    def band_names(self) -> list[str]:
        return [b for f in self.files for b in f.bands]

    @property
    def gsd_m(self) -> float | None:
        """The reference pixel size in metres; None in a geographic CRS."""
        return None if self.crs.is_geographic else float(self.res)

    @property
    def align_px(self) -> int:
        """Window corners, in reference pixels, that are whole pixels of every file: multiples of this."""
        return math.lcm(1, *(f.ratio.numerator for f in self.files))

    def _check_crs(self, paths: Sequence[Path]) -> None:
        for path, src in zip(paths, self.sources, strict=True):
            if src.crs is None:
                raise EmbedError(f"{path} has no CRS: a georeferenced output needs one (assign it with gdal_edit.py -a_srs)")
            if src.crs != self.sources[0].crs:
                raise EmbedError(f"{path} is in {src.crs}, {paths[0]} in {self.sources[0].crs}: warp the scene's files "
                                 "into one CRS first (gdalwarp -t_srs)")  # fmt: skip
            t = src.transform
            if t.b or t.d or t.a <= 0 or t.e >= 0:
                raise EmbedError(f"{path} is not north-up (geotransform {tuple(t)[:6]}); warp it north-up first (gdalwarp)")

    @staticmethod
    def _file_bands(path: Path, src, bands: Sequence[str] | None, candidates: Sequence[SensorSpec]) -> list[str]:
        """A file's band names: given, its band descriptions, or for a one-band file the band named in its file name."""
        if bands is not None:
            if len(bands) != src.count:
                raise EmbedError(f"{path} has {src.count} bands, {len(bands)} band names were given: {list(bands)}")
            return list(bands)
        if all(src.descriptions):
            return list(src.descriptions)
        if src.count == 1:
            tokens = set(re.split(r"[_\-. ]", path.stem))
            named = sorted({b for spec in candidates for b in spec.bands if b in tokens})
            if len(named) == 1:
                return named
        raise EmbedError(f"{path} does not name its bands; give their names in file order (e.g. --bands B2,B3,B4,B5,B6,B7), "
                         "or name one-band files after their band (B05.tif)")  # fmt: skip

    def _place(self, path: Path, src, bands: list[str]) -> _SceneFile:
        ratio = metres(abs(src.res[0])) / metres(self.res)
        col = metres(src.transform.c - self.transform.c) / metres(self.res)
        row = metres(self.transform.f - src.transform.f) / metres(self.res)
        # The file's pixels must fall on whole pixels of its own size counted from the reference corner.
        if (col / ratio).denominator != 1 or (row / ratio).denominator != 1 or abs(abs(src.res[1]) - abs(src.res[0])) > 1e-6 * abs(src.res[0]):
            raise EmbedError(f"{path}'s pixels do not line up with the reference grid of the scene's finest file "
                             f"(offset {float(col):g}, {float(row):g} px at {self.res:g}, its pixels {src.res}); "
                             "warp it onto a grid sharing that origin (gdalwarp -tap -tr)")  # fmt: skip
        return _SceneFile(path, src, bands, ratio, (int(row), int(col)))

    def grids(self) -> list[Grid]:
        """The scene's grids: files of one pixel size join one grid, bands in file order."""
        by_ratio: dict[Fraction, list[str]] = {}
        for f in self.files:
            by_ratio.setdefault(f.ratio, []).extend(f.bands)
        return [Grid(grid_name(float(r) * self.res), tuple(b), float(r) * self.res) for r, b in sorted(by_ratio.items())]

    def read(self, row0: int, col0: int, height: int, width: int) -> dict[Grid, np.ndarray]:
        """The window of reference pixels [row0, row0+height) x [col0, col0+width) from every file at its own
        resolution: {Grid: (C, ceil(height / ratio), ceil(width / ratio))}, the sentinel where there is no data."""
        parts: dict[Fraction, list[np.ndarray]] = {}
        for f in self.files:
            r, c = Fraction(row0 - f.offset[0]) / f.ratio, Fraction(col0 - f.offset[1]) / f.ratio
            h, w = math.ceil(height / f.ratio), math.ceil(width / f.ratio)
            parts.setdefault(f.ratio, []).append(_read_window(f.src, int(r), int(c), h, w))
        return {grid: np.concatenate(parts[ratio]) for grid, ratio in zip(self.grids(), sorted(parts), strict=True)}

    def close(self) -> None:
        for src in self.sources:
            src.close()


def _read_window(src, row0_px: int, col0_px: int, height_px: int, width_px: int) -> np.ndarray:
    """(C, height_px, width_px) float32 with SENTINEL where the file has no data or ends (offsets may be negative)."""
    out = np.full((src.count, height_px, width_px), SENTINEL, dtype=np.float32)
    r_lo, c_lo = max(row0_px, 0), max(col0_px, 0)
    r_hi, c_hi = min(row0_px + height_px, src.height), min(col0_px + width_px, src.width)
    if r_hi <= r_lo or c_hi <= c_lo:
        return out
    block = src.read(window=Window(c_lo, r_lo, c_hi - c_lo, r_hi - r_lo), masked=True)
    values = block.data.astype(np.float32)  # integer scenes cannot hold the sentinel: convert first
    values[np.ma.getmaskarray(block) | ~np.isfinite(values)] = SENTINEL
    out[:, r_lo - row0_px : r_hi - row0_px, c_lo - col0_px : c_hi - col0_px] = values
    return out


# ---------------------------------------------------------------- encoders


class SceneEncoder:
    """A SpaceNit encoder over windows of one sensor's grids: maps (B, h, w, D) and their validity."""

    def __init__(self, net, meta, inputs: ModelInputs, *, patch_size: int, month: int = 0, gsd_m: float | None = None) -> None:
        self.net, self.meta, self.inputs = net, meta, inputs
        self.patch_size, self.month, self.gsd_m = patch_size, month, gsd_m
        self.dim = net.config.dim

    def encode(self, windows: dict[Grid, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Raw windows {Grid: (B, C_g, H_g, W_g)}, sentinel = no data -> maps (B, h, w, D), valid (B, h, w)."""
        data = {self.inputs.bindings[0].data_sensor: {g: x[:, None] for g, x in windows.items()}}  # (B, T=1, C, H, W)
        gsd_m = self.gsd_m or self.net.config.reference_gsd_m
        images = self.inputs.batch(data, gsd_m)
        finest = min(windows, key=lambda g: g.gsd_m)
        B, _, H, W = windows[finest].shape
        for spec in self.meta.sensors:  # sensors the scene does not feed are entirely absent
            if spec.name not in images:
                shape = (B, 1, spec.num_bands, H, W) if spec.spatial else (B, 1, spec.num_bands)
                images[spec.name] = {Grid(finest.name, spec.bands, finest.gsd_m): torch.full(shape, SENTINEL)}
        device = next(self.net.parameters()).device
        images = to_device(images, device)
        months = {k: torch.full((B, 1), self.month, dtype=torch.long, device=device) for k in images}
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            _, maps, valid = embed_with_maps(self.net, images, months, self.patch_size, self.gsd_m)
        if tuple(maps.shape[1:3]) != (H // self.patch_size, W // self.patch_size):
            raise EmbedError(f"the model returns {tuple(maps.shape[1:3])} cells for a {H}x{W} px window at patch size "
                             f"{self.patch_size} (an output patch size of its own): scenes need one cell per patch")  # fmt: skip
        return maps.float().cpu().numpy(), valid.cpu().numpy()


class ExternalSceneEncoder:
    """A published external encoder (`spacenit.external`) over windows: every band on the finest grid."""

    def __init__(self, encoder, sensor: SensorSpec, bands: list[str], *, month: int = 0, gsd_m: float | None = None) -> None:
        self.encoder, self.sensor, self.bands = encoder, sensor, bands
        self.patch_size, self.month, self.gsd_m = encoder.patch_size_px, month, gsd_m
        self.dim = encoder.patch_dim

    def encode(self, windows: dict[Grid, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        stacked = to_one_grid({g: x[:, None] for g, x in windows.items()}, _Bands(tuple(self.bands)))  # (B, 1, C, H, W)
        B = stacked.shape[0]
        out = self.encoder.encode({self.sensor.name: stacked}, {self.sensor.name: np.full((B, 1), self.month)},
                                  self.gsd_m or self.sensor.min_gsd_m, bands={self.sensor.name: self.bands})  # fmt: skip
        return np.nan_to_num(out.patches), out.valid  # NaN (invalid) cells carry no weight in the blend


@dataclass(frozen=True)
class _Bands:
    """A band list as `to_one_grid` reads a sensor: names, and their positions."""

    bands: tuple[str, ...]
    spatial: bool = True

    @property
    def num_bands(self) -> int:
        return len(self.bands)

    def band_index(self, bands) -> list[int]:
        return [self.bands.index(b) for b in bands]


def _choose_sensor(sensors: Sequence[SensorSpec], names: list[str], sensor: str | None) -> SensorSpec:
    if sensor is not None:
        match = [s for s in sensors if s.name == sensor]
        if not match:
            raise EmbedError(f"the model has no sensor {sensor!r}; it has {[s.name for s in sensors]}")
        return match[0]
    overlap = {s.name: len(set(s.bands) & set(names)) for s in sensors}
    best = max(overlap, key=overlap.get)
    if overlap[best] == 0:
        raise EmbedError(f"no model sensor has any of the scene's bands {names}; the model's sensors: "
                         f"{ {s.name: list(s.bands) for s in sensors} }")  # fmt: skip
    return next(s for s in sensors if s.name == best)


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def scene_paths(scene: str | Path | Sequence[str | Path]) -> list[Path]:
    """A scene's files: one GeoTIFF, a list of them, or a folder of them (its band files)."""
    if isinstance(scene, str | Path):
        scene = Path(scene)
        if scene.is_dir():
            files = sorted(p for p in scene.iterdir() if p.suffix.lower() in TIFF_SUFFIXES)
            if not files:
                raise EmbedError(f"{scene} holds no GeoTIFF (.tif) band files")
            return files
        return [scene]
    return [Path(p) for p in scene]


def embed_scene(
    model: str | Path,
    scene: str | Path | Sequence[str | Path],
    outputs: str | Path | Sequence[str | Path],
    *,
    bands: Sequence[str] | None = None,
    sensor: str | None = None,
    window_px: int = 64,
    overlap_px: int = 16,
    patch_size: int | None = None,
    batch_size: int = 16,
    month: int = 0,
    output_gsd_m: float | None = None,
    tracking_uri: str | None = None,
    allow_missing_bands: bool = False,
    progress: bool = True,
) -> SceneEmbedding:
    """Embed `scene` (a GeoTIFF, several band files, or a folder of them) window by window into each of
    `outputs` (.tif -> COG GeoTIFF, .zarr -> Zarr), on the patch grid or on `output_gsd_m` pixels.

    `model`: a SpaceNit checkpoint or MLflow URI, or "galileo_nano" / "presto". A scene lacking
    some of the model sensor's bands is refused unless `allow_missing_bands` (they are then no data).
    """
    from spacenit.evaluation.embed import load_external_model

    paths = [Path(outputs)] if isinstance(outputs, str | Path) else [Path(o) for o in outputs]
    for path in paths:
        if path.suffix.lower() not in (*TIFF_SUFFIXES, ".zarr"):
            raise EmbedError(f"{path}: write a scene's embeddings to a .tif (Cloud-Optimized GeoTIFF) or a .zarr path")
    encoder_model = load_external_model(model, tracking_uri)
    external = encoder_model is not None
    if external:
        candidates = [get_sensor(s) for s in encoder_model.sensors if get_sensor(s).spatial]
    else:
        from spacenit.train.checkpoint import load_checkpoint

        net, meta = load_checkpoint(resolve_model(model, tracking_uri))
        net.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        candidates = meta.sensors
    files = SceneFiles(scene_paths(scene), bands, candidates)
    try:
        names = files.band_names
        spec = _choose_sensor(candidates, names, sensor)
        if external:
            encoder = ExternalSceneEncoder(encoder_model, spec, names, month=month, gsd_m=files.gsd_m)
        else:
            try:
                binding = bind_sensors([spec], {"scene": names}, sensor_map={spec.name: "scene"},
                                       allow_missing_bands=allow_missing_bands)  # fmt: skip
            except InputBindingError as e:
                raise EmbedError(f"{scene}: {e}") from None
            # Positions scale with the scene's own pixel size (metres in a projected CRS).
            encoder = SceneEncoder(net, meta, ModelInputs(binding, {spec.name: meta.stats[spec.name]}),
                                   patch_size=patch_size or meta.patch_size, month=month, gsd_m=files.gsd_m)  # fmt: skip
        return _embed_files(files, encoder, paths, model, scene, spec.name, window_px, overlap_px, batch_size,
                            output_gsd_m, progress)  # fmt: skip
    finally:
        files.close()


def _embed_files(files: SceneFiles, encoder, paths: list[Path], model, scene, sensor: str, window_px: int,
                 overlap_px: int, batch_size: int, output_gsd_m: float | None, progress: bool) -> SceneEmbedding:  # fmt: skip
    p = encoder.patch_size
    if window_px % p or overlap_px % p or not 0 <= overlap_px < window_px:
        raise EmbedError(f"window {window_px} px and overlap {overlap_px} px must be multiples of the patch size {p}, overlap < window")
    align_cells = math.lcm(p, files.align_px) // p  # window corners on whole pixels of every file
    h_cells, w_cells = math.ceil(files.height / p), math.ceil(files.width / p)
    win_h, win_w = min(window_px // p, h_cells), min(window_px // p, w_cells)
    stride = (window_px - overlap_px) // p
    if stride % align_cells:
        raise EmbedError(f"window {window_px} px - overlap {overlap_px} px must be a multiple of {align_cells * p} px "
                         f"(whole pixels of every file of the scene)")  # fmt: skip
    row_starts = window_starts(h_cells, win_h, stride, align_cells)
    col_starts = window_starts(w_cells, win_w, stride, align_cells)
    weight = tent_weights(win_h)[:, None] * tent_weights(win_w)[None, :]  # (win_h, win_w)
    cell_transform = files.transform @ Affine.scale(p)
    tags = {"model": str(model), "scene": ",".join(str(f.path) for f in files.files), "patch_size": p,
            "window_px": window_px, "overlap_px": overlap_px, "sensor": sensor, "bands": ",".join(files.band_names)}  # fmt: skip
    if output_gsd_m is None:
        grid = {"height": h_cells, "width": w_cells, "transform": cell_transform}
        regrid = None
    else:
        regrid = _Regrid(p * files.res, output_gsd_m, (h_cells, w_cells), files)
        grid = {"height": regrid.shape[0], "width": regrid.shape[1], "transform": regrid.transform}
        tags["output_gsd_m"] = output_gsd_m
    writers = [open_writer(path, channels=encoder.dim, crs=files.crs, tags=tags, **grid) for path in paths]
    if regrid is not None:
        writers = [regrid.wrap(w) for w in writers]
    try:
        _blend_rows(files, encoder, writers, row_starts, col_starts, (win_h, win_w), weight, p, batch_size,
                    (h_cells, w_cells), progress)  # fmt: skip
    except BaseException:
        for w in writers:
            w.abort()
        raise
    for w in writers:
        w.close()
    return SceneEmbedding(paths, files.crs.to_string(), tuple(grid["transform"])[:6], (grid["height"], grid["width"]),
                          encoder.dim, len(row_starts) * len(col_starts))  # fmt: skip


class _Regrid:
    """Cell rows in, rows of an output grid of another pixel size out: each output pixel takes the
    cell its centre lies in (same CRS and origin)."""

    def __init__(self, cell_m: float, out_m: float, cells: tuple[int, int], files: SceneFiles) -> None:
        if not out_m > 0:
            raise EmbedError(f"the output pixel size must be positive metres, got {out_m}")
        scale = out_m / files.res
        self.shape = (math.ceil(files.height / scale), math.ceil(files.width / scale))
        self.transform = files.transform @ Affine.scale(scale)
        centres = lambda n: ((np.arange(n) + 0.5) * out_m / cell_m).astype(np.int64)  # noqa: E731
        self.rows, self.cols = np.minimum(centres(self.shape[0]), cells[0] - 1), np.minimum(centres(self.shape[1]), cells[1] - 1)

    def wrap(self, writer) -> _RegriddedWriter:
        return _RegriddedWriter(writer, self.rows, self.cols)


class _RegriddedWriter:
    def __init__(self, writer, rows: np.ndarray, cols: np.ndarray) -> None:
        self.writer, self.rows, self.cols = writer, rows, cols

    def write_rows(self, row0: int, block: np.ndarray) -> None:
        """Cell rows [row0, row0 + n) -> the output rows whose centres lie in them."""
        n = block.shape[1]
        mine = np.flatnonzero((self.rows >= row0) & (self.rows < row0 + n))
        if mine.size:
            self.writer.write_rows(int(mine[0]), block[:, self.rows[mine] - row0][:, :, self.cols])

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.abort()


def _blend_rows(files: SceneFiles, encoder, writers, row_starts, col_starts, window, weight, p, batch_size, cells,
                progress) -> None:  # fmt: skip
    """Accumulate weighted window maps over one row band at a time; flush the rows no later window touches."""
    win_h, win_w = window
    h_cells, w_cells = cells
    span_w = max(col_starts) + win_w
    acc: np.ndarray | None = None  # (D, rows, span_w) weighted sums for grid rows [acc_row0, ...)
    wsum = np.zeros((0, span_w))
    acc_row0 = 0
    bar = tqdm(total=len(row_starts) * len(col_starts), desc="embed scene", unit="window", disable=not progress)
    for band, r0 in enumerate(row_starts):
        rows_needed = r0 + win_h - acc_row0
        for batch in _batches(col_starts, batch_size):
            reads = [files.read(r0 * p, c0 * p, win_h * p, win_w * p) for c0 in batch]
            windows = {g: np.stack([r[g] for r in reads]) for g in reads[0]}
            maps, valid = encoder.encode(windows)  # (B, h, w, D), (B, h, w)
            if acc is None:
                acc = np.zeros((maps.shape[-1], 0, span_w), dtype=np.float64)
            if acc.shape[1] < rows_needed:
                grow = rows_needed - acc.shape[1]
                acc = np.concatenate([acc, np.zeros((acc.shape[0], grow, span_w))], axis=1)
                wsum = np.concatenate([wsum, np.zeros((grow, span_w))], axis=0)
            for c0, m, v in zip(batch, maps, valid, strict=True):
                wv = weight * v  # (h, w): invalid cells carry no weight
                rs = slice(r0 - acc_row0, r0 - acc_row0 + win_h)
                acc[:, rs, c0 : c0 + win_w] += np.moveaxis(m, -1, 0) * wv
                wsum[rs, c0 : c0 + win_w] += wv
            bar.update(len(batch))
        done_until = min(row_starts[band + 1] if band + 1 < len(row_starts) else h_cells, h_cells)
        n_done = done_until - acc_row0
        if n_done > 0:
            with np.errstate(invalid="ignore", divide="ignore"):
                block = np.where(wsum[:n_done] > 0, acc[:, :n_done] / wsum[:n_done], np.nan).astype(np.float32)
            for w in writers:
                w.write_rows(acc_row0, block[:, :, :w_cells])
            acc, wsum, acc_row0 = acc[:, n_done:], wsum[n_done:], done_until
    bar.close()
