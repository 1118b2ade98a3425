"""The `pretrain` stage: self-supervised pretraining on a converted dataset, through accelerate.

Runs as one process or many (`ACCELERATE_USE_CPU=true torchrun --nproc_per_node N
-m spacenit.cli pretrain ...` on CPU, `accelerate launch --multi_gpu ...` on
GPUs). Every process builds the same model from the same seed, reads its
share of each step's micro-batches (`spacenit.data.loader`), and the Trainer
synchronizes gradients. The main process logs to MLflow, writes the exported
checkpoint and the summary, and registers the encoder.

Output layout:

    output_dir/checkpoint/             exported model (model.safetensors + spacenit.json)
    output_dir/checkpoints/step-N/     training checkpoints; a re-run resumes from the newest
    output_dir/pretrain_summary.json   run id, model URI, world size, per-rank parameter checksums
    output_dir/mlflow_metrics.jsonl    every logged metric, also when MLflow was unreachable

The `train` defaults are the specification's (section 7: global batch 512 in
micro-batches of 32, LR 1e-4 after 8000 warm-up steps, 300 epochs); the
"small" preset (`--preset small`, `build_config(preset="small")`) is a short
run for demos, tests and CPU benchmarks. `describe_training` says which
preset and which values are in force (`--dry-run` prints it).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from accelerate import Accelerator

from spacenit.arch.models import ModelConfig, SpaceNitModel, count_parameters
from spacenit.config import Config, ConfigError
from spacenit.data.crop import alignment_px, grid_factors
from spacenit.data.format import load_dataset_info, write_json_atomic
from spacenit.data.loader import (
    BatchPlanner,
    GeoTileDataset,
    LoaderConfig,
    build_pretrain_loader,
    months_of,
    pretrain_geometry,
)
from spacenit.data.masking import MaskingConfig
from spacenit.data.stats import load_stats
from spacenit.io_errors import check_writable
from spacenit.train import mup
from spacenit.train.checkpoint import (
    CHECKPOINTS_DIR,
    Checkpointer,
    CheckpointMeta,
    is_sharded,
    latest_training_checkpoint,
    read_train_state,
    save_checkpoint,
)
from spacenit.train.config_rules import PRETRAIN_RULES, check_sensor_names
from spacenit.train.module import ObjectiveConfig
from spacenit.train.optim import build_optimizer
from spacenit.train.schedules import warmup_cosine
from spacenit.train.trainer import Trainer

log = logging.getLogger(__name__)

SUMMARY_JSON = "pretrain_summary.json"


@dataclass
class TrainConfig(Config):
    """Optimization and run settings; the defaults are the specification's (section 7).

    Batch sizes count samples; steps count optimizer steps.
    """

    #: Duration in epochs: passes over the dataset of len(dataset) // global_batch_size steps each...
    epochs: int | None = 300
    #: ...or in optimizer steps, which replace `epochs` when set.
    steps: int | None = None
    #: Samples per optimizer step over all processes: micro_batch_size x processes x accumulation steps.
    global_batch_size: int = 512
    #: Samples per forward pass on one process; None = global_batch_size / processes (no accumulation).
    micro_batch_size: int | None = 32
    #: Peak learning rate, reached after `warmup_steps`, then cosine decay to lr * min_lr_ratio.
    lr: float = 1e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 8000
    #: "adamw", or "muon": Muon for the transformer blocks' hidden matrices, AdamW for the rest
    #: (spacenit.train.optim); both at `lr`.
    optimizer: str = "adamw"
    muon_momentum: float = 0.95
    #: Decoupled weight decay (never on norms, biases, embeddings and tokens).
    weight_decay: float = 0.02
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    #: Gradient clipping by global norm; None = no clipping.
    max_grad_norm: float | None = 1.0
    #: Patch size (pixels) the exported checkpoint embeds at, and the in-loop probe uses.
    patch_size: int = 8
    seed: int = 0
    #: "no" or "bf16" autocast.
    mixed_precision: str = "no"
    #: "ddp" (replicated weights) or "fsdp" (sharded; FSDP2 through accelerate).
    distributed: str = "ddp"
    #: torch.compile every transformer block (dynamic shapes).
    compile: bool = False
    #: Log metrics every this many steps (averaged over them).
    log_every: int = 10
    #: Training checkpoint every this many steps (0: only at the end), keeping the newest `keep_checkpoints`.
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    #: Continue from the newest checkpoint in output_dir/checkpoints when there is one.
    resume: bool = True
    #: Steps with non-finite gradients are skipped; this many in a row stop training.
    max_consecutive_nonfinite: int = 3
    #: In-loop kNN probe (spacenit.evaluation.inloop) every this many steps (0: off) on the labelled
    #: dataset `probe_dataset` (default: the training dataset), logged as eval/knn_accuracy.
    probe_every: int = 0
    probe_dataset: str | None = None
    #: Also fit a linear probe at each probe step, logged as eval/linear_accuracy.
    probe_linear: bool = False


#: Named `train` sections (`--preset`): "spec" is the specification's section 7 (the defaults);
#: "small" is a short run for demos, tests and CPU benchmarks (200 steps of 16 samples, LR 1e-3).
TRAIN_PRESETS: dict[str, TrainConfig] = {
    "spec": TrainConfig(),
    "small": TrainConfig(epochs=None, steps=200, global_batch_size=16, micro_batch_size=None, lr=1e-3, warmup_steps=20),
}


def batch_split(tc: TrainConfig, world_size: int) -> tuple[int, int]:
    """(micro-batch, accumulation steps), with global batch = micro-batch x processes x accumulation steps."""
    micro = tc.micro_batch_size or tc.global_batch_size // world_size
    if micro < 1 or tc.global_batch_size % (micro * world_size):
        raise ConfigError(f"train.global_batch_size={tc.global_batch_size} must be train.micro_batch_size={micro} x "
                          f"{world_size} process(es) x a whole number of accumulation steps: make it a multiple of "
                          f"{micro * world_size}, or change the micro-batch size")  # fmt: skip
    return micro, tc.global_batch_size // (micro * world_size)


def total_steps(tc: TrainConfig, num_samples: int) -> int:
    """Optimizer steps of the run: `train.steps`, or `train.epochs` whole epochs (the remainder of each is dropped)."""
    if tc.steps is not None:
        return tc.steps
    if num_samples < tc.global_batch_size:
        raise ConfigError(f"the dataset has {num_samples} samples, fewer than one global batch "
                          f"(train.global_batch_size={tc.global_batch_size}): lower it, or use --preset small")  # fmt: skip
    return tc.epochs * (num_samples // tc.global_batch_size)


def describe_training(cfg: PretrainConfig, preset: str, world_size: int = 1, num_samples: int | None = None) -> str:
    """What `--dry-run` prints above the config: the preset and the values in force, as YAML comments.

    Raises ConfigError for values `pretrain` would refuse."""
    cfg = PretrainConfig.from_dict(cfg.to_dict())  # refuses what pretrain would, with the same messages
    tc = cfg.train
    micro, accum = batch_split(tc, world_size)
    if tc.steps is not None:
        unused = f"; train.epochs={tc.epochs} not used" if tc.epochs is not None else ""
        duration = f"{tc.steps} steps (train.steps{unused})"
    elif num_samples is None:
        duration = f"{tc.epochs} epochs (train.epochs; steps per epoch: dataset samples // {tc.global_batch_size})"
    elif num_samples < tc.global_batch_size:
        duration = f"{tc.epochs} epochs, but the dataset's {num_samples} samples are fewer than one global batch of " \
                   f"{tc.global_batch_size}: lower train.global_batch_size, or use --preset small"  # fmt: skip
    else:
        duration = f"{tc.epochs} epochs x {num_samples // tc.global_batch_size} steps = {total_steps(tc, num_samples)} steps " \
                   f"({num_samples} samples)"  # fmt: skip
    optimizer = tc.optimizer + (f" (momentum {tc.muon_momentum})" if tc.optimizer == "muon" else "")
    lines = [
        f"training preset: {preset}",
        f"duration: {duration}",
        f"batch: global {tc.global_batch_size} = micro {micro} x {world_size} process(es) x {accum} accumulation step(s)",
        f"optimizer: {optimizer}, lr {tc.lr:g} after {tc.warmup_steps} warm-up steps, cosine to {tc.lr * tc.min_lr_ratio:g}, "
        f"weight decay {tc.weight_decay:g}",
        f"model: dim {cfg.model.dim}, depth {cfg.model.depth}" + (f", muP from base width {cfg.model.mup_base_dim}" if cfg.model.mup else ""),
    ]  # fmt: skip
    return "".join(f"# {line}\n" for line in lines)


@dataclass
class TrackingConfig(Config):
    """What goes to MLflow beside the metrics."""

    log_system_metrics: bool = True
    #: Upload every training checkpoint's weights as run artifacts.
    log_checkpoints: bool = True
    #: Seconds the end of training waits for unsent MLflow records (they are in mlflow_metrics.jsonl anyway).
    flush_timeout_s: float = 60.0
    #: While the tracking server does not answer, retry after 1, 2, 4, ... seconds, at most this many.
    max_retry_interval_s: float = 30.0


@dataclass
class PretrainConfig(Config):
    """Everything a pretraining run reads; each value is checked against PRETRAIN_RULES when loaded."""

    RULES: ClassVar = PRETRAIN_RULES

    model: ModelConfig = field(default_factory=ModelConfig)
    data: LoaderConfig = field(default_factory=LoaderConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        if self.data.min_patch_size > self.data.max_patch_size:
            raise ConfigError(f"data.min_patch_size={self.data.min_patch_size} is above data.max_patch_size="
                              f"{self.data.max_patch_size}; it must be at most that")  # fmt: skip
        if self.train.steps is None and self.train.epochs is None:
            raise ConfigError("set the run's duration: train.epochs or train.steps")
        if self.train.probe_every and self.train.distributed == "fsdp":
            raise ConfigError("the in-loop probe runs on the main process alone, which FSDP cannot: set train.probe_every=0")


def build_config(model_preset: str | None = None, overrides: list[str] | tuple[str, ...] = (),
                 config_path: str | Path | None = None, experiment: str | None = None,
                 preset: str | None = None) -> PretrainConfig:  # fmt: skip
    """The resolved config: YAML file (or defaults), then a model preset (replaces `model`), then a
    training preset (TRAIN_PRESETS; replaces `train`), then a named experiment
    (spacenit.train.experiments), then dotted overrides."""
    from spacenit.arch.models import PRESETS
    from spacenit.config import apply_overrides
    from spacenit.train.experiments import apply_experiment

    cfg = PretrainConfig.from_yaml(config_path) if config_path else PretrainConfig()
    if model_preset:
        if model_preset not in PRESETS:
            raise KeyError(f"unknown model preset {model_preset!r}; presets: {sorted(PRESETS)}")
        cfg.model = PRESETS[model_preset]
    if preset:
        if preset not in TRAIN_PRESETS:
            raise KeyError(f"unknown training preset {preset!r}; presets: {sorted(TRAIN_PRESETS)}")
        cfg.train = replace(TRAIN_PRESETS[preset])
    if experiment:
        cfg = apply_experiment(cfg, experiment)
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

    Writes `output_dir/checkpoint/`, `output_dir/checkpoints/` and `output_dir/pretrain_summary.json`.
    Re-running with the same output_dir continues from the newest training checkpoint.
    """
    # Loaded again from its values, so that a config built in code is checked like a YAML file.
    config = PretrainConfig.from_dict((config or PretrainConfig()).to_dict())
    tc = config.train
    stats = load_stats(stats_path, dataset_dir)  # fails early, naming the file, when stats are missing or wrong
    output_dir = Path(output_dir)
    accelerator = _accelerator(tc, cpu)
    world, rank = accelerator.num_processes, accelerator.process_index
    if accelerator.is_main_process:  # an unwritable output or an absent tracking server fails now, before a run
        from spacenit.train.tracking import default_tracking_uri, require_reachable

        check_writable(output_dir / SUMMARY_JSON)
        require_reachable(tracking_uri or default_tracking_uri())

    check_sensor_names(config, load_dataset_info(dataset_dir).sensors, dataset_dir)
    dataset = GeoTileDataset(dataset_dir, stats, sensors=config.data.sensors)
    micro, accum = batch_split(tc, world)
    steps = total_steps(tc, len(dataset))
    if steps < tc.warmup_steps:
        log.warning("the run's %d steps end inside the %d warm-up steps: the learning rate never reaches train.lr=%g",
                    steps, tc.warmup_steps, tc.lr)  # fmt: skip
    planner = BatchPlanner(len(dataset), tc.global_batch_size, micro, pretrain_geometry(dataset, config.model), config.data, tc.seed)

    sensors = [dataset.reader.info.sensors[name] for name in dataset.sensor_names]

    def build_module(model_config: ModelConfig) -> torch.nn.Module:
        return config.objective.build(SpaceNitModel(model_config, sensors), config.masking.build(), total_steps=steps)

    torch.manual_seed(tc.seed)  # the same initial weights on every process
    module = build_module(config.model)
    model = module.model
    lr_scale = None
    if config.model.mup:
        roles = mup.width_roles(module, config.model, build_module)
        mup.initialize(module, roles)
        lr_scale = lambda name, muon: roles[name].lr_scale(muon)  # noqa: E731
    if tc.compile:
        for block in [*model.encoder.transformer.blocks, *model.predictor.transformer.blocks]:
            block.compile(dynamic=True)
    optimizer = build_optimizer(module, tc, lr_scale)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(tc.warmup_steps, steps, tc.min_lr_ratio))
    # The scheduler stays unprepared: accelerate would step it once per process.
    module, optimizer = accelerator.prepare(module, optimizer)

    resume_from = latest_training_checkpoint(output_dir / CHECKPOINTS_DIR) if tc.resume else None
    resumed = read_train_state(resume_from) if resume_from else {}
    run = mlflow_cb = None
    extra_state = {"config": config.to_dict()}
    if accelerator.is_main_process:
        run = _start_or_resume_run(tracking_uri, experiment, resumed.get("mlflow_run_id"))
        extra_state["mlflow_run_id"] = run.info.run_id
        log.info("model: %d encoder parameters; %d processes x %d micro-batches of %d samples per step",
                 count_parameters(model.encoder), world, accum, micro)  # fmt: skip

    from spacenit.train.callbacks import MLflowCallback, NaNGuard, ProgressBar, Throughput

    # Order matters: the NaN guard stops a run before a bad step is checkpointed; metrics are
    # complete (throughput, probe) before MLflow logs them; the Checkpointer saves last.
    callbacks = [NaNGuard(tc.max_consecutive_nonfinite), Throughput()]
    if tc.probe_every:
        from spacenit.evaluation.inloop import KnnProbeCallback

        callbacks.append(KnnProbeCallback(tc.probe_dataset or dataset_dir, stats, patch_size=tc.patch_size,
                                          every_n_steps=tc.probe_every, seed=tc.seed, log_to="metrics",
                                          linear=tc.probe_linear))  # fmt: skip
    if run is not None:
        import mlflow

        mlflow_cb = MLflowCallback(
            run.info.run_id, mlflow.get_tracking_uri(), config.to_dict(), output_dir,
            log_system_metrics=config.tracking.log_system_metrics, log_checkpoints=config.tracking.log_checkpoints,
            flush_timeout_s=config.tracking.flush_timeout_s, max_retry_interval_s=config.tracking.max_retry_interval_s,
        )  # fmt: skip
        callbacks += [ProgressBar(steps), mlflow_cb]
    checkpointer = Checkpointer(output_dir / CHECKPOINTS_DIR, tc.checkpoint_every, keep=tc.keep_checkpoints,
                                resume_from=resume_from, extra_state=extra_state)  # fmt: skip
    callbacks.append(checkpointer)

    def make_loader(start_step: int):
        return build_pretrain_loader(dataset, planner, config.data, rank=rank, world_size=world,
                                     start_step=start_step, total_steps=steps)  # fmt: skip

    trainer = Trainer(module, optimizer, scheduler, make_loader, accelerator, total_steps=steps, accum_steps=accum,
                      seed=tc.seed, max_grad_norm=tc.max_grad_norm, log_every=tc.log_every, callbacks=callbacks)  # fmt: skip
    try:
        checkpointer.restore(trainer)
        metrics = trainer.fit()
        checksums = _parameter_checksums(accelerator, accelerator.unwrap_model(module).model)
        trained = _export_model(accelerator, module, config, sensors)
        result = PretrainResult(output_dir / "checkpoint", None, None, None, float(metrics.get("loss", float("nan"))), world)
        if accelerator.is_main_process:
            extra = {"trained_steps": steps, "dataset": str(dataset.reader.root), "gsd_m": dataset.reader.info.gsd_m,
                     "resumed_from": str(resume_from or ""),
                     "nonfinite_steps": trainer.nonfinite_steps}  # fmt: skip
            result = _finish(trained, result, config, stats, dataset, checksums, extra, register_as, alias)
    except BaseException:
        if run is not None:
            _end_run("FAILED")
        raise
    finally:
        if mlflow_cb is not None:
            mlflow_cb.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def _accelerator(tc: TrainConfig, cpu: bool) -> Accelerator:
    if tc.distributed == "ddp":
        return Accelerator(cpu=cpu or not torch.cuda.is_available(), mixed_precision=tc.mixed_precision)
    from accelerate import FullyShardedDataParallelPlugin, PartialState
    from accelerate.utils import DistributedType

    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, reshard_after_forward=True)
    accelerator = Accelerator(cpu=cpu or not torch.cuda.is_available(), mixed_precision=tc.mixed_precision,
                              fsdp_plugin=plugin)  # fmt: skip
    if accelerator.distributed_type == DistributedType.MULTI_CPU:
        # accelerate turns FSDP on for accelerator devices only and runs DDP on CPU, though
        # FSDP2 shards over gloo as well. Switching its shared state to FSDP runs the GPU code
        # path on CPU processes, where tests and CI can check it. Both states: every new
        # AcceleratorState() copies PartialState's over its own.
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = plugin
    if not is_sharded(accelerator):
        raise ConfigError(f"train.distributed=fsdp, but accelerate runs {accelerator.distributed_type.value}: FSDP "
                          "shards over several processes; launch them with accelerate launch or torchrun, "
                          "or use train.distributed=ddp")  # fmt: skip
    return accelerator


