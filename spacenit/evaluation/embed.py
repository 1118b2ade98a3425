"""The `embed` stage: a trained encoder + a dataset -> per-sample embeddings (Zarr).

The model is a checkpoint directory or an MLflow URI (`models:/name@alias`,
`models:/name/3`, `runs:/<id>/encoder`); everything needed to use it (sensors,
bands, stats, patch size) comes with it. Output: pooled embeddings (N, D) and,
with `patch_maps=True`, per-patch maps (N, h, w, D) with their validity.

Reading and standardizing run in DataLoader worker processes, `prefetch`
batches ahead of the encoder, so extraction runs at the speed of the forward
pass (benchmarks/bench_embed.py measures the ratio). On CUDA the forward runs
under bf16 autocast.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from spacenit.arch.models import SpaceNitModel
from spacenit.data.format import atomic_directory
from spacenit.data.loader import months_of
from spacenit.data.shards import DatasetReader
from spacenit.evaluation.inputs import InputBindingError, ModelInputs, bind_sensors
from spacenit.evaluation.patch_maps import embed_with_maps
from spacenit.evaluation.pooling import check_pooling, pooled_embeddings
from spacenit.sensors import SENTINEL, Grid
from spacenit.sensors import grid_name as grid_name_of
from spacenit.train.checkpoint import CheckpointMeta, load_checkpoint

EMBEDDINGS_ARRAY = "embeddings"
PATCH_MAPS_ARRAY = "patch_embeddings"
PATCH_VALID_ARRAY = "patch_valid"


class EmbedError(ValueError):
    """The model and the data do not fit together."""


def _download(model_uri: str, tracking_uri: str | None) -> Path:
    """The local copy of an MLflow models:/ or runs:/ URI; a missing one is an EmbedError naming the store."""
    import mlflow

    from spacenit.train.tracking import default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    except mlflow.exceptions.MlflowException as e:
        raise EmbedError(f"{model_uri}: not found in the MLflow store {uri} ({e.message}); "
                         "list the registered models with `mlflow models` or the MLflow UI") from None  # fmt: skip


def resolve_model(model: str | Path, tracking_uri: str | None = None) -> Path:
    """A checkpoint directory for `model` (a checkpoint, a pretrain output dir, or an MLflow URI)."""
    text = str(model)
    if text.startswith(("models:/", "runs:/")):
        local = _download(text, tracking_uri)
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
    #: Per-patch maps (N, h, w, D), when extracted.
    patch_maps: np.ndarray | None = None
    #: (N, h, w) True where a map cell has data.
    patch_valid: np.ndarray | None = None


class ModelInputDataset(Dataset):
    """Item i of a converted dataset as the model's standardized inputs (bands bound by name)."""

    def __init__(self, dataset_dir: str | Path, inputs: ModelInputs) -> None:
        self.reader = DatasetReader(dataset_dir)
        self.inputs = inputs

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> dict:
        sample = self.reader[index]
        images = {name: {g: torch.from_numpy(x) for g, x in grids.items()} for name, grids in self.inputs.sample(sample.data).items()}
        months = {}
        for b in self.inputs.bindings:
            T = next(iter(images[b.model_sensor.name].values())).shape[0]
            months[b.model_sensor.name] = torch.from_numpy(months_of(sample.record.dates.get(b.data_sensor, [""] * T)))
        return {"images": images, "months": months, "index": index}


def collate_inputs(items: list[dict]) -> dict:
    images = items[0]["images"]
    return {
        "images": {s: {g: torch.stack([it["images"][s][g] for it in items]) for g in grids} for s, grids in images.items()},
        "months": {s: torch.stack([it["months"][s] for it in items]) for s in images},
        "index": torch.tensor([it["index"] for it in items]),
    }


def to_device(images: dict, device: torch.device) -> dict:
    """{sensor: {Grid: tensor}} (or {sensor: tensor}) moved to `device`."""
    return {s: {g: x.to(device, non_blocking=True) for g, x in v.items()} if isinstance(v, dict)
            else v.to(device, non_blocking=True) for s, v in images.items()}  # fmt: skip


