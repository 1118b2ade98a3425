"""MLflow: runs (nested under a pipeline run), and logging + registering the encoder.

A pipeline run is one MLflow run (`start_pipeline_run` ... `end_pipeline_run`) in
the experiment named after the pipeline; every stage's run is nested under it.
Stages find their parent through the environment variable `PARENT_RUN_ENV`,
which the KFP components set and which `accelerate launch` workers and the
pods of a multi-node training job inherit, so the stage functions themselves
take no extra argument. Without it, runs are top-level (CLI use).

Only this module, train/callbacks.py and evaluation's probe logging import
mlflow; model and data code never talk to the tracker.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from spacenit import __version__
from spacenit.config import ConfigError

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "spacenit"
DEFAULT_MODEL_NAME = "spacenit-encoder"
DEFAULT_ALIAS = "champion"

#: The MLflow run id of the pipeline run; `start_run` nests stage runs under it.
PARENT_RUN_ENV = "SPACENIT_PARENT_RUN_ID"
#: Tag on a pipeline run: the KFP run id, by which the pipeline's exit step finds it.
KFP_RUN_ID_TAG = "kfp.run_id"
KFP_RUN_NAME_TAG = "kfp.run_name"
STAGE_TAG = "spacenit.stage"

#: Final KFP task states (PipelineTaskFinalStatus.state) -> MLflow run status.
_KFP_TO_MLFLOW_STATUS = {
    "SUCCEEDED": "FINISHED",
    "FAILED": "FAILED",
    "CANCELED": "KILLED",
    "CANCELLED": "KILLED",
}


#: Seconds a run waits for a first answer from an HTTP tracking server before it gives up.
REACHABLE_TIMEOUT_S = 5.0


class TrackingServerUnreachable(RuntimeError):
    """The tracking server did not answer when a run was about to start."""


def require_reachable(tracking_uri: str, timeout_s: float = REACHABLE_TIMEOUT_S) -> None:
    """Fail within `timeout_s` when an http(s) tracking server does not answer at all.

    Any HTTP answer counts, an error status included (the requests that follow
    deal with it), and so does a TLS handshake this check does not trust (MLflow
    has its own certificate settings): only a refused or reset connection, an
    unknown host or silence fail. Without this, MLflow's own retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES,
    backing off) hang for minutes before the first run is created. Other stores
    (sqlite, file) are local and not checked.
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return
    url = f"{tracking_uri.rstrip('/')}/health"
    try:
        urllib.request.urlopen(url, timeout=timeout_s).close()  # noqa: S310 - an http(s) URL, checked above
    except urllib.error.HTTPError:
        return  # it answered
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, ssl.SSLError):
            return  # it answered the TLS handshake; MLflow's own TLS settings decide what is trusted
        raise TrackingServerUnreachable(
            f"the MLflow tracking server {tracking_uri} does not answer ({reason}, within {timeout_s:g} s); "
            "start it, or give a reachable --tracking-uri (or sqlite:///PATH for a local store)"
        ) from None


#: Set by Kubernetes in every container of a pod.
KUBERNETES_ENV = "KUBERNETES_SERVICE_HOST"
#: The Secret the pipeline's steps read MLFLOW_TRACKING_URI from (pipelines/spacenit_pipeline.py).
MLFLOW_CLIENT_SECRET = "spacenit-mlflow-client"


class TrackingURIError(ConfigError):
    """No tracking URI where a local default would lose the runs."""


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set; else, outside Kubernetes, a sqlite store in the working directory.

    In a Kubernetes pod there is no default: a sqlite file would vanish with the pod, and
    the run's record with it. Raises TrackingURIError there.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    if os.environ.get(KUBERNETES_ENV):
        raise TrackingURIError(
            "no MLflow tracking URI: this runs in a Kubernetes pod, where a local sqlite store "
            f"would vanish with the pod. Create the Secret {MLFLOW_CLIENT_SECRET} with "
            "MLFLOW_TRACKING_URI in this namespace (docs/deploy.md), or pass the pipeline "
            "parameter tracking_uri (--tracking-uri on the command line)"
        )
    return f"sqlite:///{Path('mlflow.db').resolve()}"