def _start_or_resume_run(tracking_uri: str | None, experiment: str, run_id: str | None):
    """A new MLflow run, or the interrupted run `run_id` reopened so its metrics continue."""
    import mlflow

    from spacenit.train.tracking import default_tracking_uri, start_run

    if run_id:
        mlflow.set_tracking_uri(tracking_uri or default_tracking_uri())
        try:
            return mlflow.start_run(run_id=run_id)
        except mlflow.exceptions.MlflowException as e:
            log.warning("cannot reopen MLflow run %s (%s); starting a new one", run_id, e)
    return start_run(tracking_uri, experiment, run_name="pretrain", tags={"spacenit.stage": "pretrain"})


def _end_run(status: str) -> None:
    import mlflow

    try:
        mlflow.end_run(status=status)
    except Exception as e:  # noqa: BLE001 - the tracker being away must not hide the real outcome
        log.warning("could not end the MLflow run (%s)", e)


def _parameter_checksums(accelerator: Accelerator, model: torch.nn.Module) -> list[float]:
    """One float64 checksum of all weights per process; equal values mean ranks are in sync.

    Sharded (FSDP) parameters are gathered whole first, so every rank sums the full model.
    """
    total = torch.zeros(1, dtype=torch.float64, device=accelerator.device)
    for i, p in enumerate(model.parameters()):
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        total += (full.detach().double() * (1.0 + 1e-3 * i)).sum()
    return accelerator.gather(total).cpu().tolist()


