"""Configs round-trip through YAML; overrides are typed; unknown keys fail with the valid ones listed."""

from __future__ import annotations

from pathlib import Path

import pytest

from spacenit.config import ConfigError, apply_overrides
from spacenit.sensors import REGISTRY, SensorRegistry, SensorSpec
from spacenit.train.pretrain import PretrainConfig


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = apply_overrides(PretrainConfig(), ["train.lr=3e-4", "model.kv_heads=2", "model.qk_norm=true"])
    cfg.to_yaml(tmp_path / "c.yaml")
    back = PretrainConfig.from_yaml(tmp_path / "c.yaml")
    assert back == cfg
    assert back.train.lr == 3e-4 and back.model.kv_heads == 2 and back.model.qk_norm is True


def test_override_type_is_checked() -> None:
    with pytest.raises(ConfigError, match="train.steps: expected int"):
        apply_overrides(PretrainConfig(), ["train.steps=many"])


def test_unknown_yaml_key_lists_valid_keys(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("train:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match=r"stepz.*valid keys"):
        PretrainConfig.from_yaml(tmp_path / "c.yaml")


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("train: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(Exception, match="python/object"):
        PretrainConfig.from_yaml(tmp_path / "c.yaml")


def test_user_sensor_from_yaml(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(
        "name: planet_scope\nbands: [blue, green, red, nir]\n"
        "groups:\n  - {name: all, bands: [blue, green, red, nir], gsd_m: 3.0}\ntemporal: true\n"
    )
    registry = SensorRegistry()
    (spec,) = registry.load_yaml(tmp_path / "s.yaml")
    assert registry.get("planet_scope") is spec and spec.band_index(["nir", "red"]) == [3, 2]
    assert SensorSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(KeyError, match="no band"):
        spec.band_index(["B04"])


def test_builtin_sensor_groups_cover_bands_once() -> None:
    for spec in REGISTRY:
        grouped = [b for g in spec.groups for b in g.bands]
        assert sorted(grouped) == sorted(spec.bands)
    assert [len(g.bands) for g in REGISTRY.get("sentinel2_l2a").groups] == [4, 6, 2]


# ---------------------------------------------------------------- values checked at load (issue 20, case 9)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.betas=[0.9]", "train.betas=[0.9] is not allowed; train.betas must be a list of 2 values, each a number in [0, 1)"),
        ("train.global_batch_size=0", "train.global_batch_size=0 is not allowed; train.global_batch_size must be an integer >= 1"),
        ("train.lr=nan", "train.lr=nan is not allowed; train.lr must be a finite number > 0"),
        ("data.num_workers=-1", "data.num_workers=-1 is not allowed; data.num_workers must be an integer >= 0"),
        ("model.depth=0", "model.depth=0 is not allowed; model.depth must be an integer >= 1"),
        ("model.heads=0", "model.heads=0 is not allowed; model.heads must be an integer >= 1"),  # was a ZeroDivisionError
        ("data.sensors=[]", "data.sensors=[] is not allowed; data.sensors must be null or a non-empty list of distinct names"),
        ("data.min_patch_size=9", "data.min_patch_size=9 is above data.max_patch_size=8"),
        ("train.lr=[1", "override 'train.lr=[1': '[1' is not a YAML value"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_key_and_what_is_allowed(override: str, message: str, capsys) -> None:
    from spacenit.cli import main

    code = main(["pretrain", "data", "--stats", "s.json", "--output-dir", "o", "--dry-run", "--set", override])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err


def test_values_are_checked_in_yaml_files_and_nested_sections(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("data:\n  augment:\n    cutmix_probability: 1.5\n")
    with pytest.raises(ConfigError, match=r"data\.augment\.cutmix_probability=1\.5 is not allowed.*in \[0, 1\]"):
        PretrainConfig.from_yaml(tmp_path / "c.yaml")


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  steps: 3\n  lr: [1e-3\n")
    with pytest.raises(ConfigError) as info:
        PretrainConfig.from_yaml(path)
    message = str(info.value)
    assert message.startswith(f"{path} is not valid YAML") and "line 4" in message and "<unicode string>" not in message


def test_every_rule_names_a_key_and_every_preset_and_experiment_passes_them() -> None:
    from spacenit.arch.models import PRESETS
    from spacenit.train.config_rules import PRETRAIN_RULES
    from spacenit.train.experiments import EXPERIMENTS
    from spacenit.train.pretrain import build_config

    defaults = PretrainConfig().to_dict()
    for key in PRETRAIN_RULES:  # a renamed field must not leave a rule that checks nothing
        node = defaults
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"rule {key!r} names no config key"
            node = node[part]
    for preset in PRESETS:
        build_config(preset)
    for name in EXPERIMENTS:
        build_config(experiment=name)


def test_pretrain_names_sensors_the_dataset_lacks(synthetic_dataset: Path, tmp_path: Path, capsys) -> None:
    from spacenit.cli import main

    code = main(["pretrain", str(synthetic_dataset), "--stats", str(synthetic_dataset / "stats.json"),
                 "--output-dir", str(tmp_path / "o"), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
                 "--set", "data.sensors=[nope]"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "data.sensors: ['nope'] are not sensors of the dataset" in err and "'sentinel1'" in err
    assert not (tmp_path / "m.db").exists()  # failed before a run was started
