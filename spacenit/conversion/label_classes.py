"""Name the classes of a converted dataset's label rasters (`LabelRasterSpec.classes`, by class value).

`convert` stores label values as the rasters give them and cannot know what they mean;
readers of published datasets know, and record the names in `dataset.json` after
converting, under the dataset lock.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from spacenit.data.format import (
    DatasetFormatError,
    dataset_lock,
    load_dataset_info,
    save_dataset_info,
)


def name_label_classes(dataset_dir: str | Path, classes: list[str]) -> None:
    """Set the class names (index = class value) of the label rasters of `dataset_dir`."""
    dataset_dir = Path(dataset_dir)
    with dataset_lock(dataset_dir, "naming label classes"):
        info = load_dataset_info(dataset_dir)
        if info.label_raster is None:
            raise DatasetFormatError(f"{dataset_dir} has no label rasters to name classes of")
        info.label_raster = replace(info.label_raster, classes=list(classes))
        save_dataset_info(dataset_dir, info)


def has_label_classes(dataset_dir: str | Path, classes: list[str]) -> bool:
    """Whether `dataset_dir` is a finished dataset whose label rasters carry these class names (the
    last step of a reader that converts, then names): a failed or interrupted run is done again."""
    try:
        info = load_dataset_info(dataset_dir)
    except DatasetFormatError:
        return False
    return info.label_raster is not None and info.label_raster.classes == list(classes)
