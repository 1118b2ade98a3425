"""A real `mlflow server` on 127.0.0.1, started with the arguments of the manifests' Deployment.

`mlflow_server()` starts it (a sqlite backend and a local artifacts directory in
place of PostgreSQL and the volume; everything else as deployed, --allowed-hosts
and --serve-artifacts included) and stops it. These tests use it for the tracking
and registry code over HTTP; tests/test_pipeline.py runs the whole local pipeline
against it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOYMENT = REPO / "manifests" / "base" / "mlflow" / "deployment.yaml"
STARTUP_TIMEOUT_S = 90


def _container(overlay: str | None = None) -> dict:
    """The MLflow container of manifests/base, or of an overlay as rendered."""
    if overlay is None:
        deployment = yaml.safe_load(DEPLOYMENT.read_text())
    else:
        from tests.test_manifests import OVERLAYS, render

        (deployment,) = [o for o in render(OVERLAYS[overlay]) if o["kind"] == "Deployment"
                         and o["metadata"]["name"] == "spacenit-mlflow"]  # fmt: skip
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["mlflow"]
    return container


def deployment_args(overlay: str | None = None) -> list[str]:
    """`mlflow` arguments of the MLflow Deployment in manifests/base (or an overlay)."""
    return list(_container(overlay)["args"])


def deployment_mlflow_env(overlay: str | None = None) -> dict[str, str]:
    """The MLFLOW_* settings of the Deployment's environment (literal values)."""
    return {
        e["name"]: e["value"]
        for e in _container(overlay)["env"]
        if e["name"].startswith("MLFLOW_") and "value" in e
    }


def local_server_args(root: Path, port: int, overlay: str | None = None) -> list[str]:
    """The Deployment's arguments, with a sqlite store, a local artifacts directory, loopback and one worker."""
    local = {
        "--host": "127.0.0.1",
        "--port": str(port),
        "--backend-store-uri": f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination": str(root / "artifacts"),
        "--workers": "1",
    }
    args = []
    for arg in deployment_args(overlay):
        name, eq, _ = arg.partition("=")
        args.append(f"{name}={local[name]}" if eq and name in local else arg)
    missing = set(local) - {a.partition("=")[0] for a in args}
    assert not missing, f"the Deployment no longer passes {missing}"
    return args


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, host: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@contextlib.contextmanager
def mlflow_server(
    root: Path, port: int | None = None, overlay: str | None = None, env: dict[str, str] | None = None
) -> Iterator[str]:
    """Start `mlflow server` under `root` (as manifests/base, or an overlay, runs it; on `port`,
    default a free one); yield its URI; stop it (and its workers) at exit. `env` adds to the
    Deployment's MLFLOW_* settings."""
    root.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    log = (root / "server.log").open("w")
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        *local_server_args(root, port, overlay),
    ]
    env = (
        {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        | deployment_mlflow_env(overlay)
        | (env or {})
    )
    # Its own process group, so stopping it stops its uvicorn workers too.
    server = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if server.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited with {server.returncode}:\n{(root / 'server.log').read_text()}"
                )
            with contextlib.suppress(OSError):
                if _get(f"{uri}/health")[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"mlflow server not healthy after {STARTUP_TIMEOUT_S} s:\n{(root / 'server.log').read_text()}"
                )
            time.sleep(0.5)
        yield uri
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=15)
        log.close()


@pytest.fixture(autouse=True)
def _restore_mlflow_globals(monkeypatch):
    """Tests here point MLflow's process-wide tracking URI and experiment at servers that stop."""
    import mlflow.tracking._tracking_service.utils as tracking_utils
    from mlflow.tracking import fluent

    for module, name in ((tracking_utils, "_tracking_uri"), (fluent, "_active_experiment_id")):
        if hasattr(module, name):
            monkeypatch.setattr(module, name, getattr(module, name))


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri


