"""muP (spacenit.train.mup): the coordinate check, the roles and scales it assigns, and the base width being SP."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spacenit.arch.models import SpaceNitModel
from spacenit.arch.transformer import TransformerBlock
from spacenit.config import ConfigError
from spacenit.sensors import SENTINEL2_L2A
from spacenit.train import mup
from spacenit.train.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from spacenit.train.optim import build_optimizer
from spacenit.train.pretrain import build_config

BASE = 64
WIDTHS = (64, 128, 256)


def build(width: int, use_mup: bool, *overrides: str):
    """A train module at encoder and predictor width `width` (4 heads), muP relative to width 64."""
    cfg = build_config(overrides=[f"model.dim={width}", f"model.decoder_dim={width}", "model.heads=4", "model.decoder_heads=4",
                                  "model.depth=2", "model.decoder_depth=1", f"model.mup={str(use_mup).lower()}",
                                  f"model.mup_base_dim={BASE}", *overrides], preset="small")  # fmt: skip

    def make(model_config):
        return cfg.objective.build(SpaceNitModel(model_config, [SENTINEL2_L2A]), cfg.masking.build(), total_steps=100)

    torch.manual_seed(0)
    module = make(cfg.model)
    roles = None
    if use_mup:
        roles = mup.width_roles(module, cfg.model, make)
        mup.initialize(module, roles)
    return module, cfg, roles


def batch() -> dict:
    g = torch.Generator().manual_seed(1)
    return {"images": {"sentinel2_l2a": torch.randn(4, 1, 12, 16, 16, generator=g)},
            "months": {"sentinel2_l2a": torch.full((4, 1), 3)}}  # fmt: skip


def block_outputs(module) -> list[torch.Tensor]:
    """Each encoder block's output (B, L, D) on the fixed batch, in eval mode."""
    outs: list[torch.Tensor] = []
    blocks = [m for m in module.model.encoder.modules() if isinstance(m, TransformerBlock)]
    hooks = [b.register_forward_hook(lambda m, i, o: outs.append(o.detach())) for b in blocks]
    module.eval()
    with torch.no_grad():
        module.model.encoder(batch()["images"], batch()["months"], 4)
    module.train()
    for h in hooks:
        h.remove()
    return outs


def activation_change(width: int, use_mup: bool, lr: float = 1e-2, steps: int = 3) -> list[float]:
    """RMS per encoder block of how far its output moved in `steps` AdamW steps of latent prediction."""
    module, cfg, roles = build(width, use_mup, f"train.lr={lr}", "objective.contrastive_weight=0", "objective.uniformity_weight=0")
    optim = build_optimizer(module, cfg.train, (lambda name, muon: roles[name].lr_scale(muon)) if roles else None)
    before = block_outputs(module)
    for step in range(steps):
        module(batch(), 4, torch.Generator().manual_seed(step), step)["loss"].backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        module.after_optimizer_step()
    return [float((b - a).pow(2).mean().sqrt()) for a, b in zip(before, block_outputs(module), strict=True)]


def width_slopes(use_mup: bool) -> list[float]:
    """Per block, the slope of log2(activation change) against log2(width): 0 is flat, 1 doubles with the width."""
    changes = np.array([activation_change(w, use_mup) for w in WIDTHS])  # (widths, blocks)
    return [float(np.polyfit(np.log2(WIDTHS), np.log2(changes[:, b]), 1)[0]) for b in range(changes.shape[1])]


def test_coordinate_check_activations_stay_flat_across_widths_with_mup_and_drift_without() -> None:
    """Tensor Programs V's coordinate check (section 5 / figure 5): after a few AdamW steps at one learning rate,
    how far each block's output moved grows with the width under SP (measured slopes 0.8 and 1.0: about x2
    per doubling) and stays put under muP (0.03 and 0.06)."""
    sp, mu = width_slopes(False), width_slopes(True)
    assert all(s > 0.5 for s in sp), f"SP should drift with width: slopes {sp}"
    assert all(abs(s) < 0.2 for s in mu), f"muP should be flat across widths: slopes {mu}"


