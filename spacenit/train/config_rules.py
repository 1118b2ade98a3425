"""What each pretraining config value may be: one table, checked whenever a PretrainConfig is loaded.

`PretrainConfig.RULES` is this table, so `from_yaml`, `--set` overrides, presets
and experiments all go through it (spacenit.config): `--set train.betas=[0.9]`
fails at once with

    train.betas=[0.9] is not allowed; train.betas must be a list of 2 values, each a number in [0, 1)

instead of an IndexError deep in the optimizer. A new field that has a valid
range gets a row here. Checks that need the dataset (which sensors it has) are
`check_sensor_names`, run when pretraining opens the dataset.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from spacenit.config import (
    ConfigError,
    Rule,
    at_least,
    fraction,
    names,
    non_negative,
    one_of,
    optional,
    pairs_of,
    positive,
)

PRETRAIN_RULES: Mapping[str, Rule] = {
    # train: optimization and run settings
    "train.steps": at_least(1),
    "train.global_batch_size": at_least(1),
    "train.micro_batch_size": optional(at_least(1)),
    "train.lr": positive(),
    "train.min_lr_ratio": fraction(),
    "train.warmup_steps": at_least(0),
    "train.weight_decay": non_negative(),
    "train.betas": pairs_of(fraction(closed_high=False)),
    "train.max_grad_norm": optional(positive()),
    "train.patch_size": at_least(1),
    "train.mixed_precision": one_of("no", "bf16"),
    "train.distributed": one_of("ddp", "fsdp"),
    "train.log_every": at_least(1),
    "train.checkpoint_every": at_least(0),
    "train.keep_checkpoints": at_least(1),
    "train.max_consecutive_nonfinite": at_least(1),
    "train.probe_every": at_least(0),
    "tracking.flush_timeout_s": non_negative(),
    "tracking.max_retry_interval_s": positive(),
    # model sizes
    "model.dim": at_least(1),
    "model.depth": at_least(1),
    "model.heads": at_least(1),
    "model.kv_heads": optional(at_least(1)),
    "model.mlp_ratio": positive(),
    "model.decoder_dim": at_least(1),
    "model.decoder_depth": at_least(1),
    "model.decoder_heads": at_least(1),
    "model.base_patch_size": at_least(1),
    "model.dropout": fraction(closed_high=False),
    "model.num_registers": at_least(0),
    "model.reference_gsd_m": positive(),
    # data loading
    "data.min_patch_size": at_least(1),
    "data.max_patch_size": at_least(1),
    "data.token_budget": at_least(1),
    "data.num_workers": at_least(0),
    "data.prefetch_factor": at_least(1),
    "data.sensors": names(),
    "data.augment.cutmix_probability": fraction(),
    "data.augment.sensor_dropout": fraction(closed_high=False),
}

#: Keys whose values are sensor names, which must be sensors of the dataset trained on.
SENSOR_NAME_KEYS = ("data.sensors", "masking.decode_only_sensors", "objective.mask_negatives_for_sensors")


def check_sensor_names(config, dataset_sensors: Iterable[str], dataset_dir: object) -> None:
    """ConfigError naming the key when a sensor named in `config` (a PretrainConfig) is not one of the dataset's."""
    have = sorted(dataset_sensors)
    for key in SENSOR_NAME_KEYS:
        section, name = key.split(".")
        unknown = [s for s in getattr(getattr(config, section), name) or [] if s not in have]
        if unknown:
            raise ConfigError(f"{key}: {unknown} are not sensors of the dataset {dataset_dir}; "
                              f"{key} must name sensors among {have}")  # fmt: skip
