"""Losses, objectives (TrainModules), EMA schedule and the named experiments, at a tiny size."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from spacenit.arch.models import create_model
from spacenit.config import ConfigError
from spacenit.data.augmentations import augmented_view, spectral_jitter
from spacenit.data.images import as_grids
from spacenit.data.masking import MaskingConfig
from spacenit.sensors import LANDSAT, SENTINEL, SENTINEL1, SENTINEL2_L2A, SRTM
from spacenit.train import losses
from spacenit.train.experiments import EXPERIMENTS, experiment_values
from spacenit.train.module import ObjectiveConfig
from spacenit.train.pretrain import PretrainConfig, build_config

SENSORS = [SENTINEL2_L2A, SENTINEL1, SRTM]


def batch(B: int = 4, T: int = 2, px: int = 16, sensors=SENSORS):
    g = torch.Generator().manual_seed(0)
    images = {s.name: torch.randn(B, 1 if not s.temporal else T, s.num_bands, px, px, generator=g) for s in sensors}
    months = {name: torch.randint(1, 13, x.shape[:2], generator=g) for name, x in images.items()}
    images[sensors[1].name][0] = SENTINEL  # sample 0 lacks a sensor: absent tokens
    return {"images": images, "months": months}


def tiny(sensors=SENSORS, **kw):
    torch.manual_seed(0)
    return create_model("spacenit_nano", sensors, depth=1, decoder_depth=1, **kw)


# ---------------------------------------------------------------- losses


def test_patch_discrimination_prefers_matching_targets_and_masks_same_target_negatives() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 6, 8, generator=g)
    mask = torch.ones(2, 6, dtype=torch.bool)
    groups = torch.zeros(6, dtype=torch.long)
    good = losses.patch_discrimination(target, target, mask, groups)
    bad = losses.patch_discrimination(target.roll(1, dims=1), target, mask, groups)
    assert good < bad
    # Two tokens with the same target: unmasked, each must beat its identical twin, which costs
    # 2 tau log 2 for 2 of the 6 tokens; masked, the twin is no negative and that cost is gone.
    same = target.clone()
    same[:, 1] = same[:, 0]
    plain = losses.patch_discrimination(same, same, mask, groups)
    masked = losses.patch_discrimination(same, same, mask, groups, same_target_threshold=0.999)
    assert plain - masked > 0.8 * (2 / 6) * 0.2 * math.log(2)
    # the mask only applies to the flagged groups
    off = losses.patch_discrimination(same, same, mask, groups, same_target_threshold=0.999,
                                      masked_negative_groups=torch.tensor([False]))  # fmt: skip
    torch.testing.assert_close(off, plain)
    # nothing selected: a zero with a graph, never NaN
    pred = target.clone().requires_grad_(True)
    empty = losses.patch_discrimination(pred, target, torch.zeros_like(mask), groups)
    empty.backward()
    assert empty.item() == 0.0 and pred.grad is not None


def test_info_nce_uniformity_and_reconstruction() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(8, 16, generator=g)
    scale = torch.tensor(math.log(10.0))
    assert losses.info_nce(a, a, scale) < losses.info_nce(a, a.roll(1, 0), scale)
    spread, collapsed = torch.randn(32, 4, generator=g), torch.ones(32, 4) + 1e-3 * torch.randn(32, 4, generator=g)
    assert losses.gaussian_uniformity(spread) < losses.gaussian_uniformity(collapsed)
    target = torch.randn(5, 12, generator=g) * 3 + 7
    valid = torch.ones_like(target, dtype=torch.bool)
    normalized = (target - target.mean(-1, keepdim=True)) / target.std(-1, unbiased=False, keepdim=True)
    assert losses.reconstruction(normalized, target, valid) < 1e-4  # per-patch normalized targets
    # sentinel pixels count neither in the statistics nor in the loss
    target_missing = target.clone()
    target_missing[:, :3] = SENTINEL
    valid_missing = target_missing != SENTINEL
    part = target[:, 3:]
    norm_part = (part - part.mean(-1, keepdim=True)) / part.std(-1, unbiased=False, keepdim=True)
    pred = torch.cat((torch.full((5, 3), 123.0), norm_part), dim=1)
    assert losses.reconstruction(pred, target_missing, valid_missing) < 1e-4
    for kind in ("mse", "l1", "smooth_l1"):
        assert losses.reconstruction(torch.zeros(5, 12), target, valid, kind=kind, normalize_target=False) > 1


# ---------------------------------------------------------------- objectives


@pytest.mark.parametrize("name", ["latent_prediction", "autoencoder", "dual_branch", "view_contrast"])
@pytest.mark.parametrize("variant", ["default", "masked_negatives", "pixio"])
def test_objectives_train_every_parameter_they_own(name: str, variant: str) -> None:
    extra = {"masked_negatives": {"latent_loss": "patch_discrimination", "same_target_threshold": 0.999},
             "pixio": {"num_cls_tokens": 2, "reconstruction_loss": "l1"}, "default": {}}[variant]  # fmt: skip
    model = tiny(num_registers=3) if variant == "pixio" else tiny()
    module = ObjectiveConfig(name=name, **extra).build(model, MaskingConfig(strategy="block").build(), total_steps=10)
    out = module(batch(), 4, torch.Generator().manual_seed(0), 0)
    assert torch.isfinite(out["loss"]) and out["predicted_tokens"] > 0
    out["loss"].backward()
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == [], f"parameters without gradient (DDP would hang on them): {missing}"
    if name != "autoencoder":
        assert {"latent_loss", "contrastive_loss"} <= set(out) and not any(p.requires_grad for p in module.target_encoder.parameters())
    if name in ("autoencoder", "dual_branch"):
        assert "reconstruction_loss" in out
    if name == "view_contrast":
        assert out["view_loss"] > 0


def test_view_contrast_alone_trains_the_encoder_through_the_pooled_views_only() -> None:
    model = tiny()
    module = ObjectiveConfig(name="view_contrast", latent_weight=0.0).build(model, MaskingConfig().build(), total_steps=10)
    target_before = [p.clone() for p in module.target_encoder.parameters()]
    out = module(batch(), 4, torch.Generator().manual_seed(0), 0)
    assert set(out) == {"view_loss", "loss", "tokens"} and torch.equal(out["loss"], out["view_loss"])
    out["loss"].backward()
    assert not any(p.requires_grad for p in model.predictor.parameters()), "an untrained predictor would hang DDP"
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    module.after_optimizer_step()
    assert all(torch.equal(a, b) for a, b in zip(target_before, module.target_encoder.parameters(), strict=True))
    # The loss is the InfoNCE of the projected views as `embed` pools them (the views redrawn from the same seed).
    b, g = batch(), torch.Generator().manual_seed(0)
    grids = {s.name: as_grids(b["images"][s.name], s, 10.0) for s in SENSORS}  # as the objective sees them
    views = [augmented_view(grids, g, (0.25, 1.0)) for _ in range(2)]
    with torch.no_grad():
        pooled = [module.projection(model.embed(v, b["months"], 4)) for v in views]
        expected = losses.info_nce(*pooled, module.logit_scale)
    torch.testing.assert_close(out["view_loss"].detach(), expected, rtol=1e-5, atol=1e-6)

    # Native-resolution views: fewer tokens than the whole tile, the loss still from the pooled views.
    native = ObjectiveConfig(name="view_contrast", latent_weight=0.0, view_resize=False, view_crop_scale=[0.2, 0.3]).build(
        tiny(), MaskingConfig().build(), total_steps=10)  # fmt: skip
    out = native(b, 4, torch.Generator().manual_seed(0), 0)
    whole_tile = 2 * (~native.model.encoder.tokenizer(b["images"], b["months"], 4).absent).sum()
    assert 0 < out["tokens"] < whole_tile / 2 and torch.isfinite(out["view_loss"])

    # Spectral jitter: the same views, each band then jittered with the same generator's next draws.
    jitter = ObjectiveConfig(name="view_contrast", latent_weight=0.0, view_spectral_jitter=0.3).build(
        model, MaskingConfig().build(), total_steps=10)  # fmt: skip
    out = jitter(b, 4, torch.Generator().manual_seed(0), 0)
    g = torch.Generator().manual_seed(0)
    views = [augmented_view(grids, g, (0.25, 1.0)) for _ in range(2)]
    views = [spectral_jitter(v, g, 0.3, {s.name for s in model.sensors}) for v in views]
    with torch.no_grad():
        pooled = [jitter.projection(model.embed(v, b["months"], 4)) for v in views]
        expected = losses.info_nce(*pooled, jitter.logit_scale)
    torch.testing.assert_close(out["view_loss"].detach(), expected, rtol=1e-5, atol=1e-6)


def test_pixio_class_tokens_are_the_encoders_registers_and_reach_the_decoder() -> None:
    with pytest.raises(ConfigError, match="model.num_registers"):
        ObjectiveConfig(name="autoencoder", num_cls_tokens=2).build(tiny(), None, total_steps=10)
    module = ObjectiveConfig(name="autoencoder", num_cls_tokens=2).build(tiny(num_registers=3), None, total_steps=10)
    tok = module.model.encoder.tokenizer(batch()["images"], batch()["months"], 4)
    encoded, _, _, registers = module.model.encoder.encode_with_registers(tok)
    assert registers.shape == (encoded.shape[0], 3, encoded.shape[-1])
    visible = ~tok.absent
    predict = torch.zeros_like(visible)
    predict[:, 0], visible[:, 0] = True, False
    decoder = module.pixel.decoder
    base = decoder(encoded, visible, predict, tok.layout, registers)
    moved = registers.clone()
    moved[:, 1] += 1.0  # the second class token: read by the decoder
    assert not torch.allclose(decoder(encoded, visible, predict, tok.layout, moved), base)
    moved = registers.clone()
    moved[:, 2] += 1.0  # the third register is not a class token: the decoder never sees it
    torch.testing.assert_close(decoder(encoded, visible, predict, tok.layout, moved), base)


def test_masks_follow_the_generator() -> None:
    module = ObjectiveConfig().build(tiny(), MaskingConfig().build(), total_steps=10)
    a = module(batch(), 8, torch.Generator().manual_seed(3), 0)["loss"]
    b = module(batch(), 8, torch.Generator().manual_seed(3), 0)["loss"]
    c = module(batch(), 8, torch.Generator().manual_seed(4), 0)["loss"]
    assert a.item() == b.item() != c.item()


def test_ema_momentum_warms_up_and_its_step_is_persisted() -> None:
    cfg = ObjectiveConfig(ema_momentum=0.9, ema_momentum_end=1.0, ema_warmup_steps=4)
    module = cfg.build(tiny(), None, total_steps=100)
    assert module.momentum() == pytest.approx(0.9)
    online = next(module.model.encoder.parameters())
    target = next(module.target_encoder.parameters())
    with torch.no_grad():
        online.add_(1.0)
    before = target.detach().clone()
    module.after_optimizer_step()  # m = 0.9: target moves 10% towards online
    torch.testing.assert_close(target, before + 0.1 * (online.detach() - before))
    for _ in range(5):
        module.after_optimizer_step()
    assert module.momentum() == 1.0 and module.scalars()["ema_momentum"] == 1.0
    state = module.state_dict()
    assert int(state["ema_step"]) == 6
    fresh = cfg.build(tiny(), None, total_steps=100)
    fresh.load_state_dict(state)
    assert fresh.momentum() == 1.0


def test_learnable_temperature_is_logged_and_trained() -> None:
    module = ObjectiveConfig(contrastive_temperature=0.2).build(tiny(), None, total_steps=10)
    assert module.scalars()["temperature"] == pytest.approx(0.2)
    module(batch(), 8, torch.Generator().manual_seed(0))["loss"].backward()
    assert module.logit_scale.grad is not None and module.logit_scale.grad != 0


def test_unknown_objective_and_losses_fail_loudly() -> None:
    with pytest.raises(ConfigError, match="unknown objective"):
        ObjectiveConfig(name="simclr").build(tiny(), None, total_steps=1)
    with pytest.raises(ConfigError, match="latent_loss"):
        ObjectiveConfig(latent_loss="cosine").build(tiny(), None, total_steps=1)
    for scale in ([0.5], [0.0, 1.0], [0.8, 0.5], [0.5, 1.5]):
        with pytest.raises(ConfigError, match="view_crop_scale"):
            ObjectiveConfig(name="view_contrast", view_crop_scale=scale).build(tiny(), None, total_steps=1)
    with pytest.raises(ConfigError, match="view_spectral_jitter"):
        ObjectiveConfig(name="view_contrast", view_spectral_jitter=1.5).build(tiny(), None, total_steps=1)


# ---------------------------------------------------------------- named experiments


def test_there_are_fourteen_experiments_and_each_builds_a_model_and_a_step() -> None:
    assert len(EXPERIMENTS) == 14
    sensors = [SENTINEL2_L2A, LANDSAT]
    for name in EXPERIMENTS:
        cfg = build_config("spacenit_nano", ["model.dim=32", "model.heads=2", "model.decoder_dim=32", "model.decoder_heads=2"],
                           experiment=name)  # fmt: skip
        assert cfg.objective.latent_loss == "patch_discrimination" and cfg.objective.same_target_threshold == 0.999
        for key, value in experiment_values(name).items():
            node = cfg
            for part in key.split("."):
                node = getattr(node, part)
            assert node == value, (name, key)
        torch.manual_seed(0)
        model = create_model("spacenit_nano", sensors, **{k: v for k, v in vars(cfg.model).items()})
        module = cfg.objective.build(model, cfg.masking.build(), total_steps=10)
        out = module(batch(B=2, px=8, sensors=sensors), 8, torch.Generator().manual_seed(0), 0)
        assert torch.isfinite(out["loss"]), name


def test_experiment_groups_and_merge_reach_the_model() -> None:
    merged = build_config(experiment="midlayer_merged_bandsets_cross_random_masked_neg")
    assert merged.model.merge_bandsets and merged.model.merge_after_layer == 3
    assert merged.masking.strategy == "modality_cross_random"
    era5 = build_config(experiment="single_bandset_era5_decode_only_masked_neg")
    assert era5.masking.strategy == "random_with_decode" and era5.masking.decode_only_sensors == ["era5"]
    dropout = build_config(experiment="single_bandset_all12_random_band_dropout_cross_random_masked_neg")
    assert dropout.model.tokenization.band_dropout == 0.3 and dropout.model.tokenization.random_band_dropout
    # --set wins over the experiment, the experiment over the model preset
    cfg = build_config("spacenit_tiny", ["masking.encode_ratio=0.25"], experiment="two_bandset_cross_random_masked_neg")
    assert cfg.model.dim == 192 and cfg.masking.encode_ratio == 0.25
    assert cfg.model.tokenization.preset == "two_bandsets_10m_20m"
    with pytest.raises(ConfigError, match="unknown experiment"):
        build_config(experiment="nope")


def test_pretrain_config_round_trips_through_yaml(tmp_path) -> None:
    cfg = build_config(experiment="single_bandset_random_decode_masked_neg")
    cfg.to_yaml(tmp_path / "c.yaml")
    assert PretrainConfig.from_yaml(tmp_path / "c.yaml") == cfg


def test_patch_discrimination_groups_by_sensor_in_the_objective() -> None:
    module = ObjectiveConfig(latent_loss="patch_discrimination", contrastive_weight=0.0, uniformity_weight=0.0).build(
        tiny(), None, total_steps=10)  # fmt: skip
    out = module(batch(), 8, torch.Generator().manual_seed(0))
    assert torch.isfinite(out["latent_loss"]) and out["loss"] == out["latent_loss"]
    assert F.mse_loss(out["loss"], out["latent_loss"]) == 0


def test_objectives_take_a_nonspatial_decode_only_sensor() -> None:
    """ERA5-like sensors: (B, T, C) inputs, one token per timestep, only ever predicted."""
    from spacenit.sensors import ERA5

    sensors = [SENTINEL2_L2A, ERA5]
    g = torch.Generator().manual_seed(0)
    data = {"images": {"sentinel2_l2a": torch.randn(3, 2, 12, 16, 16, generator=g), "era5": torch.randn(3, 2, ERA5.num_bands, generator=g)},
            "months": {"sentinel2_l2a": torch.ones(3, 2, dtype=torch.long), "era5": torch.ones(3, 2, dtype=torch.long)}}  # fmt: skip
    masking = MaskingConfig(strategy="random_with_decode", decode_only_sensors=["era5"]).build()
    for name in ("latent_prediction", "dual_branch"):
        cfg = ObjectiveConfig(name=name, latent_loss="patch_discrimination", same_target_threshold=0.999,
                              mask_negatives_for_sensors=["era5"])  # fmt: skip
        out = cfg.build(tiny(sensors), masking, total_steps=10)(data, 8, torch.Generator().manual_seed(0))
        assert torch.isfinite(out["loss"]), name
        out["loss"].backward()