def test_roles_and_scales_of_a_model_twice_the_base_width() -> None:
    module, cfg, roles = build(2 * BASE, True, "objective.name=dual_branch")
    qkv = "model.encoder.transformer.blocks.0.attn.qkv.weight"
    assert roles[qkv] == mup.WidthRole("hidden", 2.0, fixed_std=True)
    assert roles[qkv].init_scale() == pytest.approx(2**-0.5)  # std 0.02 -> 0.02 / sqrt(2): ~ 1/sqrt(fan_in)
    assert roles[qkv].lr_scale(muon=False) == 0.5 and roles[qkv].lr_scale(muon=True) == pytest.approx(2**-0.5)
    proj = "model.predictor.input_proj.weight"  # PyTorch's default init is ~ 1/sqrt(fan_in) already
    assert roles[proj] == mup.WidthRole("hidden", 2.0) and roles[proj].init_scale() == 1.0
    for readout in ("projection.fc2.weight", "pixel.head.proj.sentinel2_l2a__10m.weight"):
        assert roles[readout] == mup.WidthRole("output", 2.0)
        assert roles[readout].init_scale() == pytest.approx(2**-0.5) and roles[readout].lr_scale(False) == 0.5
    assert roles["model.encoder.tokenizer.month_embed.proj.weight"].role == "input"
    for vector in ("model.encoder.tokenizer.group_embed", "model.encoder.tokenizer.patch_embed.sentinel2_l2a__10m.weight",
                   "model.encoder.transformer.blocks.0.attn_norm.weight", "projection.fc2.bias"):  # fmt: skip
        assert roles[vector].lr_scale(False) == 1.0 and roles[vector].init_scale() == 1.0, vector
    # The rescaled init, measured: the blocks' matrices are 0.02 / sqrt(2).
    assert float(module.state_dict()[qkv].std()) == pytest.approx(0.02 / math.sqrt(2), rel=0.03)
    # The EMA target encoder was rescaled alike: it still equals the online encoder.
    for name, p in module.target_encoder.state_dict().items():
        assert torch.equal(p, module.model.encoder.state_dict()[name]), name
    # Attention logits: 1/head_dim, equal to SP's 1/sqrt(head_dim) at the base width.
    head_dim = 2 * BASE // 4
    assert module.model.encoder.transformer.blocks[0].attn.scale == pytest.approx(1 / math.sqrt(head_dim * 2))
    assert module.model.predictor.transformer.blocks[0].attn.scale == pytest.approx(1 / math.sqrt(head_dim * 2))
    assert cfg.model.attention_scale(head_dim) == pytest.approx(math.sqrt(head_dim / 2) / head_dim)  # sqrt(base hd) / hd


def test_mup_at_the_base_width_is_the_standard_parameterization() -> None:
    sp, _, _ = build(BASE, False)
    mu, cfg, roles = build(BASE, True)
    for (name, a), b in zip(sp.state_dict().items(), mu.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert all(r.lr_scale(False) == 1.0 == r.lr_scale(True) for r in roles.values())
    images, months = batch()["images"], batch()["months"]
    sp.eval(), mu.eval()
    with torch.no_grad():  # 1/sqrt(head_dim * 1): the same attention
        torch.testing.assert_close(mu.model.embed(images, months, 4), sp.model.embed(images, months, 4), atol=1e-6, rtol=1e-5)


def test_a_base_width_the_heads_cannot_divide_is_refused() -> None:
    with pytest.raises(ConfigError, match="mup_base_dim=50"):
        build(128, True, "model.mup_base_dim=50")


def test_an_exported_mup_model_embeds_as_it_was_trained(tmp_path) -> None:
    """The attention scale comes from the saved ModelConfig, so `embed` of a checkpoint matches training."""
    module, cfg, _ = build(2 * BASE, True)
    save_checkpoint(tmp_path / "ckpt", module.model, CheckpointMeta(cfg.model, [SENTINEL2_L2A], 4, {}, {}))
    loaded, meta = load_checkpoint(tmp_path / "ckpt")
    assert meta.model.mup and loaded.encoder.transformer.blocks[0].attn.scale == pytest.approx(1 / math.sqrt(32 * 2))
    module.eval()
    images, months = batch()["images"], batch()["months"]
    torch.testing.assert_close(loaded.embed(images, months, 4), module.model.embed(images, months, 4))