def test_server_args_come_from_the_manifest(tmp_path):
    args = local_server_args(tmp_path, 5555)
    assert args[0] == "server" and "--serve-artifacts" in args
    assert f"--backend-store-uri=sqlite:///{tmp_path / 'mlflow.db'}" in args
    assert any(a.startswith("--allowed-hosts=") for a in args)


@pytest.mark.timeout(180)
def test_server_answers_the_cluster_host_names_only(server):
    assert _get(f"{server}/health") == (200, "OK")
    port = server.rsplit(":", 1)[1]
    api = f"{server}/api/2.0/mlflow/experiments/search?max_results=1"
    for host in (
        "spacenit-mlflow:5000",
        "spacenit-mlflow.kubeflow.svc.cluster.local:5000",
        f"localhost:{port}",
    ):
        assert _get(api, host)[0] == 200, host
    # --allowed-hosts is in force: another Host header (DNS rebinding) is refused.
    assert _get(api, "attacker.example.com")[0] in (400, 403)


@pytest.mark.timeout(300)
def test_nested_runs_and_registered_encoder_over_http(
    server, pretrained, synthetic_dataset, tmp_path, monkeypatch
):
    import mlflow
    from mlflow.tracking import MlflowClient

    from spacenit.evaluation.embed import embed, load_embeddings
    from spacenit.train import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result, _ = pretrained
    parent = tracking.start_pipeline_run(
        server, "server-test", kfp_run_id="kfp-1", kfp_run_name="run-1", params={"steps": 4}
    )
    monkeypatch.setenv(tracking.PARENT_RUN_ENV, parent)
    with tracking.start_run(
        server, "server-test", run_name="pretrain", tags={tracking.STAGE_TAG: "pretrain"}
    ) as run:
        mlflow.log_metric("train/loss", 0.25, step=4)
        uri, version = tracking.log_and_register_encoder(
            result.checkpoint_dir, "server-encoder", "champion"
        )
    assert (
        tracking.end_pipeline_run(server, "server-test", kfp_run_id="kfp-1", state="SUCCEEDED")
        == parent
    )

    client = MlflowClient(server)
    child = client.get_run(run.info.run_id)
    assert child.data.tags["mlflow.parentRunId"] == parent
    parent_run = client.get_run(parent)
    assert parent_run.info.status == "FINISHED" and parent_run.data.params["steps"] == "4"
    assert parent_run.data.metrics["pretrain.train/loss"] == 0.25

    # The registered version says what it expects and how it did.
    assert uri == "models:/server-encoder@champion"
    mv = client.get_model_version_by_alias("server-encoder", "champion")
    assert mv.version == version and mv.run_id == run.info.run_id
    meta = json.loads((result.checkpoint_dir / "spacenit.json").read_text())
    sensors = [s["name"] for s in meta["sensors"]]
    assert mv.tags["spacenit.sensors"] == ",".join(sensors)
    for sensor in meta["sensors"]:
        assert mv.tags[f"spacenit.bands.{sensor['name']}"] == ",".join(sensor["bands"])
    assert mv.tags["metric.train/loss"] == "0.25"
    assert json.loads(mv.tags["spacenit.model"]) == meta["model"]

    # `models:/name@alias` alone carries the weights and the metadata files.
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=uri, tracking_uri=server, dst_path=str(tmp_path / "dl")
        )
    )
    files = {p.name for p in (local / "artifacts" / "metadata").iterdir()}
    assert files == {"config.json", "stats.json", "sensors.json", "metrics.json"}
    assert (
        json.loads((local / "artifacts" / "metadata" / "stats.json").read_text()) == meta["stats"]
    )
    assert yaml.safe_load((local / "MLmodel").read_text())["metadata"]["sensors"] == {
        s["name"]: s["bands"] for s in meta["sensors"]
    }
    out = embed(uri, synthetic_dataset, tmp_path / "emb.zarr", tracking_uri=server)
    assert load_embeddings(out).vectors.shape[0] == 24