def _artifact_root(tracking_uri: str) -> str | None:
    """For a sqlite store, keep artifacts beside the database instead of in ./mlruns of the cwd."""
    if tracking_uri.startswith("sqlite:///"):
        return (
            (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts")
            .resolve()
            .as_uri()
        )
    return None


def _experiment_id(client: MlflowClient, uri: str, experiment: str) -> str:
    """The id of `experiment`, created if missing (a server picks the artifact location)."""
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    root = _artifact_root(uri)
    try:
        return client.create_experiment(
            experiment, artifact_location=f"{root}/{experiment}" if root else None
        )
    except mlflow.exceptions.MlflowException:
        return client.get_experiment_by_name(
            experiment
        ).experiment_id  # another process created it first


def start_run(
    tracking_uri: str | None,
    experiment: str,
    run_name: str | None = None,
    tags: dict | None = None,
    parent_run_id: str | None = None,
):
    """Start (and activate) a stage run in `experiment`.

    It is nested under `parent_run_id`, or else under $SPACENIT_PARENT_RUN_ID when set.
    """
    uri = tracking_uri or default_tracking_uri()
    require_reachable(uri)
    mlflow.set_tracking_uri(uri)
    _experiment_id(MlflowClient(), uri, experiment)
    mlflow.set_experiment(experiment)
    parent_run_id = parent_run_id or os.environ.get(PARENT_RUN_ENV) or None
    return mlflow.start_run(
        run_name=run_name,
        tags={"spacenit.version": __version__, **(tags or {})},
        parent_run_id=parent_run_id,
    )


def start_pipeline_run(
    tracking_uri: str | None,
    experiment: str,
    *,
    kfp_run_id: str,
    kfp_run_name: str = "",
    params: dict[str, Any] | None = None,
) -> str:
    """Create the parent run of one pipeline run and return its id.

    The run is left RUNNING (it is not the process's active run, so nothing ends it
    at exit); `end_pipeline_run` closes it with the pipeline's final state.
    """
    uri = tracking_uri or default_tracking_uri()
    require_reachable(uri)
    client = MlflowClient(uri)
    tags = {
        "spacenit.version": __version__,
        STAGE_TAG: "pipeline",
        KFP_RUN_ID_TAG: kfp_run_id,
        KFP_RUN_NAME_TAG: kfp_run_name,
    }
    run = client.create_run(
        _experiment_id(client, uri, experiment), run_name=kfp_run_name or None, tags=tags
    )
    if params:
        client.log_batch(
            run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
        )
    return run.info.run_id


def find_pipeline_run(tracking_uri: str | None, experiment: str, kfp_run_id: str) -> str | None:
    """The id of the pipeline run tagged with `kfp_run_id`, or None."""
    client = MlflowClient(tracking_uri or default_tracking_uri())
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{KFP_RUN_ID_TAG}` = '{kfp_run_id}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def end_pipeline_run(
    tracking_uri: str | None, experiment: str, *, kfp_run_id: str, state: str, error: str = ""
) -> str | None:
    """Close the pipeline run of `kfp_run_id` with the pipeline's final `state`.

    Each stage run's latest metrics are copied onto it as `<stage>.<metric>`, so the
    experiment's run table shows a pipeline's results in one row. Returns the run id,
    or None when no run was started (the pipeline failed before its first step).
    """
    run_id = find_pipeline_run(tracking_uri, experiment, kfp_run_id)
    if run_id is None:
        log.warning(
            "no MLflow pipeline run tagged %s=%s in %r", KFP_RUN_ID_TAG, kfp_run_id, experiment
        )
        return None
    client = MlflowClient(tracking_uri or default_tracking_uri())
    parent = client.get_run(run_id)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'"
    )
    summary = {}
    for child in children:
        stage = child.data.tags.get(STAGE_TAG, child.info.run_name)
        summary.update({f"{stage}.{k}": v for k, v in child.data.metrics.items()})
    if summary:
        client.log_batch(run_id, metrics=[_metric(k, v) for k, v in summary.items()])
    client.set_tag(run_id, "kfp.state", state)
    if error:
        client.set_tag(run_id, "kfp.error", error[:5000])
    client.set_terminated(run_id, status=_KFP_TO_MLFLOW_STATUS.get(state.upper(), "FAILED"))
    return run_id


def _metric(key: str, value: float) -> Metric:
    return Metric(key, float(value), int(time.time() * 1000), 0)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def encoder_metadata(
    checkpoint_dir: Path, run_metrics: dict[str, float] | None = None
) -> dict[str, Any]:
    """What a registered encoder expects and achieved, read from its checkpoint's spacenit.json.

    Keys: spacenit_version, model (the config), patch_size, sensors ({name: [bands]}),
    stats ({sensor: {bands, mean, std}}: the normalization the weights were trained
    with), metrics (the training run's latest values), trained_steps.
    """
    from spacenit.train.checkpoint import METADATA

    meta = json.loads((Path(checkpoint_dir) / METADATA).read_text())
    return {
        "spacenit_version": meta.get("spacenit_version", __version__),
        "model": meta["model"],
        "patch_size": meta["patch_size"],
        "sensors": {s["name"]: list(s["bands"]) for s in meta["sensors"]},
        "stats": meta["stats"],
        "metrics": dict(run_metrics or {}),
        "trained_steps": meta.get("extra", {}).get("trained_steps"),
    }


def _version_tags(metadata: dict[str, Any]) -> dict[str, str]:
    """Model version tags: short strings, one per fact, searchable in the registry."""
    tags = {
        "spacenit.version": metadata["spacenit_version"],
        "spacenit.sensors": ",".join(metadata["sensors"]),
        "spacenit.patch_size": str(metadata["patch_size"]),
        "spacenit.model": json.dumps(metadata["model"], sort_keys=True),
    }
    tags.update(
        {f"spacenit.bands.{name}": ",".join(bands) for name, bands in metadata["sensors"].items()}
    )
    tags.update({f"metric.{k}": f"{v:.6g}" for k, v in metadata["metrics"].items()})
    if metadata.get("trained_steps") is not None:
        tags["spacenit.trained_steps"] = str(metadata["trained_steps"])
    return tags


def _signature(checkpoint_dir: Path, input_example: dict[str, np.ndarray]):
    """The pyfunc signature: pooled embeddings out and the `output` parameter, and no input schema.

    An input schema of tensors would pin every dimension but the batch, every sensor as required
    and one dtype: serving would refuse a 64 px tile, a single date, Sentinel-2 alone from a
    multi-sensor model, or float64 pixels, all of which the model takes. The model checks its
    inputs itself (`spacenit.evaluation.embed.model_arrays`), with errors that say what is wrong.
    """
    from mlflow.models import ModelSignature, infer_signature

    from spacenit.evaluation.embed import embed_arrays
    from spacenit.train.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint_dir)
    inferred = infer_signature(None, embed_arrays(model, meta, input_example), params={"output": "pooled"})
    return ModelSignature(inputs=None, outputs=inferred.outputs, params=inferred.params)


def log_and_register_encoder(
    checkpoint_dir: Path,
    model_name: str,
    alias: str | None,
    metrics: dict[str, float] | None = None,
    input_example: dict[str, np.ndarray] | None = None,
) -> tuple[str, str]:
    """Log the checkpoint as a pyfunc model in the active run, register it, set `alias`.

    With `input_example` (sensor -> raw (B, T, C, H, W) arrays), the model is logged
    with it and with a signature inferred from the encoder's output on it, which
    also declares the `output` parameter ("pooled" or "patch_maps") for serving.

    The model carries its metadata three ways, so a `models:/` URI alone is enough to
    use it: the checkpoint's spacenit.json (config, sensors, stats), files beside it in
    the model (`artifacts/metadata/{config,stats,sensors,metrics}.json`, also logged to
    the run under `encoder_metadata/`) and the MLmodel `metadata` field; and the model
    version is tagged with the sensors, bands, patch size and training metrics.
    `metrics` (default: the active run's latest, as the tracker has them so far) become
    `metric.<name>` tags and metrics.json. Returns (models:/ URI, version).
    """
    if metrics is None:
        run = mlflow.active_run()
        metrics = MlflowClient().get_run(run.info.run_id).data.metrics if run else {}
    metadata = encoder_metadata(checkpoint_dir, metrics)
    signature = None if input_example is None else _signature(checkpoint_dir, input_example)
    with tempfile.TemporaryDirectory() as tmp:
        meta_dir = Path(tmp) / "metadata"
        meta_dir.mkdir()
        files = {"config": metadata["model"], "stats": metadata["stats"], "metrics": metadata["metrics"],
                 "sensors": {"sensors": metadata["sensors"], "patch_size": metadata["patch_size"]}}  # fmt: skip
        for name, content in files.items():
            (meta_dir / f"{name}.json").write_text(json.dumps(content, indent=1, sort_keys=True))
        mlflow.log_artifacts(str(meta_dir), "encoder_metadata")
        info = mlflow.pyfunc.log_model(
            name="encoder",
            # A file path, not an object: the model is rebuilt from code, never unpickled.
            python_model=str(Path(__file__).parents[1] / "evaluation" / "pyfunc_model.py"),
            artifacts={"checkpoint": str(checkpoint_dir), "metadata": str(meta_dir)},
            registered_model_name=model_name,
            signature=signature,
            input_example=input_example,
            metadata={
                k: metadata[k]
                for k in ("spacenit_version", "model", "patch_size", "sensors", "trained_steps")
            },
            # Explicit requirements: inferring them imports and inspects the whole environment.
            pip_requirements=[f"spacenit=={__version__}"],
        )
    version = str(info.registered_model_version)
    client = MlflowClient()
    for key, value in _version_tags(metadata).items():
        client.set_model_version_tag(model_name, version, key, value)
    client.update_model_version(
        model_name, version,
        description=f"SpaceNit encoder ({', '.join(metadata['sensors'])}), patch size {metadata['patch_size']}, "
        f"{metadata.get('trained_steps')} steps; spacenit {metadata['spacenit_version']}.",
    )  # fmt: skip
    if alias:
        client.set_registered_model_alias(model_name, alias, version)
    uri = f"models:/{model_name}@{alias}" if alias else f"models:/{model_name}/{version}"
    return uri, version
