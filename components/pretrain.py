"""KFP component of the `pretrain` stage on one node: dataset + stats -> checkpoint, MLflow run, registered model.

With `gpus_per_node` <= 1 it calls the stage function in this process; with more
it runs `accelerate launch --multi_gpu --num_processes N -m spacenit.cli pretrain
...` (one process per GPU) and reads back the summary the main process wrote.
The pipeline runs it in the CUDA image (components/image.py) when GPUs are requested. Across
nodes, see `components/pretrain_multinode.py`.
"""

# No `from __future__ import annotations`: KFP reads the annotations as types.
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def pretrain(
    dataset: Input[Dataset],
    stats: Input[Artifact],
    model: Output[Model],
    steps: int = 200,
    global_batch_size: int = 16,
    model_preset: str = "spacenit_nano",
    seed: int = 0,
    overrides: list[str] = [],  # noqa: B006 (KFP copies the default into the spec; never mutated)
    gpus_per_node: int = 0,
    tracking_uri: str = "",
    experiment: str = "spacenit",
    parent_run_id: str = "",
    register_as: str = "spacenit-encoder",
    alias: str = "champion",
):
    """Pretrain an encoder into `model.path` (checkpoint/ and pretrain_summary.json).

    `overrides` are extra `key.path=value` config overrides (as `spacenit
    pretrain --set`), applied after `steps`, `global_batch_size` and `seed`.
    `model.metadata` gets the MLflow run id, the registered model URI and version.
    An empty `tracking_uri` means $MLFLOW_TRACKING_URI (or the default store);
    the run nests under the pipeline's MLflow run `parent_run_id`; an empty
    `register_as` or `alias` skips registering or aliasing.
    """
    import os
    import subprocess
    import sys

    from spacenit.train.pretrain import build_config, load_summary
    from spacenit.train.pretrain import pretrain as run_pretrain
    from spacenit.train.tracking import PARENT_RUN_ENV

    if parent_run_id:
        os.environ[PARENT_RUN_ENV] = parent_run_id  # inherited by accelerate's workers too
    os.makedirs(model.path, exist_ok=True)  # KFP creates the artifact's parent, not the directory
    overrides = [
        f"train.steps={steps}",
        f"train.global_batch_size={global_batch_size}",
        f"train.seed={seed}",
        *overrides,
    ]
    if gpus_per_node > 1:
        # One process per GPU; the main one logs, writes the checkpoint and the summary.
        command = [
            sys.executable, "-m", "accelerate.commands.launch",
            "--multi_gpu", "--num_machines", "1", "--num_processes", str(gpus_per_node),
            "-m", "spacenit.cli", "pretrain", dataset.path,
            "--stats", stats.path, "--output-dir", model.path, "--model", model_preset,
            "--mlflow-experiment", experiment, "--register-as", register_as, "--alias", alias,
        ]  # fmt: skip
        for override in overrides:
            command += ["--set", override]
        if tracking_uri:
            command += ["--tracking-uri", tracking_uri]
        print("running:", " ".join(command), flush=True)
        subprocess.run(command, check=True)
        summary = load_summary(model.path)
        run_id, model_uri, version = (
            summary["run_id"],
            summary["model_uri"],
            summary["model_version"],
        )
        final_loss, world_size = summary["final_loss"], summary["world_size"]
    else:
        result = run_pretrain(
            dataset.path,
            stats.path,
            model.path,  # the checkpoint lands in model.path/checkpoint; embed accepts either
            build_config(model_preset, overrides),
            tracking_uri=tracking_uri or None,
            experiment=experiment,
            register_as=register_as or None,
            alias=alias or None,
        )
        run_id, model_uri, version = result.run_id, result.model_uri, result.model_version
        final_loss, world_size = result.final_loss, result.world_size
    model.metadata["run_id"] = run_id or ""
    model.metadata["model_uri"] = model_uri or ""
    model.metadata["version"] = version or ""
    model.metadata["final_loss"] = final_loss
    model.metadata["world_size"] = world_size
    model.metadata["preset"] = model_preset
    print(f"checkpoint: {model.path}\nmlflow run: {run_id}\nmodel: {model_uri} (version {version})")


pretrain_op = pretrain
