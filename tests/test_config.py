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
    with pytest.raises(ConfigError, match="train.steps: .many. does not fit"):
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
