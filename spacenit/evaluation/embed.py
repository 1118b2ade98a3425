"""The `embed` stage: a trained encoder + a dataset -> pooled per-sample embeddings (Zarr).

The model is a checkpoint directory or an MLflow URI (`models:/name@alias`,
`models:/name/3`, `runs:/<id>/encoder`); everything needed to use it (sensors,
bands, stats, patch size) comes with it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader
from tqdm import tqdm

from spacenit.arch.models import SpaceNitModel
from spacenit.data.loader import GeoTileDataset, collate
from spacenit.data.standardizer import Standardizer
from spacenit.train.checkpoint import CheckpointMeta, load_checkpoint

EMBEDDINGS_ARRAY = "embeddings"


class EmbedError(ValueError):
    """The model and the data do not fit together."""


def resolve_model(model: str | Path, tracking_uri: str | None = None) -> Path:
    """A checkpoint directory for `model` (a checkpoint, a pretrain output dir, or an MLflow URI)."""
    text = str(model)
    if text.startswith(("models:/", "runs:/")):
        import mlflow

        from spacenit.train.tracking import default_tracking_uri

        mlflow.set_tracking_uri(tracking_uri or default_tracking_uri())
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=text))
        candidates = [local / "artifacts" / "checkpoint", local / "checkpoint", local]
        for c in candidates:
            if (c / "model.safetensors").is_file():
                return c
        raise EmbedError(f"{text} holds no SpaceNit checkpoint (looked in {[str(c) for c in candidates]})")
    path = Path(model)
    # Accept the pretrain output directory as well as the checkpoint inside it.
    return path / "checkpoint" if (path / "checkpoint" / "model.safetensors").is_file() else path


@dataclass
class Embeddings:
    vectors: np.ndarray  # (N, D)
    ids: list[str]
    labels: list[str | None]
    splits: list[str | None]


def embed(
    model: str | Path,
    dataset_dir: str | Path,
    output_path: str | Path,
    *,
    batch_size: int = 32,
    tracking_uri: str | None = None,
    progress: bool = True,
) -> Path:
    """Write pooled embeddings of every sample of `dataset_dir` to the Zarr group `output_path`."""
    net, meta = load_checkpoint(resolve_model(model, tracking_uri))
    dataset = GeoTileDataset(dataset_dir, meta.stats, sensors=_check_sensors(meta, dataset_dir))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net.to(device)
    chunks = []
    for batch in tqdm(loader, desc="embed", unit="batch", disable=not progress):
        images = {k: v.to(device, non_blocking=True) for k, v in batch["images"].items()}
        months = {k: v.to(device) for k, v in batch["months"].items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            chunks.append(net.embed(images, months, meta.patch_size).float().cpu().numpy())
    records = dataset.reader.records
    result = Embeddings(
        vectors=np.concatenate(chunks),
        ids=[r.id for r in records],
        labels=[r.label for r in records],
        splits=[r.split for r in records],
    )
    return save_embeddings(output_path, result, model=str(model))


def _check_sensors(meta: CheckpointMeta, dataset_dir) -> list[str]:
    from spacenit.data.format import load_dataset_info

    info = load_dataset_info(dataset_dir)
    for spec in meta.sensors:
        have = info.sensors.get(spec.name)
        if have is None:
            raise EmbedError(f"the model needs sensor {spec.name!r}, which {dataset_dir} does not have ({sorted(info.sensors)})")
        if list(have.bands) != list(spec.bands):
            raise EmbedError(f"sensor {spec.name!r}: the model expects bands {list(spec.bands)}, {dataset_dir} has {list(have.bands)}")
    return [s.name for s in meta.sensors]


def save_embeddings(path: str | Path, emb: Embeddings, *, model: str) -> Path:
    path = Path(path)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        group = zarr.open_group(store=str(tmp), mode="w", zarr_format=3)
        group.attrs.update({"ids": emb.ids, "labels": emb.labels, "splits": emb.splits, "model": model})
        arr = group.create_array(EMBEDDINGS_ARRAY, shape=emb.vectors.shape, dtype="float32", chunks=emb.vectors.shape)
        arr[...] = emb.vectors.astype(np.float32)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_embeddings(path: str | Path) -> Embeddings:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"embeddings {path} do not exist; create them with `spacenit embed`")
    group = zarr.open_group(store=str(path), mode="r")
    attrs = group.attrs.asdict()
    return Embeddings(np.asarray(group[EMBEDDINGS_ARRAY][...]), attrs["ids"], attrs["labels"], attrs["splits"])


def embed_arrays(model: SpaceNitModel, meta: CheckpointMeta, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Raw sensor arrays (B, T, C, H, W) -> pooled embeddings (B, D); for the pyfunc flavour."""
    standardize = Standardizer(meta.stats, {s.name: s for s in meta.sensors})
    images, months = {}, {}
    for spec in meta.sensors:
        if spec.name not in arrays:
            raise EmbedError(f"input lacks sensor {spec.name!r}; the model expects {[s.name for s in meta.sensors]}")
        x = np.asarray(arrays[spec.name], dtype=np.float32)
        images[spec.name] = torch.from_numpy(np.stack([standardize(spec.name, xi) for xi in x]))
        months[spec.name] = torch.zeros(x.shape[:2], dtype=torch.long)
    return model.embed(images, months, meta.patch_size).numpy()