@pytest.mark.timeout(120)
def test_end_run_marks_a_failed_pipeline(server, monkeypatch):
    from mlflow.tracking import MlflowClient

    from spacenit.train import tracking

    monkeypatch.delenv(tracking.PARENT_RUN_ENV, raising=False)
    parent = tracking.start_pipeline_run(server, "server-failures", kfp_run_id="kfp-2")
    tracking.end_pipeline_run(
        server, "server-failures", kfp_run_id="kfp-2", state="FAILED", error="convert: boom"
    )
    run = MlflowClient(server).get_run(parent)
    assert run.info.status == "FAILED" and run.data.tags["kfp.error"] == "convert: boom"
    # No run for this KFP run (it failed before start-run): nothing to close, no error.
    assert (
        tracking.end_pipeline_run(
            server, "server-failures", kfp_run_id="never-started", state="FAILED"
        )
        is None
    )


def test_pipeline_run_lifecycle_on_a_sqlite_store(tmp_path, monkeypatch):
    """The same parent/child bookkeeping without a server (`make demo`, `run-local` with sqlite)."""
    from mlflow.tracking import MlflowClient

    from spacenit.train import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = tracking.start_pipeline_run(
        uri, "local", kfp_run_id="kfp-3", kfp_run_name="spacenit-local"
    )
    monkeypatch.setenv(tracking.PARENT_RUN_ENV, parent)
    with tracking.start_run(
        uri, "local", run_name="probe", tags={tracking.STAGE_TAG: "probe"}
    ) as run:
        import mlflow

        mlflow.log_metric("knn_accuracy", 0.75)
    tracking.end_pipeline_run(uri, "local", kfp_run_id="kfp-3", state="SUCCEEDED")
    client = MlflowClient(uri)
    assert client.get_run(run.info.run_id).data.tags["mlflow.parentRunId"] == parent
    closed = client.get_run(parent)
    assert closed.info.status == "FINISHED" and closed.data.metrics["probe.knn_accuracy"] == 0.75
    assert closed.info.run_name == "spacenit-local"
    # Artifacts of a sqlite store stay beside the database, not in the working directory.
    assert client.get_experiment(closed.info.experiment_id).artifact_location.startswith(
        (tmp_path / "mlartifacts").as_uri()
    )


# ---------------------------------------------------------------- the server away at start, or back without the run (issue 20, case 12)


