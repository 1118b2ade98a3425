"""KFP components, one per pipeline stage.

Each is a lightweight Python component (`@dsl.component`) that runs in the
SpaceNit image (`components.image.IMAGE`, or `IMAGE_CUDA` where the pipeline
asks for GPUs) and only plumbs typed KFP artifacts and parameters into the
stage function of the `spacenit` package. Under
`kfp.local.SubprocessRunner(use_venv=False)` the same components run in the
current virtual environment.
"""

from components.convert import convert_op, partition_indices_op
from components.embed import embed_op
from components.fingerprint import fingerprint_input_op
from components.merge import merge_op
from components.mlflow_run import end_run_op, start_run_op
from components.pretrain import pretrain_op
from components.pretrain_multinode import pretrain_multinode_op
from components.probe import probe_op
from components.stats import stats_op

__all__ = [
    "convert_op", "embed_op", "end_run_op", "fingerprint_input_op", "merge_op", "partition_indices_op", "pretrain_multinode_op", "pretrain_op",
    "probe_op", "start_run_op", "stats_op",
]  # fmt: skip
