"""Checkpoints: the exported model, and the training checkpoints a run resumes from.

An exported checkpoint (`pretrain`'s `output_dir/checkpoint/`) is a directory:

    model.safetensors   encoder + predictor weights
    spacenit.json       model config, sensors (bands, groups, GSD), patch size,
                        normalization stats, SpaceNit version

so `embed` can rebuild the model and normalize new data from the checkpoint
alone. Training checkpoints (`output_dir/checkpoints/step-XXXXXX/`, see
`Checkpointer`) add the optimizer and the trainer's position. All writes go
to a temporary directory renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from spacenit import __version__
from spacenit.arch.models import ModelConfig, SpaceNitModel
from spacenit.data.format import atomic_directory
from spacenit.data.stats import SensorStats
from spacenit.sensors import SensorSpec
from spacenit.train.trainer import Callback, NonFiniteLossError

log = logging.getLogger(__name__)

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
            "stats": {k: {"bands": v.bands, "mean": v.mean.tolist(), "std": v.std.tolist(),
                          "constant": v.constant.tolist()} for k, v in self.stats.items()},  # fmt: skip
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict, source: str = "the checkpoint's stats") -> CheckpointMeta:
        """`source` (the spacenit.json read) is named by errors about the stats in it."""
        return cls(
            model=ModelConfig.from_dict(d["model"]),
            sensors=[SensorSpec.from_dict(s) for s in d["sensors"]],
            patch_size=int(d["patch_size"]),
            stats={k: SensorStats(v["bands"], v["mean"], v["std"], v.get("constant"), source) for k, v in d["stats"].items()},
            extra=d.get("extra", {}),
        )


def _umask() -> int:
    """The process umask, read without changing it where Linux says it (/proc), else set and restored."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        lines = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in lines if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """Write the weights with the mode a new file gets (0o666 less the umask), not safetensors' 0600.

    Other users of a shared volume load the weights too.
    """
    save_file(state, str(path))
    os.chmod(path, 0o666 & ~_umask())


def save_checkpoint(path: str | Path, model: SpaceNitModel, meta: CheckpointMeta) -> Path:
    path = Path(path)
    with atomic_directory(path) as tmp:
        tmp.mkdir(parents=True)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        _save_weights(state, tmp / WEIGHTS)
        (tmp / METADATA).write_text(json.dumps(meta.to_dict(), indent=1))
    return path


def load_checkpoint(path: str | Path) -> tuple[SpaceNitModel, CheckpointMeta]:
    path = Path(path)
    if not (path / WEIGHTS).is_file() or not (path / METADATA).is_file():
        raise CheckpointError(
            f"{path} is not a SpaceNit checkpoint: expected {WEIGHTS} and {METADATA} in it "
            "(give the checkpoint directory written by `spacenit pretrain`, or a models:/ URI)"
        )
    try:
        meta = CheckpointMeta.from_dict(json.loads((path / METADATA).read_text()), source=str(path / METADATA))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path / METADATA} is not a SpaceNit checkpoint's metadata ({type(e).__name__}: {e}); "
                              "export the checkpoint again with `spacenit pretrain`") from None  # fmt: skip
    model = SpaceNitModel(meta.model, meta.sensors)
    model.load_state_dict(load_weights(path / WEIGHTS))
    model.eval()
    return model, meta


def load_weights(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a damaged one is a CheckpointError naming it."""
    try:
        return load_file(str(path), device=device)
    except SafetensorError as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); it is damaged or "
                              "truncated: use another checkpoint, or export this one again") from None  # fmt: skip


# ---------------------------------------------------------------- training checkpoints (resume)

CHECKPOINTS_DIR = "checkpoints"
TRAIN_STATE = "trainer_state.json"
OPTIMIZER_STATE = "optimizer.pt"


def latest_training_checkpoint(root: str | Path) -> Path | None:
    """The newest complete `step-XXXXXX` directory under `root` (incomplete ones are never renamed there)."""
    root = Path(root)
    done = [p for p in root.glob("step-*") if (p / TRAIN_STATE).is_file()] if root.is_dir() else []
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def read_train_state(path: str | Path) -> dict:
    return json.loads((Path(path) / TRAIN_STATE).read_text())


