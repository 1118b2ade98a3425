"""KFP component that joins the partial datasets of the fanned-out `convert` into one."""

# No `from __future__ import annotations`: KFP reads the annotations as types.
from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def merge(parts: Input[list[Dataset]], dataset: Output[Dataset]):
    """Merge the partial datasets `parts` (one per convert partition) into `dataset.path`."""
    from pathlib import Path

    from spacenit.conversion.merge import merge_datasets

    merge_datasets([Path(part.path) for part in parts], Path(dataset.path))
    dataset.metadata["num_partitions"] = len(parts)
    for key in ("num_samples", "num_shards", "num_failures"):
        dataset.metadata[key] = sum(int(part.metadata.get(key, 0)) for part in parts)
    print(
        f"merged {len(parts)} partitions ({dataset.metadata['num_samples']} samples) into {dataset.path}"
    )


merge_op = merge
