"""MLflow: the tracking callback, and logging + registering the encoder.

Only this module (and evaluation's probe logging) imports mlflow; model and
data code never talk to the tracker.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from spacenit import __version__

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "spacenit"
DEFAULT_MODEL_NAME = "spacenit-encoder"
DEFAULT_ALIAS = "champion"


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else a sqlite store in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"


def _artifact_root(tracking_uri: str) -> str | None:
    """For a sqlite store, keep artifacts beside the database instead of in ./mlruns of the cwd."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


def start_run(tracking_uri: str | None, experiment: str, run_name: str | None = None, tags: dict | None = None):
    uri = tracking_uri or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    if client.get_experiment_by_name(experiment) is None:
        root = _artifact_root(uri)
        try:
            client.create_experiment(experiment, artifact_location=f"{root}/{experiment}" if root else None)
        except mlflow.exceptions.MlflowException:
            pass  # another process created it first
    mlflow.set_experiment(experiment)
    return mlflow.start_run(run_name=run_name, tags={"spacenit.version": __version__, **(tags or {})})


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def log_and_register_encoder(checkpoint_dir: Path, model_name: str, alias: str | None) -> tuple[str, str]:
    """Log the checkpoint as a pyfunc model in the active run, register it, set `alias`.

    Returns (models:/ URI, version).
    """
    info = mlflow.pyfunc.log_model(
        name="encoder",
        # A file path, not an object: the model is rebuilt from code, never unpickled.
        python_model=str(Path(__file__).parents[1] / "evaluation" / "pyfunc_model.py"),
        artifacts={"checkpoint": str(checkpoint_dir)},
        registered_model_name=model_name,
        # Explicit requirements: inferring them imports and inspects the whole environment.
        pip_requirements=[f"spacenit=={__version__}"],
    )
    version = str(info.registered_model_version)
    if alias:
        MlflowClient().set_registered_model_alias(model_name, alias, version)
    uri = f"models:/{model_name}@{alias}" if alias else f"models:/{model_name}/{version}"
    return uri, version
