"""KFP component of the `pretrain` stage: dataset + stats -> checkpoint, MLflow run, registered model."""

# No `from __future__ import annotations`: KFP reads the annotations as types.
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

import spacenit


@dsl.component(base_image=spacenit.IMAGE, install_kfp_package=False)
def pretrain(
    dataset: Input[Dataset],
    stats: Input[Artifact],
    model: Output[Model],
    steps: int = 200,
    global_batch_size: int = 16,
    model_preset: str = "spacenit_nano",
    seed: int = 0,
    overrides: list[str] = [],  # noqa: B006 (KFP copies the default into the spec; never mutated)
    tracking_uri: str = "",
    experiment: str = "spacenit",
    register_as: str = "spacenit-encoder",
    alias: str = "champion",
):
    """Pretrain an encoder into `model.path` (checkpoint/ and pretrain_summary.json).

    `overrides` are extra `key.path=value` config overrides (as `spacenit
    pretrain --set`), applied after `steps`, `global_batch_size` and `seed`.
    `model.metadata` gets the MLflow run id, the registered model URI and version.
    An empty `tracking_uri` means $MLFLOW_TRACKING_URI (or the default store);
    an empty `register_as` or `alias` skips registering or aliasing.
    """
    from spacenit.train.pretrain import build_config
    from spacenit.train.pretrain import pretrain as run_pretrain

    overrides = [f"train.steps={steps}", f"train.global_batch_size={global_batch_size}", f"train.seed={seed}", *overrides]
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
    model.metadata["run_id"] = result.run_id or ""
    model.metadata["model_uri"] = result.model_uri or ""
    model.metadata["version"] = result.model_version or ""
    model.metadata["final_loss"] = result.final_loss
    model.metadata["world_size"] = result.world_size
    model.metadata["preset"] = model_preset
    print(
        f"checkpoint: {model.path}\nmlflow run: {result.run_id}\nmodel: {result.model_uri} (version {result.model_version})"
    )


pretrain_op = pretrain
