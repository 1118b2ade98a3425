"""Embedding a GeoTIFF scene larger than the model's window: sliding windows, blended, georeferenced.

The scene is cut into windows of `window_px` pixels overlapping by
`overlap_px` (both multiples of the patch size), on the grid of patches
anchored at the scene's top-left pixel. Each window goes through the encoder
and becomes a per-patch embedding map (see `patch_maps.py`). Where windows
overlap, a cell's embedding is the weighted mean of the windows' values, the
weight a tent that is 1 at a window's centre and falls towards its edges:
tokens near a window edge saw less context, and the seams vanish.

The output grid is the scene's grid coarsened by the patch size (same CRS and
origin, pixels `patch_size` times larger). When the scene's size is not a
multiple of the patch size, the last row/column of cells reaches past the
scene by less than one patch (padded with no-data). Cells without any valid
pixel are NaN. Scene bands are bound to the model's bands by name
(`bands=` names them when the file's band descriptions do not).

Windows are processed a row of windows at a time and finished rows go to the
writers at once, so memory holds about one window-row of the output.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.windows import Window
from tqdm import tqdm

from spacenit.arch.models import SpaceNitModel
from spacenit.evaluation.embed import EmbedError, resolve_model, to_device
from spacenit.evaluation.georaster import TIFF_SUFFIXES, open_writer
from spacenit.evaluation.inputs import InputBindingError, ModelInputs, bind_sensors
from spacenit.evaluation.patch_maps import embed_with_maps
from spacenit.sensors import SENTINEL
from spacenit.train.checkpoint import CheckpointMeta, load_checkpoint


@dataclass
class SceneEmbedding:
    outputs: list[Path]
    crs: str
    transform: tuple[float, ...]
    shape: tuple[int, int]  # (rows, cols) of the embedding grid
    channels: int
    windows: int


def window_starts(cells: int, window_cells: int, stride_cells: int) -> list[int]:
    """Start cells of windows covering [0, cells): every stride, plus one flush with the end."""
    if cells <= window_cells:
        return [0]
    starts = list(range(0, cells - window_cells + 1, stride_cells))
    if starts[-1] + window_cells < cells:
        starts.append(cells - window_cells)
    return starts


def tent_weights(n: int) -> np.ndarray:
    """(n,) weights: 1 at the centre, falling linearly to 1 / ceil(n / 2) at the edges; never 0."""
    i = np.arange(n)
    return (np.minimum(i, n - 1 - i) + 1) / math.ceil(n / 2)


def _scene_band_names(src, bands: Sequence[str] | None) -> list[str]:
    if bands is not None:
        if len(bands) != src.count:
            raise EmbedError(f"{src.name} has {src.count} bands, {len(bands)} band names were given: {list(bands)}")
        return list(bands)
    if all(src.descriptions):
        return list(src.descriptions)
    raise EmbedError(f"{src.name} does not name its bands; give their names in file order (e.g. --bands B2,B3,B4,B5,B6,B7)")


def _choose_sensor(meta: CheckpointMeta, names: list[str], sensor: str | None) -> str:
    if sensor is not None:
        if sensor not in {s.name for s in meta.sensors}:
            raise EmbedError(f"the model has no sensor {sensor!r}; it has {[s.name for s in meta.sensors]}")
        return sensor
    overlap = {s.name: len(set(s.bands) & set(names)) for s in meta.sensors}
    best = max(overlap, key=overlap.get)
    if overlap[best] == 0:
        raise EmbedError(f"no model sensor has any of the scene's bands {names}; the model's sensors: "
                         f"{ {s.name: list(s.bands) for s in meta.sensors} }")  # fmt: skip
    return best


class SceneEncoder:
    """Windows of one scene -> blended per-cell embeddings, row band by row band."""

    def __init__(self, net: SpaceNitModel, meta: CheckpointMeta, inputs: ModelInputs, *, patch_size: int, month: int = 0,
                 gsd_m: float | None = None) -> None:  # fmt: skip
        self.net, self.meta, self.inputs = net, meta, inputs
        self.patch_size, self.month, self.gsd_m = patch_size, month, gsd_m

    def encode(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw windows (B, C_scene, H, W), sentinel = no data -> maps (B, h, w, D), valid (B, h, w)."""
        data = {self.inputs.bindings[0].data_sensor: windows[:, None]}  # (B, T=1, C, H, W)
        gsd_m = self.gsd_m or self.net.config.reference_gsd_m
        images = self.inputs.batch(data, gsd_m)
        B, _, _, H, W = windows[:, None].shape
        for spec in self.meta.sensors:  # sensors the scene does not feed are entirely absent
            if spec.name not in images:
                images[spec.name] = torch.full((B, 1, spec.num_bands, H, W) if spec.spatial else (B, 1, spec.num_bands), SENTINEL)
        device = next(self.net.parameters()).device
        images = to_device(images, device)
        months = {k: torch.full((B, 1), self.month, dtype=torch.long, device=device) for k in images}
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            _, maps, valid = embed_with_maps(self.net, images, months, self.patch_size, self.gsd_m)
        if tuple(maps.shape[1:3]) != (H // self.patch_size, W // self.patch_size):
            raise EmbedError(f"the model returns {tuple(maps.shape[1:3])} cells for a {H}x{W} px window at patch size "
                             f"{self.patch_size} (an output patch size of its own): scenes need one cell per patch")  # fmt: skip
        return maps.float().cpu().numpy(), valid.cpu().numpy()


def _read_window(src, row0_px: int, col0_px: int, height_px: int, width_px: int) -> np.ndarray:
    """(C, height_px, width_px) float32 with SENTINEL where the scene has no data or ends."""
    out = np.full((src.count, height_px, width_px), SENTINEL, dtype=np.float32)
    rows, cols = min(height_px, src.height - row0_px), min(width_px, src.width - col0_px)
    if rows <= 0 or cols <= 0:
        return out
    block = src.read(window=Window(col0_px, row0_px, cols, rows), masked=True)
    values = block.data.astype(np.float32)  # integer scenes cannot hold the sentinel: convert first
    values[np.ma.getmaskarray(block) | ~np.isfinite(values)] = SENTINEL
    out[:, :rows, :cols] = values
    return out


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def embed_scene(
    model: str | Path,
    scene: str | Path,
    outputs: str | Path | Sequence[str | Path],
    *,
    bands: Sequence[str] | None = None,
    sensor: str | None = None,
    window_px: int = 64,
    overlap_px: int = 16,
    patch_size: int | None = None,
    batch_size: int = 16,
    month: int = 0,
    tracking_uri: str | None = None,
    allow_missing_bands: bool = False,
    progress: bool = True,
) -> SceneEmbedding:
    """Embed `scene` window by window into each of `outputs` (.tif -> COG GeoTIFF, .zarr -> Zarr).

    A scene lacking some of the model sensor's bands is refused unless `allow_missing_bands`
    (they are then no data).
    """
    paths = [Path(outputs)] if isinstance(outputs, str | Path) else [Path(o) for o in outputs]
    for path in paths:
        if path.suffix.lower() not in (*TIFF_SUFFIXES, ".zarr"):
            raise EmbedError(f"{path}: write a scene's embeddings to a .tif (Cloud-Optimized GeoTIFF) or a .zarr path")
    net, meta = load_checkpoint(resolve_model(model, tracking_uri))
    net.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    p = patch_size or meta.patch_size
    if window_px % p or overlap_px % p or not 0 <= overlap_px < window_px:
        raise EmbedError(f"window {window_px} px and overlap {overlap_px} px must be multiples of the patch size {p}, overlap < window")
    with rasterio.open(scene) as src:
        if src.crs is None:
            raise EmbedError(f"{scene} has no CRS: a georeferenced output needs one (assign it with gdal_edit.py -a_srs)")
        names = _scene_band_names(src, bands)
        target = _choose_sensor(meta, names, sensor)
        spec = next(s for s in meta.sensors if s.name == target)
        try:
            binding = bind_sensors([spec], {"scene": names}, sensor_map={target: "scene"},
                                   allow_missing_bands=allow_missing_bands)  # fmt: skip
        except InputBindingError as e:
            raise EmbedError(f"{scene}: {e}") from None
        # Positions scale with the scene's own pixel size (metres in a projected CRS).
        gsd_m = None if src.crs.is_geographic else float(abs(src.res[0]))
        encoder = SceneEncoder(net, meta, ModelInputs(binding, {target: meta.stats[target]}), patch_size=p, month=month,
                               gsd_m=gsd_m)  # fmt: skip
        h_cells, w_cells = math.ceil(src.height / p), math.ceil(src.width / p)
        win_h, win_w = min(window_px // p, h_cells), min(window_px // p, w_cells)
        stride = (window_px - overlap_px) // p
        row_starts, col_starts = window_starts(h_cells, win_h, stride), window_starts(w_cells, win_w, stride)
        weight = tent_weights(win_h)[:, None] * tent_weights(win_w)[None, :]  # (win_h, win_w)
        grid = {"channels": net.config.dim, "height": h_cells, "width": w_cells, "crs": src.crs,
                "transform": src.transform @ Affine.scale(p),
                "tags": {"model": str(model), "scene": str(scene), "patch_size": p, "window_px": window_px,
                         "overlap_px": overlap_px, "sensor": target, "bands": ",".join(names)}}  # fmt: skip
        writers = [open_writer(path, **grid) for path in paths]
        try:
            _blend_rows(src, encoder, writers, row_starts, col_starts, (win_h, win_w), weight, p, batch_size, progress)
        except BaseException:
            for w in writers:
                w.abort()
            raise
        for w in writers:
            w.close()
        return SceneEmbedding(paths, src.crs.to_string(), tuple(grid["transform"])[:6], (h_cells, w_cells), net.config.dim,
                              len(row_starts) * len(col_starts))  # fmt: skip


def _blend_rows(src, encoder: SceneEncoder, writers, row_starts, col_starts, window, weight, p, batch_size, progress) -> None:
    """Accumulate weighted window maps over one row band at a time; flush the rows no later window touches."""
    win_h, win_w = window
    w_cells = max(col_starts) + win_w
    h_cells = max(row_starts) + win_h
    acc: np.ndarray | None = None  # (D, rows, w_cells) weighted sums for grid rows [acc_row0, ...)
    wsum = np.zeros((0, w_cells))
    acc_row0 = 0
    bar = tqdm(total=len(row_starts) * len(col_starts), desc="embed scene", unit="window", disable=not progress)
    for band, r0 in enumerate(row_starts):
        rows_needed = r0 + win_h - acc_row0
        for batch in _batches(col_starts, batch_size):
            windows = np.stack([_read_window(src, r0 * p, c0 * p, win_h * p, win_w * p) for c0 in batch])
            maps, valid = encoder.encode(windows)  # (B, h, w, D), (B, h, w)
            if acc is None:
                acc = np.zeros((maps.shape[-1], 0, w_cells), dtype=np.float64)
            if acc.shape[1] < rows_needed:
                grow = rows_needed - acc.shape[1]
                acc = np.concatenate([acc, np.zeros((acc.shape[0], grow, w_cells))], axis=1)
                wsum = np.concatenate([wsum, np.zeros((grow, w_cells))], axis=0)
            for c0, m, v in zip(batch, maps, valid, strict=True):
                wv = weight * v  # (h, w): invalid cells carry no weight
                rs = slice(r0 - acc_row0, r0 - acc_row0 + win_h)
                acc[:, rs, c0 : c0 + win_w] += np.moveaxis(m, -1, 0) * wv
                wsum[rs, c0 : c0 + win_w] += wv
            bar.update(len(batch))
        done_until = row_starts[band + 1] if band + 1 < len(row_starts) else h_cells
        n_done = done_until - acc_row0
        with np.errstate(invalid="ignore", divide="ignore"):
            block = np.where(wsum[:n_done] > 0, acc[:, :n_done] / wsum[:n_done], np.nan).astype(np.float32)
        for w in writers:
            w.write_rows(acc_row0, block)
        acc, wsum, acc_row0 = acc[:, n_done:], wsum[n_done:], done_until
    bar.close()
