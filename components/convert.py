"""KFP component of the `convert` stage: GeoTIFFs -> a SpaceNit dataset directory.

The pipeline fans it out: partition i of n converts the samples whose index
% n == i, and `components/merge.py` joins the partial datasets.
"""

# No `from __future__ import annotations`: KFP reads the annotations as types.
from kfp import dsl
from kfp.dsl import Dataset, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def convert(
    input_dir: str,
    dataset: Output[Dataset],
    layout: str = "auto",
    sensor: str = "sentinel2_l1c",
    tile_size_px: int = 0,
    gsd_m: float = 0.0,
    samples_per_shard: int = 64,
    assume_crs: str = "",
    workers: int = 1,
    partition_index: int = 0,
    partition_count: int = 1,
    tile_scenes: bool = False,
    input_fingerprint: str = "",
):
    """Convert the GeoTIFFs under `input_dir` into the dataset directory `dataset.path`.

    `input_fingerprint` (from the fingerprint step) is not read: it is an input so that
    KFP's cache key changes with the files under `input_dir`; it is kept as metadata.

    `tile_size_px` 0 and `gsd_m` 0 pick them from the data (see `spacenit convert --help`):
    every band is stored at its own resolution, over tiles of whole pixels of every grid.
    With `partition_count` > 1, only partition `partition_index` of the samples.
    With `tile_scenes`, a raster larger than one tile becomes one sample per tile.

    Raises when no sample could be converted; inputs that failed are logged and
    listed in `convert_report.json` inside the dataset, and the run goes on.
    """
    import logging

    from spacenit.conversion.convert import REPORT_JSON
    from spacenit.conversion.convert import convert as run_convert

    report = run_convert(
        input_dir,
        dataset.path,
        layout=layout,
        sensor=sensor,
        tile_size_px=tile_size_px or None,
        gsd_m=gsd_m or None,
        samples_per_shard=samples_per_shard,
        assume_crs=assume_crs or None,
        workers=workers,
        progress=False,
        # One partition is the whole input.
        partition=(partition_index, partition_count) if partition_count > 1 else None,
        tile_scenes=tile_scenes,
    )
    for failure in report.failures:
        logging.warning("convert: skipped %s: %s", failure.path, failure.reason)
    if report.failures:
        logging.warning(
            "convert: %d input(s) failed; see %s/%s",
            len(report.failures), dataset.path, REPORT_JSON,
        )  # fmt: skip
    dataset.metadata["num_samples"] = report.num_samples
    dataset.metadata["num_shards"] = report.num_shards
    dataset.metadata["num_failures"] = len(report.failures)
    dataset.metadata["partition"] = f"{partition_index}/{partition_count}"
    dataset.metadata["input_fingerprint"] = input_fingerprint
    print(
        f"converted {report.num_samples} samples (partition {partition_index}/{partition_count}) into {dataset.path}"
    )


convert_op = convert


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def partition_indices(count: int) -> list:
    """[0, 1, ..., count - 1]: the items the pipeline's ParallelFor over convert partitions iterates."""
    if count < 1:
        raise ValueError(f"convert_partitions must be >= 1, got {count}")
    return list(range(count))


partition_indices_op = partition_indices
