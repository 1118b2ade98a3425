"""Bandset merge and unmerge (bandset-merge-experiments.md): the worked example, mid-layer merge, target encoder."""

from __future__ import annotations

import torch

from spacenit.arch.bandset_merge import BandsetMerge, BandsetUnmerge, merge_sequence
from spacenit.arch.models import create_model
from spacenit.sensors import LANDSAT, SENTINEL1, SENTINEL2_L2A
from spacenit.train.objectives import LatentPrediction

SENSORS = [SENTINEL2_L2A, SENTINEL1, LANDSAT]


def batch(B: int = 2, T: int = 2, px: int = 16):
    g = torch.Generator().manual_seed(0)
    images = {s.name: torch.randn(B, T, s.num_bands, px, px, generator=g) for s in SENSORS}
    months = {s.name: torch.tensor([[4, 10]] * B) for s in SENSORS}
    return images, months


def test_merge_at_init_is_the_mean_of_active_bandsets_the_seed_example() -> None:
    """S2, one position, mask [ENCODER, DECODER, ENCODER]: proj(cat(t0, 0, t2)) * 3/2 = (t0 + t2) / 2."""
    merge = BandsetMerge(dim=16, num_bandsets=3)
    t = torch.randn(1, 1, 3, 16)  # (B, M, n, D)
    visible = torch.tensor([[[True, False, True]]])
    merged, merged_visible = merge(t, visible)
    torch.testing.assert_close(merged[0, 0], (t[0, 0, 0] + t[0, 0, 2]) / 2)
    assert merged_visible.tolist() == [[True]]
    all_visible, _ = merge(t, torch.ones(1, 1, 3, dtype=torch.bool))
    torch.testing.assert_close(all_visible[0, 0], t[0, 0].mean(0))
    _, none_visible = merge(t, torch.zeros(1, 1, 3, dtype=torch.bool))
    assert none_visible.tolist() == [[False]]
    # The hidden bandset's content never leaks into the merged token.
    leaked = t.clone()
    leaked[0, 0, 1] = 1e6
    torch.testing.assert_close(merge(leaked, visible)[0], merged)
    unmerged = BandsetUnmerge(16, 3)(merged)  # (B, M, n, D), each bandset a copy at init
    torch.testing.assert_close(unmerged, merged[:, :, None].expand(-1, -1, 3, -1))


def test_merged_sequence_has_one_token_per_sensor_timestep_and_patch() -> None:
    model = create_model("spacenit_nano", SENSORS, depth=1, decoder_depth=1, merge_bandsets=True)
    images, months = batch()
    tok = model.encoder.tokenizer(images, months, 8)
    assert tok.tokens.shape[1] == (3 + 1 + 2) * 2 * 4  # S2 3 groups, S1 1, Landsat 2; 2 timesteps; 4 patches
    x, keep, layout = merge_sequence(model.encoder.merges, tok.tokens, ~tok.absent, tok.layout)
    assert x.shape[1] == keep.shape[1] == layout.num_tokens == 3 * 2 * 4
    assert layout.merged and layout.blocks[0].groups == ("10m+20m+60m",)
    # The encoder's output follows the merged layout; the target encoder's does not.
    encoded, _, enc_layout = model.encoder.encode(tok)
    assert encoded.shape[1] == 24 and enc_layout.merged


def test_mid_layer_merge_shortens_the_sequence_after_layer_k() -> None:
    torch.manual_seed(0)
    model = create_model("spacenit_nano", SENSORS, depth=4, decoder_depth=1, merge_bandsets=True,
                         merge_after_layer=1, num_registers=1)  # fmt: skip
    lengths = []
    for block in model.encoder.transformer.blocks:
        block.register_forward_hook(lambda mod, args, out: lengths.append(args[0].shape[1]))
    images, months = batch()
    encoded, keep, _ = model.encoder(images, months, 8)
    assert lengths == [1 + 48, 1 + 48, 1 + 24, 1 + 24]  # register + tokens: blocks 0-1 full, 2-3 merged
    assert encoded.shape[1] == 24 and keep.all()


def test_merge_before_the_transformer_equals_the_mean_of_bandset_tokens_at_init() -> None:
    torch.manual_seed(0)
    model = create_model("spacenit_nano", [SENTINEL2_L2A], depth=1, decoder_depth=1, merge_bandsets=True).eval()
    images, months = batch()
    images = {"sentinel2_l2a": images["sentinel2_l2a"]}
    months = {"sentinel2_l2a": months["sentinel2_l2a"]}
    tok = model.encoder.tokenizer(images, months, 8)
    merged, _, _ = merge_sequence(model.encoder.merges, tok.tokens, ~tok.absent, tok.layout)
    torch.testing.assert_close(merged, tok.tokens.unflatten(1, (3, -1)).mean(1))


def test_target_encoder_does_not_merge_and_stays_aligned_for_ema() -> None:
    torch.manual_seed(0)
    model = create_model("spacenit_nano", SENSORS, depth=2, decoder_depth=1, merge_bandsets=True, merge_after_layer=0)
    objective = LatentPrediction(model)
    online = dict(model.encoder.named_parameters())
    target = dict(objective.target_encoder.named_parameters())
    assert list(online) == list(target) and any(n.startswith("merges.") for n in target)
    images, months = batch()
    with torch.no_grad():
        target_out, _, tok = objective.target_encoder(images, months, 8)
    assert target_out.shape[1] == tok.tokens.shape[1] == 48  # per-bandset targets
    out = objective({"images": images, "months": months}, 8, torch.Generator().manual_seed(0))
    out["loss"].backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    objective.update_target()
    at_init = BandsetMerge(128, 3).proj.weight.detach()
    assert not torch.equal(objective.target_encoder.merges["sentinel2_l2a"].proj.weight, at_init)  # EMA reached the merge