def _export_model(accelerator: Accelerator, module: torch.nn.Module, config: PretrainConfig, sensors) -> SpaceNitModel:
    """The trained model as a plain module on the main process (FSDP: gathered from the shards)."""
    if not is_sharded(accelerator):
        return accelerator.unwrap_model(module).model
    state = accelerator.get_state_dict(module)  # collective; the full state lands on the main process
    model = SpaceNitModel(config.model, sensors)
    if accelerator.is_main_process:
        model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    return model


def _finish(model, result, config, stats, dataset, checksums, extra, register_as, alias) -> PretrainResult:
    """Main process: export the checkpoint, register the encoder, write the summary, close the run.

    The checkpoint and the summary are always written; MLflow failures are warnings.
    """
    import mlflow

    from spacenit.train.tracking import log_and_register_encoder

    meta = CheckpointMeta(
        model=config.model,
        sensors=list(model.sensors),
        patch_size=config.train.patch_size,
        stats={name: stats[name] for name in dataset.sensor_names},
        extra=extra,
    )
    save_checkpoint(result.checkpoint_dir, model, meta)
    run_id = mlflow.active_run().info.run_id
    model_uri = version = None
    summary = {
        "checkpoint_dir": str(result.checkpoint_dir),
        "run_id": run_id,
        "model_uri": None,
        "model_version": None,
        "final_loss": result.final_loss,
        "world_size": result.world_size,
        "parameter_checksums": checksums,
        "nonfinite_steps": extra["nonfinite_steps"],
        "resumed_from": extra["resumed_from"],
        "config": config.to_dict(),
    }
    try:
        if register_as:
            example = serving_example(dataset.reader, dataset.sensor_names, config.train.patch_size)
            model_uri, version = log_and_register_encoder(result.checkpoint_dir, register_as, alias,
                                                          input_example=example)  # fmt: skip
        summary.update(model_uri=model_uri, model_version=version)
        mlflow.log_dict(summary, SUMMARY_JSON)
    except Exception as e:  # noqa: BLE001 - the checkpoint is on disk; registering can be redone from it
        log.warning("MLflow failed at the end of training (%s); the checkpoint is in %s, register it later", e,
                    result.checkpoint_dir)  # fmt: skip
    write_json_atomic(result.checkpoint_dir.parent / SUMMARY_JSON, summary)
    _end_run("FINISHED")
    return PretrainResult(result.checkpoint_dir, run_id, model_uri, version, result.final_loss, result.world_size)


def serving_example(reader, sensors: list[str], patch_size: int, max_px: int = 32) -> dict[str, np.ndarray]:
    """The first sample in raw units, what a client of the served encoder sends: each sensor grid as
    "<sensor>/<grid>" (1, T, C_g, H_g, W_g) over at most `max_px` reference pixels (a multiple of the
    patch size and of every grid's pixel), and "<sensor>/months" (1, T)."""
    sample = reader[0]
    info = reader.info
    factors = grid_factors({s: info.grids[s] for s in sensors}, info.gsd_m)
    unit = math.lcm(patch_size, alignment_px(factors.values()))
    size = min(info.tile_size_px, unit * max(1, max_px // unit))
    example = {}
    for name in sensors:
        for grid, data in sample.data[name].items():
            if data.ndim == 4:  # (T, C, H, W); non-spatial sensors are (T, C)
                side = int(size / factors[(name, grid.name)])
                data = data[..., :side, :side]
            example[f"{name}/{grid.name}"] = np.ascontiguousarray(data[None])
        example[f"{name}/months"] = months_of(sample.record.dates.get(name, [""]))[None]
    return example


def load_summary(output_dir: str | Path) -> dict:
    return json.loads((Path(output_dir) / SUMMARY_JSON).read_text())
