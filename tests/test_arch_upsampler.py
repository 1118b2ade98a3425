"""Hybrid patch size (hybrid-patch-size-plan.md): process at a coarse patch size, output at a fine one."""

from __future__ import annotations

import pytest
import torch

from spacenit.arch.layout import SensorBlock, TokenLayout
from spacenit.arch.models import create_model
from spacenit.arch.upsampler import PatchUpsampler, upsample_mask
from spacenit.sensors import SENTINEL, SENTINEL2_L2A
from spacenit.train.objectives import LatentPrediction

LAYOUT = TokenLayout((SensorBlock("s2", ("a", "b"), 0, 2),), grid=(2, 3), patch_size=8, gsd_scale=1.0)  # 2 x 2 x 6 tokens


def test_bilinear_upsampling_keeps_constant_maps_and_the_layout() -> None:
    x = torch.arange(4.0).repeat_interleave(6)[None, :, None].expand(1, 24, 5)  # each (group, timestep) map constant
    up, layout = PatchUpsampler(5)(x, LAYOUT, 2)
    assert layout.grid == (8, 12) and layout.patch_size == 2 and up.shape == (1, 4 * 96, 5)
    torch.testing.assert_close(up, torch.arange(4.0).repeat_interleave(96)[None, :, None].expand(1, 384, 5))
    ramp = torch.arange(3.0).repeat(2).repeat(4)[None, :, None]  # a column ramp: interior stays linear
    up_ramp, _ = PatchUpsampler(1)(ramp, LAYOUT, 4)
    row = up_ramp[0, :6, 0]
    torch.testing.assert_close(row[1:5], torch.tensor([0.25, 0.75, 1.25, 1.75]))
    with pytest.raises(ValueError, match="divisor"):
        PatchUpsampler(5)(x, LAYOUT, 3)


def test_masks_upsample_nearest() -> None:
    mask = torch.zeros(1, 24, dtype=torch.bool)
    mask[0, 7] = True  # group a, timestep 1, patch (0, 1)
    up = upsample_mask(mask, LAYOUT, 4)  # each patch -> 2 x 2
    grid = up[0, 24:48].view(4, 6)
    assert grid[:2, 2:4].all() and grid.sum() == 4 and up.sum() == 4


def test_learned_upsampler_starts_close_to_bilinear() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 24, 16)
    bilinear, _ = PatchUpsampler(16)(x, LAYOUT, 1)
    learned, _ = PatchUpsampler(16, "learned")(x, LAYOUT, 1)
    assert (learned - bilinear).norm() / bilinear.norm() < 0.2


def test_hybrid_encoder_outputs_fine_tokens_and_the_objective_uses_a_fine_target() -> None:
    torch.manual_seed(0)
    model = create_model("spacenit_nano", [SENTINEL2_L2A], depth=1, decoder_depth=1, output_patch_size=1)
    images = {"sentinel2_l2a": torch.randn(2, 1, 12, 16, 16)}
    images["sentinel2_l2a"][1, :, :, :2, :] = SENTINEL  # two missing pixel rows: absent at ps 1, present at ps 8
    months = {"sentinel2_l2a": torch.tensor([[3], [4]])}
    encoded, keep, tok = model.encoder(images, months, 8)
    assert tok.tokens.shape[1] == 3 * 4  # processed at patch size 8 ...
    assert encoded.shape[1] == keep.shape[1] == 3 * 256  # ... output at patch size 1
    objective = LatentPrediction(model)
    calls = []
    objective.target_encoder.tokenizer.register_forward_hook(lambda mod, args, out: calls.append(args[2]))
    out = objective({"images": images, "months": months}, 8, torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert calls == [1] and torch.isfinite(out["loss"])  # the target is encoded at patch size 1
    assert model.encoder.tokenizer.patch_embed["sentinel2_l2a__10m"].weight.grad is not None