@pytest.mark.timeout(120)  # before: MLflow's own retries hung for 254 s
def test_pretrain_against_a_closed_port_fails_at_once_in_one_line(synthetic_dataset, tmp_path, monkeypatch, capsys):
    from spacenit.cli import main

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)  # MLflow's defaults, as a user has them
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: every connection is refused
        uri = f"http://127.0.0.1:{closed.getsockname()[1]}"
        code = main(["pretrain", str(synthetic_dataset), "--stats", str(synthetic_dataset / "stats.json"),
                     "--output-dir", str(tmp_path / "out"), "--tracking-uri", uri, "--set", "train.steps=1"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"the MLflow tracking server {uri} does not answer" in err and "Connection refused" in err
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_a_server_that_accepts_but_never_answers_is_unreachable_after_the_timeout():
    from spacenit.train.tracking import TrackingServerUnreachable, require_reachable

    with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel accepts; nobody reads or answers
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(TrackingServerUnreachable, match=r"does not answer \(timed out, within 0\.5 s\)"):
            require_reachable(uri, timeout_s=0.5)


def test_any_http_answer_counts_as_reachable(server):
    from spacenit.train.tracking import require_reachable

    require_reachable(server)
    require_reachable(f"{server}/no/such/prefix")  # a 404 is an answer: the requests that follow report it


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a self-signed certificate")
def test_a_tls_server_with_an_untrusted_certificate_counts_as_reachable(tmp_path):
    # MLflow decides what to trust (MLFLOW_TRACKING_SERVER_CERT_PATH, ..._INSECURE_TLS); the check only
    # asks whether something answers, and a TLS handshake is an answer.
    import http.server
    import ssl
    import threading

    from spacenit.train.tracking import require_reachable

    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        require_reachable(f"https://127.0.0.1:{server.server_address[1]}", timeout_s=10)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_server_back_on_an_empty_store_says_where_the_metrics_survive(tmp_path, caplog):
    from mlflow.tracking import MlflowClient

    from spacenit.train.callbacks import MLflowCallback

    port = _free_port()
    with mlflow_server(tmp_path / "before", port) as uri:
        client = MlflowClient(uri)
        run_id = client.create_run(client.create_experiment("restarts")).info.run_id
        callback = MLflowCallback(run_id, uri, {}, tmp_path / "out", log_system_metrics=False, max_retry_interval_s=1.0)
        callback.on_log(None, 1, {"loss": 1.0})
        assert callback.flush(60)
        assert [m.value for m in client.get_metric_history(run_id, "train/loss")] == [1.0]
    try:
        with mlflow_server(tmp_path / "after", port) as uri:  # the same address, an empty backend
            with caplog.at_level("WARNING", logger="spacenit.train.callbacks"):
                callback.on_log(None, 2, {"loss": 0.5})
                callback.on_log(None, 3, {"loss": 0.25})
                assert callback.flush(120)
                callback.on_train_end(None)
    finally:
        callback.close()
    local = tmp_path / "out" / "mlflow_metrics.jsonl"
    lost = [r.getMessage() for r in caplog.records if "no longer has run" in r.getMessage()]
    assert len(lost) == 1, caplog.text  # warned once, not once per record
    assert run_id in lost[0] and "RESOURCE_DOES_NOT_EXIST" in lost[0] and f"survive only in {local}" in lost[0]
    assert callback.dropped >= 1 and f"every metric is in {local}" in caplog.text
    assert [json.loads(line)["step"] for line in local.read_text().splitlines()] == [1, 2, 3]


@pytest.mark.timeout(240)
def test_prod_server_asks_for_credentials(tmp_path, monkeypatch):
    """The prod overlay's server (MLflow's basic-auth app): /health open, the API behind a user
    and password, and the steps' client (MLFLOW_TRACKING_USERNAME/PASSWORD) gets through."""
    import base64

    from mlflow.tracking import MlflowClient

    from spacenit.train import tracking

    # The overlay's auth config, with a sqlite user store in place of PostgreSQL.
    ini = (REPO / "manifests" / "overlays" / "prod" / "mlflow-auth" / "basic_auth.ini").read_text()
    assert "database_uri = postgresql+psycopg2://spacenit-postgres:5432/" in ini
    config = tmp_path / "basic_auth.ini"
    config.write_text(
        ini.replace(
            "postgresql+psycopg2://spacenit-postgres:5432/", f"sqlite:///{tmp_path / 'auth.db'}"
        )
    )
    # What the Secret spacenit-mlflow-auth provides.
    secret = {"MLFLOW_AUTH_ADMIN_USERNAME": "admin", "MLFLOW_AUTH_ADMIN_PASSWORD": "s3cret-for-tests",
              "MLFLOW_FLASK_SERVER_SECRET_KEY": "session-key-for-tests", "MLFLOW_AUTH_CONFIG_PATH": str(config)}  # fmt: skip
    with mlflow_server(tmp_path / "server", overlay="prod", env=secret) as uri:
        assert _get(f"{uri}/health") == (200, "OK")  # the probes need no credentials
        api = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _get(api)[0] == 401
        request = urllib.request.Request(api)
        request.add_header("Authorization", "Basic " + base64.b64encode(b"admin:wrong").decode())
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 401
        # The pipeline's steps: credentials from the spacenit-mlflow-client Secret, as env.
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret-for-tests")
        run_id = tracking.start_pipeline_run(uri, "auth-test", kfp_run_id="kfp-auth")
        assert MlflowClient(uri).get_run(run_id).data.tags[tracking.KFP_RUN_ID_TAG] == "kfp-auth"
