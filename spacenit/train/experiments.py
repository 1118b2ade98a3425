"""Named experiments: the 14 runs of bandset-merge-experiments.md as config presets.

    cfg = build_config("spacenit_base", experiment="merged_bandsets_cross_random_masked_neg")
    spacenit pretrain DATA --stats S --output-dir O --experiment-config NAME --dry-run

An experiment is a set of dotted config values applied over the model preset
(and under `--set` overrides). All 14 share the masked-negatives loss: patch
discrimination among a sample's predicted tokens (tau 0.1) whose negatives
with a near-identical target (cosine > 0.999) are masked, plus a small
InfoNCE term on pooled tokens; they differ in masking (`modality_cross_random`
or `random_with_decode`), in how Sentinel-2 / Landsat bands become tokens
(`model.tokenization`), in bandset merging (`model.merge_bandsets`,
`model.merge_after_layer`) and in band dropout. The sensors are the
dataset's: an entry for a sensor the data lacks (Landsat, ERA5) has no effect.
"""

from __future__ import annotations

from typing import Any

from spacenit.config import ConfigError

#: What every experiment of the series shares.
MASKED_NEGATIVES: dict[str, Any] = {
    "objective.name": "latent_prediction",
    "objective.latent_loss": "patch_discrimination",
    "objective.patch_discrimination_tau": 0.1,
    "objective.same_target_threshold": 0.999,
    "objective.contrastive_weight": 0.05,
    "objective.uniformity_weight": 0.0,
}
CROSS_RANDOM = {"masking.strategy": "modality_cross_random", "masking.encode_ratio": 0.5, "masking.decode_ratio": 0.5,
                "masking.cross_unit": "group", "masking.min_encoded": 2}  # fmt: skip
RANDOM_DECODE = {"masking.strategy": "random_with_decode", "masking.encode_ratio": 0.5, "masking.decode_ratio": 0.5}


def _tokens(preset: str, band_dropout: float = 0.0, random_rate: bool = False) -> dict[str, Any]:
    return {"model.tokenization.preset": preset, "model.tokenization.band_dropout": band_dropout,
            "model.tokenization.random_band_dropout": random_rate}  # fmt: skip


def _merge(after_layer: int) -> dict[str, Any]:
    return {"model.merge_bandsets": True, "model.merge_after_layer": after_layer}


EXPERIMENTS: dict[str, dict[str, Any]] = {
    # 1-8: how Sentinel-2 (and Landsat) bands are grouped into tokens, and band dropout
    "single_bandset_cross_random_masked_neg": {**CROSS_RANDOM, **_tokens("single_bandset_all12")},
    "single_bandset_random_decode_masked_neg": {**RANDOM_DECODE, **_tokens("single_bandset_all12")},
    "single_bandset_no60m_cross_random_masked_neg": {**CROSS_RANDOM, **_tokens("single_bandset_no60m")},
    "single_bandset_10m_only_cross_random_masked_neg": {**CROSS_RANDOM, **_tokens("single_bandset_10m_only")},
    "single_bandset_band_dropout_cross_random_masked_neg": {**CROSS_RANDOM, **_tokens("single_bandset_all12", 0.3)},
    "single_bandset_band_dropout_0.5_cross_random_masked_neg": {**CROSS_RANDOM, **_tokens("single_bandset_all12", 0.5)},
    "single_bandset_era5_decode_only_masked_neg": {
        **RANDOM_DECODE, **_tokens("single_bandset_all12"),
        "masking.decode_only_sensors": ["era5"], "objective.mask_negatives_for_sensors": ["era5"],
    },  # fmt: skip
    "two_bandset_cross_random_masked_neg": {**CROSS_RANDOM, **_tokens("two_bandsets_10m_20m")},
    # 9-12: per-resolution bandsets merged into one token per position, before or inside the encoder
    "merged_bandsets_cross_random_masked_neg": {**CROSS_RANDOM, **_tokens("default"), **_merge(-1)},
    "midlayer_merged_bandsets_cross_random_masked_neg": {**CROSS_RANDOM, **_tokens("default"), **_merge(3)},
    "default_bandsets_via_tokenconfig_cross_random_masked_neg": {**CROSS_RANDOM, **_tokens("default")},
    "two_bandset_midlayer_merged_cross_random_masked_neg": {**CROSS_RANDOM, **_tokens("two_bandsets_10m_20m"), **_merge(3)},
    # 13-14: a random band dropout rate per sample, Uniform(0, 0.3)
    "single_bandset_no60m_random_band_dropout_cross_random_masked_neg": {
        **CROSS_RANDOM, **_tokens("single_bandset_no60m", 0.3, random_rate=True)},
    "single_bandset_all12_random_band_dropout_cross_random_masked_neg": {
        **CROSS_RANDOM, **_tokens("single_bandset_all12", 0.3, random_rate=True)},
}  # fmt: skip


def experiment_values(name: str) -> dict[str, Any]:
    """The dotted config values of experiment `name`, masked-negatives loss included."""
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; experiments: {sorted(EXPERIMENTS)}")
    return {**MASKED_NEGATIVES, **EXPERIMENTS[name]}


def apply_experiment(cfg, name: str):
    """A copy of `cfg` (a PretrainConfig) with experiment `name` applied; values are type-checked."""
    data = cfg.to_dict()
    for key, value in experiment_values(name).items():
        node, parts = data, key.split(".")
        for part in parts[:-1]:
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"experiment {name!r} sets {key}, which this config does not have")
        node[parts[-1]] = value
    return type(cfg).from_dict(data)