def model_inputs_for(meta: CheckpointMeta, dataset_dir: str | Path, *, sensor_map: Mapping[str, str] | None = None,
                     allow_missing_bands: bool = False) -> ModelInputs:  # fmt: skip
    """Bind the model's sensors to the dataset's by band name; EmbedError when they do not fit."""
    from spacenit.data.format import load_dataset_info

    info = load_dataset_info(dataset_dir)
    try:
        bindings = bind_sensors(meta.sensors, {n: s.bands for n, s in info.sensors.items()},
                                sensor_map=sensor_map, allow_missing_bands=allow_missing_bands)  # fmt: skip
    except InputBindingError as e:
        raise EmbedError(f"{dataset_dir}: {e}") from None
    return ModelInputs(bindings, meta.stats)


def default_num_workers() -> int:
    """Loader processes: one core is left to the forward pass, at most 4 are used."""
    return min(4, max(0, (os.cpu_count() or 1) - 1))


def make_loader(dataset: Dataset, batch_size: int, num_workers: int | None, prefetch: int = 4, pin_memory: bool = False) -> DataLoader:
    workers = default_num_workers() if num_workers is None else num_workers
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_inputs, num_workers=workers,
        prefetch_factor=prefetch if workers else None, pin_memory=pin_memory,
    )  # fmt: skip


