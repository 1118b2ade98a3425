"""The `pretrain` stage: masked latent prediction on a converted dataset, through accelerate.

Runs as one process or many (`torchrun --nproc_per_node N -m spacenit.cli
pretrain ...`, or `accelerate launch`); the main process logs to MLflow, writes
the checkpoint and registers the encoder in the Model Registry.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from spacenit.arch.models import ModelConfig, SpaceNitModel, count_parameters
from spacenit.config import Config
from spacenit.data.format import write_json_atomic
from spacenit.data.loader import GeoTileDataset, collate
from spacenit.data.stats import load_stats
from spacenit.train.checkpoint import CheckpointMeta, save_checkpoint
from spacenit.train.objectives import LatentPrediction
from spacenit.train.trainer import Trainer, param_groups, warmup_cosine

log = logging.getLogger(__name__)

SUMMARY_JSON = "pretrain_summary.json"


@dataclass
class TrainConfig(Config):
    """Optimization settings. Batch sizes count samples."""

    steps: int = 200
    #: Samples per optimizer step over all processes.
    global_batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.02
    warmup_steps: int = 20
    max_grad_norm: float = 1.0
    #: Pixels per patch side at which tokens are made.
    patch_size: int = 8
    mask_ratio: float = 0.5
    ema_momentum: float = 0.996
    ema_momentum_end: float = 1.0
    seed: int = 0
    num_workers: int = 0
    #: "no", "bf16" or "fp16" (accelerate's mixed precision).
    mixed_precision: str = "no"
    log_every: int = 10


@dataclass
class PretrainConfig(Config):
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def build_config(model_preset: str | None = None, overrides: list[str] | tuple[str, ...] = (),
                 config_path: str | Path | None = None) -> PretrainConfig:  # fmt: skip
    """The resolved config: YAML file (or defaults), then a model preset, then dotted overrides."""
    from spacenit.arch.models import PRESETS
    from spacenit.config import apply_overrides

    cfg = PretrainConfig.from_yaml(config_path) if config_path else PretrainConfig()
    if model_preset:
        if model_preset not in PRESETS:
            raise KeyError(f"unknown model preset {model_preset!r}; presets: {sorted(PRESETS)}")
        cfg.model = PRESETS[model_preset]
    return apply_overrides(cfg, list(overrides))


@dataclass
class PretrainResult:
    checkpoint_dir: Path
    run_id: str | None
    model_uri: str | None
    model_version: str | None
    final_loss: float
    world_size: int


def pretrain(
    dataset_dir: str | Path,
    stats_path: str | Path,
    output_dir: str | Path,
    config: PretrainConfig | None = None,
    *,
    tracking_uri: str | None = None,
    experiment: str = "spacenit",
    register_as: str | None = "spacenit-encoder",
    alias: str | None = "champion",
    cpu: bool = False,
) -> PretrainResult:
    """Pretrain an encoder; returns where the checkpoint and the registered model are.

    Writes `output_dir/checkpoint/` and `output_dir/pretrain_summary.json`.
    """
    config = config or PretrainConfig()
    tc = config.train
    stats = load_stats(stats_path)  # fails early, naming the file, when stats are missing
    output_dir = Path(output_dir)

    accelerator = Accelerator(cpu=cpu or not torch.cuda.is_available(), mixed_precision=tc.mixed_precision)
    set_seed(tc.seed)
    world = accelerator.num_processes
    if tc.global_batch_size % world:
        raise ValueError(f"train.global_batch_size={tc.global_batch_size} must divide by the {world} processes")

    dataset = GeoTileDataset(dataset_dir, stats)
    per_rank = tc.global_batch_size // world
    if len(dataset) < tc.global_batch_size:
        raise ValueError(
            f"{dataset_dir} has {len(dataset)} samples, fewer than train.global_batch_size={tc.global_batch_size}; "
            "lower it with --set train.global_batch_size=N"
        )
    loader = DataLoader(
        dataset, batch_size=per_rank, shuffle=True, drop_last=True, num_workers=tc.num_workers,
        collate_fn=collate, generator=torch.Generator().manual_seed(tc.seed),
    )  # fmt: skip

    sensors = list(dataset.reader.info.sensors.values())
    model = SpaceNitModel(config.model, sensors)
    objective = LatentPrediction(model, tc.mask_ratio, tc.ema_momentum, tc.ema_momentum_end, ema_warmup_steps=tc.steps)
    optimizer = torch.optim.AdamW(param_groups(objective, tc.weight_decay), lr=tc.lr, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(tc.warmup_steps, tc.steps))
    objective, optimizer, loader, scheduler = accelerator.prepare(objective, optimizer, loader, scheduler)

    callbacks: list = []
    run = None
    if accelerator.is_main_process:
        from spacenit.train.callbacks import MLflowCallback, ProgressBar
        from spacenit.train.tracking import start_run

        run = start_run(tracking_uri, experiment, run_name="pretrain", tags={"spacenit.stage": "pretrain"})
        callbacks = [ProgressBar(tc.steps), MLflowCallback(config.to_dict(), tc.log_every)]
        log.info("model: %d encoder parameters, %d processes", count_parameters(model.encoder), world)

    trainer = Trainer(
        objective, optimizer, scheduler, loader, accelerator,
        total_steps=tc.steps, patch_size=tc.patch_size, seed=tc.seed,
        max_grad_norm=tc.max_grad_norm, callbacks=callbacks,
    )  # fmt: skip
    try:
        metrics = trainer.fit()
        checksums = _parameter_checksums(accelerator, accelerator.unwrap_model(objective).model)
        result = PretrainResult(output_dir / "checkpoint", None, None, None, metrics["loss"], world)
        if accelerator.is_main_process:
            result = _finish(accelerator, objective, result, config, stats, dataset, checksums, register_as, alias)
    except BaseException:
        if run is not None:
            import mlflow

            mlflow.end_run(status="FAILED")
        raise
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def _parameter_checksums(accelerator: Accelerator, model: torch.nn.Module) -> list[float]:
    """One float64 checksum of all weights per process; equal values mean ranks are in sync."""
    total = torch.zeros(1, dtype=torch.float64, device=accelerator.device)
    for i, p in enumerate(model.parameters()):
        total += (p.detach().double() * (1.0 + 1e-3 * i)).sum()
    return accelerator.gather(total).cpu().tolist()


def _finish(accelerator, objective, result, config, stats, dataset, checksums, register_as, alias) -> PretrainResult:
    import mlflow

    from spacenit.train.tracking import log_and_register_encoder

    model = accelerator.unwrap_model(objective).model
    meta = CheckpointMeta(
        model=config.model,
        sensors=list(dataset.reader.info.sensors.values()),
        patch_size=config.train.patch_size,
        stats={name: stats[name] for name in dataset.sensor_names},
        extra={"trained_steps": config.train.steps, "dataset": str(dataset.reader.root)},
    )
    save_checkpoint(result.checkpoint_dir, model, meta)
    model_uri = version = None
    if register_as:
        model_uri, version = log_and_register_encoder(result.checkpoint_dir, register_as, alias)
    run_id = mlflow.active_run().info.run_id
    summary = {
        "checkpoint_dir": str(result.checkpoint_dir),
        "run_id": run_id,
        "model_uri": model_uri,
        "model_version": version,
        "final_loss": result.final_loss,
        "world_size": result.world_size,
        "parameter_checksums": checksums,
        "config": config.to_dict(),
    }
    write_json_atomic(result.checkpoint_dir.parent / SUMMARY_JSON, summary)
    mlflow.log_dict(summary, SUMMARY_JSON)
    mlflow.end_run()
    return PretrainResult(result.checkpoint_dir, run_id, model_uri, version, result.final_loss, result.world_size)


def load_summary(output_dir: str | Path) -> dict:
    return json.loads((Path(output_dir) / SUMMARY_JSON).read_text())