class Checkpointer(Callback):
    """Trainer callback: a full training checkpoint every `every` steps and at the end; resume from one.

    A checkpoint is `root/step-XXXXXX/` holding

        model.safetensors    the whole train module (model, EMA target, heads, EMA step buffer)
        optimizer.pt         optimizer and LR scheduler state
        trainer_state.json   step, skipped steps, last logged metrics, MLflow run id, the resolved config

    written into a temporary directory and renamed into place, so a kill at any
    moment leaves either the previous checkpoint or the new one. The data
    loader's position is the step (batches are a function of it), and every
    random draw is seeded from (seed, step, micro-batch), so nothing else is
    needed to continue exactly; weights are saved unwrapped, so a run may
    resume on another number of processes. With FSDP the (sharded) state goes
    through `accelerator.save_state` instead and resumes on the same world size.

    Call `restore(trainer)` before `trainer.fit()`. List it after the logging
    callbacks: on a log step it saves in `on_log`, after the metrics are written,
    so a run killed right after a checkpoint has logged every step up to it.
    """

    def __init__(self, root: str | Path, every: int, *, keep: int = 2, resume_from: str | Path | None = None,
                 extra_state: dict | None = None) -> None:  # fmt: skip
        if keep < 1:
            raise ValueError(f"keep at least one training checkpoint, got keep={keep}")
        self.root, self.every, self.keep = Path(root), every, keep
        self.resume_from = Path(resume_from) if resume_from else None
        self.extra_state = dict(extra_state or {})
        self.last_saved: int | None = None

    def restore(self, trainer) -> None:
        """Load `resume_from` into the trainer (before `fit`, so every callback starts from its step)."""
        if self.resume_from is None:
            return
        state = read_train_state(self.resume_from)
        acc = trainer.accelerator
        if is_sharded(acc):
            acc.load_state(str(self.resume_from / "accelerate"))
        else:
            trainer.unwrapped.load_state_dict(load_weights(self.resume_from / WEIGHTS, device=str(acc.device)))
            opt = torch.load(self.resume_from / OPTIMIZER_STATE, map_location=acc.device, weights_only=True)
            trainer.optimizer.load_state_dict(opt["optimizer"])
            trainer.scheduler.load_state_dict(opt["scheduler"])
        trainer.step = int(state["step"])
        trainer.nonfinite_steps = list(state.get("nonfinite_steps", []))
        trainer.last_metrics = dict(state.get("last_metrics", {}))
        self.last_saved = trainer.step
        log.info("resumed from %s at step %d", self.resume_from, trainer.step)

    def on_train_start(self, trainer) -> None:
        if trainer.accelerator.is_main_process:  # what a kill left half-written
            for stale in self.root.glob(".tmp-step-*"):
                shutil.rmtree(stale, ignore_errors=True)

    def _due(self, trainer, step: int) -> bool:
        return (bool(self.every) and step % self.every == 0) or step == trainer.total_steps

    def on_step_end(self, trainer, step: int, metrics) -> None:
        if self._due(trainer, step) and not trainer.is_log_step(step):
            self.save(trainer)

    def on_log(self, trainer, step: int, metrics) -> None:
        # On a log step, save after the metrics were logged (see the class docstring).
        if self._due(trainer, step):
            self.save(trainer)

    def on_train_end(self, trainer) -> None:
        if self.last_saved != trainer.step:
            self.save(trainer)

    def save(self, trainer) -> Path:
        acc, step = trainer.accelerator, trainer.step
        module = trainer.unwrapped
        local = lambda p: p.to_local() if hasattr(p, "to_local") else p  # noqa: E731 - FSDP shards
        bad = [n for n, p in module.named_parameters() if not bool(torch.isfinite(local(p)).all())]
        if is_sharded(acc):  # every rank must take the same decision
            flag = acc.reduce(torch.tensor(float(len(bad)), device=acc.device), "sum")
            bad = bad or (["(another rank's shard)"] if float(flag) else [])
        if bad:
            last = latest_training_checkpoint(self.root)
            raise NonFiniteLossError(f"refusing to checkpoint non-finite weights at step {step} ({bad[:3]}...); "
                                     f"the last good checkpoint is {last}")  # fmt: skip
        final = self.root / f"step-{step:06d}"
        tmp = self.root / f".tmp-step-{step:06d}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        if is_sharded(acc):
            acc.wait_for_everyone()  # the main process has made a fresh `tmp`
            # Every rank writes its shard there: the folder must exist before the first of them does.
            (tmp / "accelerate").mkdir(parents=True, exist_ok=True)
            acc.wait_for_everyone()
            acc.save_state(str(tmp / "accelerate"))
            acc.wait_for_everyone()  # every rank's files are in `tmp` before the main process renames it
        if acc.is_main_process:
            if not is_sharded(acc):
                state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
                _save_weights(state, tmp / WEIGHTS)
                torch.save({"optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict()},
                           tmp / OPTIMIZER_STATE)  # fmt: skip
            train_state = {"step": step, "nonfinite_steps": trainer.nonfinite_steps, "world_size": acc.num_processes,
                           "last_metrics": trainer.last_metrics, **self.extra_state}  # fmt: skip
            (tmp / TRAIN_STATE).write_text(json.dumps(train_state, indent=1))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in sorted(self.root.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        self.last_saved = step
        trainer.emit("on_checkpoint", step, final)
        return final


def is_sharded(accelerator) -> bool:
    """Whether accelerate runs FSDP (parameters are shards, state goes through save_state)."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP
