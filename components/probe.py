"""KFP component of the `probe` stage: embeddings -> kNN / linear probe metrics."""

# No `from __future__ import annotations`: KFP reads the annotations as types.
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def probe(
    embeddings: Input[Dataset],
    metrics: Output[Metrics],
    report: Output[Artifact],
    k: int = 20,
    seed: int = 0,
    test_fraction: float = 0.3,
    tracking_uri: str = "",
    experiment: str = "spacenit",
    parent_run_id: str = "",
):
    """Probe the embeddings; metrics go to `metrics`, MLflow, and the JSON file `report.path`.

    The MLflow run nests under the pipeline's run `parent_run_id`.
    """
    import os

    from spacenit.evaluation.probe import probe as run_probe
    from spacenit.train.tracking import PARENT_RUN_ENV

    if parent_run_id:
        os.environ[PARENT_RUN_ENV] = parent_run_id

    values = run_probe(
        embeddings.path,
        report.path,
        k=k,
        seed=seed,
        test_fraction=test_fraction,
        tracking_uri=tracking_uri or None,
        experiment=experiment,
    )
    for name, value in values.items():
        metrics.log_metric(name, value)
    print(values)


probe_op = probe
