"""Which vector stands for a sample: the mean of its patch tokens, its register (class) tokens, or both.

ssl-eval-notes.md (Pixio): a model trained with register tokens that take part
in its objective carries a global summary in them; Pixio probes the mean of
its class tokens, MAE the mean of the patch tokens, and the better choice
depends on the objective (Bird-MAE: patch mean 8.7% cmAP, class token 5.7%).
So the pooling is an option of every embedding path:

- ``mean``: the mean of the encoder's present tokens (what `SpaceNitModel.embed` returns);
- ``cls``: the mean of the register tokens' outputs (`Encoder.encode_with_registers`);
- ``both``: the two concatenated, [cls, mean] (B, 2D).

A model without register tokens (`num_registers = 0`) has no ``cls`` embedding;
asking for one is an error that says so.
"""

from __future__ import annotations

import torch

from spacenit.arch.models import SpaceNitModel
from spacenit.arch.pooling import mean_pool
from spacenit.arch.upsampler import upsample_mask
from spacenit.evaluation.errors import ProbeError
from spacenit.evaluation.patch_maps import average_per_cell, cell_index, output_layout

POOLINGS = ("mean", "cls", "both")


class PoolingError(ProbeError):
    """A pooling the model cannot give."""


def check_pooling(pooling: str, model: SpaceNitModel | None = None) -> str:
    if pooling not in POOLINGS:
        raise PoolingError(f"unknown pooling {pooling!r}; choose one of {list(POOLINGS)}")
    if model is not None and pooling != "mean" and not model.config.num_registers:
        raise PoolingError(f"pooling {pooling!r} needs register tokens, and this model has none "
                           "(model.num_registers = 0); use --pooling mean")  # fmt: skip
    return pooling


@torch.no_grad()
def pooled_embeddings(model: SpaceNitModel, images, months, patch_size: int, *, gsd_m: float | None = None,
                      pooling: str = "mean", patch_maps: bool = False):  # fmt: skip
    """One encoder pass -> pooled (B, D) or (B, 2D), and with `patch_maps` the per-cell maps (B, h, w, D)
    and their validity (B, h, w), as `patch_maps.embed_with_maps` computes them."""
    check_pooling(pooling, model)
    encoder = model.encoder
    tok = encoder.tokenizer(images, months, patch_size, gsd_m)
    encoded, keep, layout, registers = encoder.encode_with_registers(tok)  # (B, N, D), (B, N), ..., (B, R, D)
    out_patch = encoder.config.output_patch_size
    if encoder.upsampler is not None and out_patch != patch_size:  # as Encoder.forward
        encoded, _ = encoder.upsampler(encoded, layout, out_patch)  # (B, N_fine, D)
        keep = upsample_mask(keep, layout, out_patch)
    encoded = encoded.float()
    mean = mean_pool(encoded, keep)  # (B, D)
    cls = registers.float().mean(dim=1) if registers.shape[1] else None  # (B, D)
    pooled = {"mean": mean, "cls": cls, "both": torch.cat((cls, mean), dim=1) if cls is not None else None}[pooling]
    if not patch_maps:
        return pooled, None, None
    grid_layout = output_layout(model, tok.layout, encoded.shape[1], patch_size)
    cells, (h, w) = cell_index(grid_layout, encoded.device)
    maps, counts = average_per_cell(encoded, keep, cells, h * w)
    B = encoded.shape[0]
    return pooled, maps.reshape(B, h, w, -1), (counts > 0).reshape(B, h, w)
