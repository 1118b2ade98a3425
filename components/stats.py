"""KFP component of the `stats` stage: a dataset -> stats.json."""

# No `from __future__ import annotations`: KFP reads the annotations as types.
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def stats(dataset: Input[Dataset], stats: Output[Artifact]):
    """Write the per-sensor, per-band statistics of `dataset` as the JSON file `stats.path`."""
    from spacenit.data.stats import compute_stats

    print(f"wrote {compute_stats(dataset.path, stats.path, progress=False)}")


stats_op = stats