def extract(
    net: SpaceNitModel,
    patch_size: int,
    loader,
    *,
    patch_maps: bool = False,
    progress: bool = False,
    gsd_m: float | None = None,
    pooling: str = "mean",
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Run the encoder over `loader`: pooled (N, D), and maps (N, h, w, D) + validity (N, h, w) if asked.

    `gsd_m` is the pixel size of the dataset's grid, which scales the encoder's positions.
    `pooling`: "mean" of the tokens, "cls" (register tokens) or "both" (`pooling.py`).
    """
    check_pooling(pooling, net)
    device = next(net.parameters()).device
    net.eval()
    pooled, maps, valid = [], [], []
    for batch in tqdm(loader, desc="embed", unit="batch", disable=not progress):
        images = to_device(batch["images"], device)
        months = to_device(batch["months"], device)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            if pooling != "mean":
                p, m, v = pooled_embeddings(net, images, months, patch_size, gsd_m=gsd_m, pooling=pooling, patch_maps=patch_maps)
                if patch_maps:
                    maps.append(m.float().cpu().numpy())
                    valid.append(v.cpu().numpy())
            elif patch_maps:
                p, m, v = embed_with_maps(net, images, months, patch_size, gsd_m)
                maps.append(m.float().cpu().numpy())
                valid.append(v.cpu().numpy())
            else:
                p = net.embed(images, months, patch_size, gsd_m=gsd_m)
        pooled.append(p.float().cpu().numpy())
    if not pooled:
        raise EmbedError("the dataset has no samples to embed")
    return np.concatenate(pooled), (np.concatenate(maps) if patch_maps else None), (np.concatenate(valid) if patch_maps else None)


def embed(
    model: str | Path,
    dataset_dir: str | Path,
    output_path: str | Path,
    *,
    batch_size: int = 32,
    tracking_uri: str | None = None,
    progress: bool = True,
    patch_maps: bool = False,
    num_workers: int | None = None,
    sensor_map: Mapping[str, str] | None = None,
    allow_missing_bands: bool = False,
    pooling: str = "mean",
) -> Path:
    """Write embeddings of every sample of `dataset_dir` to the Zarr group `output_path`.

    `model`: a checkpoint directory, a models:/ or runs:/ URI, or an external encoder's name
    ("galileo_nano", "presto"; also their URI once registered with `spacenit register`).

    `sensor_map` (model sensor -> dataset sensor) and `allow_missing_bands`
    let a model run on data converted for a related sensor; see `inputs.py`.
    `pooling`: "mean", "cls" or "both" (`pooling.py`).
    """
    output_path = Path(output_path)
    if output_path.suffix and output_path.suffix.lower() != ".zarr":
        raise EmbedError(f"{output_path}: a dataset's embeddings are a Zarr group; name it e.g. "
                         f"{output_path.with_suffix('.zarr')}")  # fmt: skip
    external = load_external_model(model, tracking_uri)
    if external is not None:
        if sensor_map:
            raise EmbedError(f"{model} maps sensors by band name itself; drop --sensor-map")
        if pooling != "mean":
            raise EmbedError(f"{model} pools its tokens its own way; --pooling {pooling} applies to SpaceNit models")
        return _embed_external(external, dataset_dir, output_path, patch_maps=patch_maps, progress=progress, model=str(model))
    net, meta = load_checkpoint(resolve_model(model, tracking_uri))
    inputs = model_inputs_for(meta, dataset_dir, sensor_map=sensor_map, allow_missing_bands=allow_missing_bands)
    dataset = ModelInputDataset(dataset_dir, inputs)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net.to(device)
    loader = make_loader(dataset, batch_size, num_workers, pin_memory=device.type == "cuda")
    vectors, maps, valid = extract(net, meta.patch_size, loader, patch_maps=patch_maps, progress=progress,
                                   gsd_m=dataset.reader.info.gsd_m, pooling=pooling)  # fmt: skip
    records = dataset.reader.records
    result = Embeddings(
        vectors=vectors,
        ids=[r.id for r in records],
        labels=[r.label for r in records],
        splits=[r.split for r in records],
        patch_maps=maps,
        patch_valid=valid,
    )
    return save_embeddings(output_path, result, model=str(model) if pooling == "mean" else f"{model} (pooling={pooling})")


def load_external_model(model: str | Path, tracking_uri: str | None = None):
    """The external encoder `model` names ("galileo_nano", "presto", or a models:/ or runs:/ URI of one
    registered with `spacenit register`); None when `model` is a SpaceNit model."""
    from spacenit.external import EXTERNAL_ENCODERS, load_external

    text = str(model)
    if text in EXTERNAL_ENCODERS:
        return load_external(text)
    if text.startswith(("models:/", "runs:/")):
        local = _download(text, tracking_uri)
        marker = next((p for p in (local / "artifacts" / EXTERNAL_JSON, local / EXTERNAL_JSON) if p.is_file()), None)
        if marker is not None:
            import json

            return load_external(json.loads(marker.read_text())["name"], marker.parent / "weights")
    return None


#: In a registered external encoder's artifacts: which encoder it is (its weights are beside it).
EXTERNAL_JSON = "external.json"


def _embed_external(encoder, dataset_dir, output_path, *, patch_maps: bool, progress: bool, model: str) -> Path:
    from spacenit.evaluation.external_adapters import encode_dataset

    reader = DatasetReader(dataset_dir)
    pooled, maps, valid = encode_dataset(encoder, reader, progress=progress)
    records = reader.records
    result = Embeddings(vectors=pooled, ids=[r.id for r in records], labels=[r.label for r in records],
                        splits=[r.split for r in records], patch_maps=maps if patch_maps else None,
                        patch_valid=valid if patch_maps else None)  # fmt: skip
    return save_embeddings(output_path, result, model=model)


def save_embeddings(path: str | Path, emb: Embeddings, *, model: str) -> Path:
    """Write atomically: a temporary group renamed into place."""
    path = Path(path)
    with atomic_directory(path) as tmp:
        group = zarr.open_group(store=str(tmp), mode="w", zarr_format=3)
        group.attrs.update({"ids": emb.ids, "labels": emb.labels, "splits": emb.splits, "model": model})
        arr = group.create_array(EMBEDDINGS_ARRAY, shape=emb.vectors.shape, dtype="float32", chunks=emb.vectors.shape)
        arr[...] = emb.vectors.astype(np.float32)
        if emb.patch_maps is not None:
            maps = group.create_array(PATCH_MAPS_ARRAY, shape=emb.patch_maps.shape, dtype="float32",
                                      chunks=(1, *emb.patch_maps.shape[1:]), dimension_names=("sample", "row", "col", "channel"))  # fmt: skip
            maps[...] = emb.patch_maps.astype(np.float32)
            valid = group.create_array(PATCH_VALID_ARRAY, shape=emb.patch_valid.shape, dtype="bool", chunks=emb.patch_valid.shape)
            valid[...] = emb.patch_valid
    return path


def load_embeddings(path: str | Path) -> Embeddings:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"embeddings {path} do not exist; create them with `spacenit embed`")
    try:
        group = zarr.open_group(store=str(path), mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError):
        group = None
    if group is None or not isinstance(group, zarr.Group):
        raise EmbedError(f"{path} is not a Zarr group of embeddings; write one with `spacenit embed MODEL DATASET OUT.zarr`")
    attrs = group.attrs.asdict()
    names = set(group.array_keys())
    if "ids" not in attrs or EMBEDDINGS_ARRAY not in names:
        what = ("a scene embedding (a georeferenced map of one GeoTIFF)" if "transform" in attrs
                else "not per-sample embeddings")  # fmt: skip
        raise EmbedError(f"{path} is {what}; probes take the per-sample embeddings of a labelled dataset: "
                         "`spacenit embed MODEL DATASET OUT.zarr`")  # fmt: skip
    maps = np.asarray(group[PATCH_MAPS_ARRAY][...]) if PATCH_MAPS_ARRAY in names else None
    valid = np.asarray(group[PATCH_VALID_ARRAY][...]) if PATCH_VALID_ARRAY in names else None
    return Embeddings(np.asarray(group[EMBEDDINGS_ARRAY][...]), attrs["ids"], attrs["labels"], attrs["splits"], maps, valid)


#: Key suffix of a sensor's months in flat inputs: "sentinel2_l2a/months".
MONTHS_KEY = "months"


def model_arrays(meta: CheckpointMeta, arrays: Mapping, gsd_m: float) -> tuple[dict, dict]:
    """Raw inputs in any of the accepted forms -> ({sensor: {Grid: (B, T, C, H, W) float32}}, {sensor: (B, T)}).

    Accepted, per sensor of the model (sensors not given are entirely missing):
      - `arrays[sensor]`: one (B, T, C, H, W) array of every band, on a grid of `gsd_m` (the
        training data's pixel size), or a dict {Grid or grid name: array} of its grids;
      - flat keys `"<sensor>/<grid>"` (e.g. "sentinel2_l2a/20m"): one grid at its native
        resolution, the sensor's native grid of that name (or "<gsd>m" for another pixel size);
      - `"<sensor>/months"`: (B, T) months 1-12 (0 = unknown, the default).
    Any numeric dtype; a single sample may drop the batch axis ((T, C, H, W)).
    """
    specs = {s.name: s for s in meta.sensors}
    data: dict[str, dict[Grid, np.ndarray]] = {}
    months: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        sensor, _, grid_name = str(key).partition("/")
        if sensor not in specs:
            raise EmbedError(f"input {key!r}: the model has no sensor {sensor!r}; its sensors are {sorted(specs)}")
        spec = specs[sensor]
        if grid_name == MONTHS_KEY:
            months[sensor] = np.asarray(value, dtype=np.int64).reshape(-1, np.shape(value)[-1])
        elif grid_name:
            data.setdefault(sensor, {})[_named_grid(spec, grid_name)] = _batched(value, spec, key)
        elif isinstance(value, Mapping):
            for g, x in value.items():
                grid = g if isinstance(g, Grid) else _named_grid(spec, str(g))
                data.setdefault(sensor, {})[grid] = _batched(x, spec, f"{key}/{grid.name}")
        else:
            data.setdefault(sensor, {})[Grid(grid_name_of(gsd_m), spec.bands, gsd_m)] = _batched(value, spec, key)
    if not data:
        raise EmbedError(f"no input of the model's sensors {sorted(specs)}; give at least one")
    batch, footprint_m = _batch_and_footprint(data)
    for name, spec in specs.items():  # sensors not given: entirely missing, on the same footprint
        if name not in data:
            T = 1
            if spec.spatial:
                side = max(1, round(footprint_m / gsd_m))
                data[name] = {Grid(grid_name_of(gsd_m), spec.bands, gsd_m): np.full((batch, T, spec.num_bands, side, side), SENTINEL, np.float32)}
            else:
                data[name] = {spec.native_grids()[0]: np.full((batch, T, spec.num_bands), SENTINEL, np.float32)}
        T = next(iter(data[name].values())).shape[1]
        months.setdefault(name, np.zeros((batch, T), dtype=np.int64))
        if months[name].shape != (batch, T):
            raise EmbedError(f"{name}/months has shape {months[name].shape}; the images have (B, T) = {(batch, T)}")
    return data, months


def _named_grid(spec, name: str) -> Grid:
    """A sensor's native grid by name ("20m"), or every band at the pixel size the name gives."""
    for grid in spec.native_grids():
        if grid.name == name:
            return grid
    try:
        gsd = float(name.removesuffix("m"))
    except ValueError:
        raise EmbedError(f"{spec.name}/{name}: no such grid; {spec.name}'s grids are "
                         f"{[g.name for g in spec.native_grids()]}") from None  # fmt: skip
    return Grid(name, spec.bands, gsd)


def _batched(x, spec, key: str) -> np.ndarray:
    """An input array as float32 with a batch axis: (B, T, C, H, W), or (B, T, C) for a non-spatial sensor."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.number):
        raise EmbedError(f"input {key!r} has dtype {x.dtype}; give numbers (any int or float type)")
    rank = 5 if spec.spatial else 3
    if x.ndim == rank - 1:
        x = x[None]
    if x.ndim != rank:
        shape = "(B, T, C, H, W)" if spec.spatial else "(B, T, C)"
        raise EmbedError(f"input {key!r} has shape {x.shape}; expected {shape} (or without B for one sample)")
    return x.astype(np.float32, copy=False)


def _batch_and_footprint(data: dict[str, dict[Grid, np.ndarray]]) -> tuple[int, float]:
    sizes = {x.shape[0] for grids in data.values() for x in grids.values()}
    if len(sizes) != 1:
        raise EmbedError(f"the inputs disagree on the batch size: {sorted(sizes)}")
    extents = [x.shape[-2] * g.gsd_m for grids in data.values() for g, x in grids.items() if x.ndim == 5]
    return sizes.pop(), max(extents, default=0.0)


def embed_arrays(model: SpaceNitModel, meta: CheckpointMeta, arrays: Mapping, *, patch_maps: bool = False):
    """Raw sensor arrays -> pooled embeddings (B, D); for the pyfunc flavour and the Python API.

    `arrays` takes the forms `model_arrays` describes: one array per sensor on a grid of the
    training data's pixel size, or its grids at their own resolutions; any subset of the
    model's sensors; months with "<sensor>/months". With `patch_maps`, returns per-patch maps
    (B, h, w, D) instead (NaN where a cell has no data).
    """
    gsd_m = (meta.extra or {}).get("gsd_m") or model.config.reference_gsd_m
    data, months = model_arrays(meta, arrays, gsd_m)
    bindings = bind_sensors(meta.sensors, {s.name: s.bands for s in meta.sensors})
    inputs = ModelInputs(bindings, meta.stats)
    images = inputs.batch(data, gsd_m)
    months = {k: torch.from_numpy(v) for k, v in months.items()}
    if not patch_maps:
        return model.embed(images, months, meta.patch_size, gsd_m=gsd_m).numpy()
    _, maps, valid = embed_with_maps(model, images, months, meta.patch_size, gsd_m)
    return torch.where(valid.unsqueeze(-1), maps, torch.nan).numpy()
