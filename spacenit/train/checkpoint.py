"""Checkpoints: safetensors weights plus everything needed to use them.

A checkpoint is a directory:

    model.safetensors   encoder + predictor weights
    spacenit.json       model config, sensors (bands, groups, GSD), patch size,
                        normalization stats, SpaceNit version

so `embed` can rebuild the model and normalize new data from the checkpoint
alone. Writes go to a temporary directory renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.torch import load_file, save_file

from spacenit import __version__
from spacenit.arch.models import ModelConfig, SpaceNitModel
from spacenit.data.stats import SensorStats
from spacenit.sensors import SensorSpec

WEIGHTS = "model.safetensors"
METADATA = "spacenit.json"


class CheckpointError(ValueError):
    """A checkpoint directory that is missing or incomplete."""


@dataclass
class CheckpointMeta:
    model: ModelConfig
    sensors: list[SensorSpec]
    patch_size: int
    stats: dict[str, SensorStats]
    extra: dict

    def to_dict(self) -> dict:
        return {
            "spacenit_version": __version__,
            "model": self.model.to_dict(),
            "sensors": [s.to_dict() for s in self.sensors],
            "patch_size": self.patch_size,
            "stats": {k: {"bands": v.bands, "mean": v.mean.tolist(), "std": v.std.tolist()} for k, v in self.stats.items()},
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict) -> CheckpointMeta:
        return cls(
            model=ModelConfig.from_dict(d["model"]),
            sensors=[SensorSpec.from_dict(s) for s in d["sensors"]],
            patch_size=int(d["patch_size"]),
            stats={k: SensorStats(v["bands"], np.asarray(v["mean"]), np.asarray(v["std"])) for k, v in d["stats"].items()},
            extra=d.get("extra", {}),
        )


def save_checkpoint(path: str | Path, model: SpaceNitModel, meta: CheckpointMeta) -> Path:
    path = Path(path)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    tmp.mkdir(parents=True)
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS))
        (tmp / METADATA).write_text(json.dumps(meta.to_dict(), indent=1))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> tuple[SpaceNitModel, CheckpointMeta]:
    path = Path(path)
    if not (path / WEIGHTS).is_file() or not (path / METADATA).is_file():
        raise CheckpointError(
            f"{path} is not a SpaceNit checkpoint: expected {WEIGHTS} and {METADATA} in it "
            "(give the checkpoint directory written by `spacenit pretrain`, or a models:/ URI)"
        )
    meta = CheckpointMeta.from_dict(json.loads((path / METADATA).read_text()))
    model = SpaceNitModel(meta.model, meta.sensors)
    model.load_state_dict(load_file(str(path / WEIGHTS)))
    model.eval()
    return model, meta
