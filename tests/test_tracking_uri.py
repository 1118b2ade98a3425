"""No silent fallback: in a Kubernetes pod, a step without a tracking URI fails; locally, sqlite stays the default."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from spacenit.train.tracking import KUBERNETES_ENV, TrackingURIError, default_tracking_uri

REPO = Path(__file__).resolve().parents[1]
COMPILED = REPO / "pipelines" / "spacenit_pipeline.yaml"


def test_local_default_is_sqlite_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(KUBERNETES_ENV, raising=False)
    assert default_tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv(KUBERNETES_ENV, "10.96.0.1")
    assert default_tracking_uri() == "http://mlflow:5000"


def test_a_pod_without_a_tracking_uri_has_no_default(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv(KUBERNETES_ENV, "10.96.0.1")
    with pytest.raises(TrackingURIError, match="spacenit-mlflow-client"):
        default_tracking_uri()


def _run_compiled_step(
    executor: str, parameters: dict, tmp_path: Path, env: dict
) -> subprocess.CompletedProcess:
    """Run a step of the compiled pipeline as its pod does: `python3 -m kfp.dsl.executor_main` on its source."""
    spec = next(yaml.safe_load_all(COMPILED.read_text()))
    container = spec["deploymentSpec"]["executors"][executor]["container"]
    module = tmp_path / "ephemeral_component.py"
    module.write_text(container["command"][-1])
    function = container["args"][container["args"].index("--function_to_execute") + 1]
    executor_input = {
        "inputs": {"parameterValues": parameters},
        "outputs": {
            "parameters": {"Output": {"outputFile": str(tmp_path / "Output")}},
            "outputFile": str(tmp_path / "executor_output.json"),
        },
    }
    return subprocess.run(
        [sys.executable, "-m", "kfp.dsl.executor_main", "--component_module_path", str(module),
         "--executor_input", json.dumps(executor_input), "--function_to_execute", function],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_the_start_run_step_fails_in_a_pod_without_the_secret(tmp_path):
    """The MLflow Secret missing (it is optional for the pod) must not give an rc=0 run that writes mlflow.db in the pod."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update({KUBERNETES_ENV: "10.96.0.1", "PYTHONPATH": str(REPO), "_KFP_RUNTIME": "true"})
    parameters = {
        "kfp_run_id": "run-1",
        "kfp_run_name": "r",
        "tracking_uri": "",
        "experiment": "spacenit",
    }
    done = _run_compiled_step("exec-start-run", parameters, tmp_path, env)
    assert done.returncode != 0
    assert "no MLflow tracking URI" in done.stderr and "spacenit-mlflow-client" in done.stderr
    assert not list(tmp_path.rglob("mlflow.db"))

    # With the URI (what the Secret provides), the same step runs and records the run.
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    done = _run_compiled_step("exec-start-run", parameters, tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "store" / "mlflow.db").is_file()
    outputs = json.loads((tmp_path / "executor_output.json").read_text())
    assert len(outputs["parameterValues"]["Output"]) == 32  # the MLflow run id


def test_the_cli_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    from spacenit.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv(KUBERNETES_ENV, "10.96.0.1")
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            ["embed", "models:/spacenit-encoder@champion", str(tmp_path), str(tmp_path / "e.zarr")]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no MLflow tracking URI" in err
    assert not (tmp_path / "mlflow.db").exists()
