"""Per-patch embedding maps: the encoder's tokens averaged per ground cell.

The encoder emits one token per (sensor, token group, timestep, patch). A map
keeps the spatial layout and averages the rest away: the embedding of cell
(row, col) is the mean of the present tokens at that cell, over every group
and timestep. Cells without any present token are invalid. Tokens of
non-spatial sensors (one per tile) join the pooled vector, not the map.

Cells are found from the token layout's positions: rows and columns are
ranked, so the map does not depend on the unit positions use (patch index or
reference-GSD pixels). The layout is that of the encoder's output: when the
encoder merges band sets or upsamples to another patch size, its output has
another token count than the tokenizer's layout, and the layout is rebuilt
the same way (`merge()`, `at_patch_size()`).
"""

from __future__ import annotations

import torch

from spacenit.arch.models import SpaceNitModel


def _positions(layout, device) -> torch.Tensor:
    positions = layout.positions
    return (positions(device) if callable(positions) else positions).to(device)  # (N, 3)


def _grid(layout) -> tuple[int, int]:
    return tuple(getattr(layout, "spatial_shape", None) or layout.grid)


def _num_tokens(layout) -> int:
    return int(getattr(layout, "num_tokens", None) or len(_positions(layout, "cpu")))


def output_layout(model: SpaceNitModel, layout, num_tokens: int, patch_size: int):
    """The layout of the encoder's output (N = `num_tokens`), from the tokenizer's `layout`."""
    if _num_tokens(layout) == num_tokens:
        return layout
    config = getattr(model.encoder, "config", None)
    if getattr(config, "merge_bandsets", False) and hasattr(layout, "merge"):
        layout = layout.merge()
    out_patch = getattr(config, "output_patch_size", None)
    if out_patch and out_patch != patch_size and hasattr(layout, "at_patch_size"):
        layout = layout.at_patch_size(out_patch)
    if _num_tokens(layout) != num_tokens:
        raise ValueError(f"cannot place the encoder's {num_tokens} output tokens: the token layout has {_num_tokens(layout)}")
    return layout


def cell_index(layout, device) -> tuple[torch.Tensor, tuple[int, int]]:
    """(N,) flat cell index row * w + col of every token (-1 for non-spatial tokens), and (h, w)."""
    positions = _positions(layout, device)
    h, w = _grid(layout)
    spatial = torch.ones(len(positions), dtype=torch.bool, device=device)
    for block, start, stop in (layout.spans() if hasattr(layout, "spans") else []):
        if not block.spatial:
            spatial[start:stop] = False
    rows = torch.unique(positions[spatial, 0], return_inverse=True)[1]
    cols = torch.unique(positions[spatial, 1], return_inverse=True)[1]
    if int(rows.max()) + 1 != h or int(cols.max()) + 1 != w:
        raise ValueError(f"token positions span {int(rows.max()) + 1} x {int(cols.max()) + 1} cells, the layout says {h} x {w}")
    cells = torch.full((len(positions),), -1, dtype=torch.long, device=device)
    cells[spatial] = rows * w + cols
    return cells, (h, w)


def average_per_cell(encoded: torch.Tensor, keep: torch.Tensor, cells: torch.Tensor, num_cells: int) -> tuple[torch.Tensor, torch.Tensor]:
    """encoded (B, N, D), keep (B, N), cells (N,), -1 = none -> mean per cell (B, num_cells, D), count (B, num_cells)."""
    B, _, D = encoded.shape
    on_grid = cells >= 0
    encoded, weight, cells = encoded[:, on_grid], keep[:, on_grid].to(encoded.dtype), cells[on_grid]  # weight (B, N')
    sums = encoded.new_zeros(B, num_cells, D).index_add_(1, cells, encoded * weight.unsqueeze(-1))
    counts = encoded.new_zeros(B, num_cells).index_add_(1, cells, weight)
    return sums / counts.clamp_min(1.0).unsqueeze(-1), counts


@torch.no_grad()
def embed_with_maps(
    model: SpaceNitModel, images, months, patch_size: int, gsd_m: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pooled (B, D), per-cell map (B, h, w, D) and cell validity (B, h, w) from one encoder pass.

    `gsd_m`: the pixel size of the input grid (default: the model's reference GSD).

    Pooled is the mean over every present token, as `SpaceNitModel.embed`.
    """
    encoded, keep, tokens = model.encoder(images, months, patch_size, gsd_m=gsd_m)
    layout = output_layout(model, tokens.layout, encoded.shape[1], patch_size)
    cells, (h, w) = cell_index(layout, encoded.device)
    encoded = encoded.float()
    maps, counts = average_per_cell(encoded, keep, cells, h * w)
    weight = keep.to(torch.float32).unsqueeze(-1)
    pooled = (encoded * weight).sum(1) / weight.sum(1).clamp_min(1.0)  # (B, D)
    B = encoded.shape[0]
    return pooled, maps.reshape(B, h, w, -1), (counts > 0).reshape(B, h, w)
