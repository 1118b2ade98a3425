"""Register a published external encoder (Galileo nano, Presto) in the MLflow Model Registry.

Once registered, its `models:/` URI works wherever a SpaceNit model's does: `spacenit embed`
(datasets and scenes), `spacenit evaluate --model`, `spacenit.load_encoder`, and
`mlflow models serve`. The model carries its weights (sha256-checked again when it loads), their
licence, a marker naming the encoder (external.json) and the SpaceNit code that runs it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from spacenit import __version__
from spacenit.evaluation.embed import EXTERNAL_JSON
from spacenit.sensors import get_sensor

#: The experiment registration runs are logged to, unless told otherwise.
DEFAULT_EXPERIMENT = "spacenit-external"


def _input_example(encoder) -> dict[str, np.ndarray]:
    """One 8 x 8 px, single-date sample of the encoder's first optical sensor: enough to infer the outputs."""
    sensor = next(s for s in encoder.sensors if get_sensor(s).spatial)
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 3000, (1, 1, len(get_sensor(sensor).bands), 8, 8)).astype(np.float32)
    return {sensor: pixels, f"{sensor}/months": np.array([[6]], dtype=np.int64)}


def register_external(
    name: str,
    *,
    model_name: str | None = None,
    alias: str | None = "published",
    weights_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
) -> tuple[str, str]:
    """Log external encoder `name` with its published weights as a pyfunc model, register it as
    `model_name` (default: the encoder's name with dashes) and point `alias` at the new version.
    Returns (models:/ URI, version)."""
    from mlflow.models import ModelSignature, infer_signature

    from spacenit.external import load_external
    from spacenit.external.weights import weights_dir as resolve_weights_dir
    from spacenit.train.tracking import (
        _experiment_id,
        _forget_local_paths,
        default_tracking_uri,
        serving_requirements,
    )

    encoder = load_external(name, weights_dir)  # refuses weights that are not the published bytes
    source = resolve_weights_dir(weights_dir) / name
    model_name = model_name or name.replace("_", "-")
    uri = tracking_uri or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    example = _input_example(encoder)
    images = {k: v for k, v in example.items() if "/" not in k}
    months = {k.split("/")[0]: v for k, v in example.items() if "/" in k}
    inferred = infer_signature(None, encoder.encode(images, months, 10.0).pooled, params={"output": "pooled", "gsd_m": 10.0})
    facts = {"name": name, "sensors": list(encoder.sensors), "patch_size_px": encoder.patch_size_px,
             "pooled_dim": encoder.pooled_dim, "patch_dim": encoder.patch_dim, "spacenit_version": __version__}  # fmt: skip
    with mlflow.start_run(experiment_id=_experiment_id(client, uri, experiment), run_name=f"register-{name}") as run:
        mlflow.log_params({"external.name": name, "external.patch_size_px": encoder.patch_size_px})
        with tempfile.TemporaryDirectory() as tmp:
            weights = Path(tmp) / "weights" / name
            shutil.copytree(source, weights)
            marker = Path(tmp) / EXTERNAL_JSON
            marker.write_text(json.dumps(facts, indent=1))
            model_dir = Path(tmp) / "encoder"
            mlflow.pyfunc.save_model(
                path=str(model_dir),
                python_model=str(Path(__file__).parent / "external_pyfunc_model.py"),
                artifacts={"weights": str(weights.parent), "external": str(marker)},
                signature=ModelSignature(inputs=None, outputs=inferred.outputs, params=inferred.params),
                input_example=example,
                metadata=facts,
                code_paths=[str(Path(__file__).parents[1])],
                pip_requirements=serving_requirements(),
            )
            _forget_local_paths(model_dir / "MLmodel")
            mlflow.log_artifacts(str(model_dir), "encoder")
        info = mlflow.register_model(f"runs:/{run.info.run_id}/encoder", model_name)
    version = str(info.version)
    tags = {"spacenit.external": name, "spacenit.sensors": ",".join(encoder.sensors),
            "spacenit.patch_size": str(encoder.patch_size_px), "spacenit.version": __version__}  # fmt: skip
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    client.update_model_version(model_name, version, description=f"Published {name} weights (sha256-checked), "
                                f"served by spacenit {__version__}; licence in artifacts/weights/{name}/LICENSE.")  # fmt: skip
    if alias:
        client.set_registered_model_alias(model_name, alias, version)
    return (f"models:/{model_name}@{alias}" if alias else f"models:/{model_name}/{version}"), version
