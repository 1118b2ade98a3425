"""KFP components that open and close the MLflow run of one pipeline run.

`start_run` is the pipeline's first step: it creates the parent run (tagged with
the KFP run id) in the pipeline's experiment and returns its id, which the
stages pass on as $SPACENIT_PARENT_RUN_ID so their runs nest under it.
`end_run` is the pipeline's exit handler: it runs whether the stages succeeded
or not, finds the parent run by the KFP run id (an exit task cannot take
another task's output) and closes it with the pipeline's final state.
"""

# No `from __future__ import annotations`: KFP reads the annotations as types.
from kfp import dsl
from kfp.dsl import PipelineTaskFinalStatus

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def start_run(
    kfp_run_id: str,
    kfp_run_name: str,
    tracking_uri: str = "",
    experiment: str = "spacenit",
    input_dir: str = "",
    model_preset: str = "",
    steps: int = 0,
    global_batch_size: int = 0,
    gpus_per_node: int = 0,
    num_nodes: int = 1,
    convert_partitions: int = 1,
    seed: int = 0,
    pretrain_overrides: list[str] = [],  # noqa: B006 (KFP copies the default into the spec)
) -> str:
    """Create the pipeline's MLflow run (its knobs as params); return its run id."""
    from spacenit.train.tracking import start_pipeline_run

    run_id = start_pipeline_run(
        tracking_uri or None,
        experiment,
        kfp_run_id=kfp_run_id,
        kfp_run_name=kfp_run_name,
        params={
            "input_dir": input_dir,
            "model_preset": model_preset,
            "steps": steps,
            "global_batch_size": global_batch_size,
            "gpus_per_node": gpus_per_node,
            "num_nodes": num_nodes,
            "convert_partitions": convert_partitions,
            "seed": seed,
            "pretrain_overrides": " ".join(pretrain_overrides),
        },
    )
    print(f"mlflow pipeline run {run_id} in experiment {experiment!r}")
    return run_id


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def end_run(
    kfp_run_id: str,
    status: PipelineTaskFinalStatus,
    tracking_uri: str = "",
    experiment: str = "spacenit",
):
    """Close the pipeline's MLflow run: FINISHED, FAILED or KILLED as the pipeline ended."""
    from spacenit.train.tracking import end_pipeline_run

    run_id = end_pipeline_run(
        tracking_uri or None,
        experiment,
        kfp_run_id=kfp_run_id,
        state=status.state,
        error=status.error_message or "",
    )
    print(f"mlflow pipeline run {run_id}: {status.state}")


start_run_op = start_run
end_run_op = end_run
