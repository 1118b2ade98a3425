"""The KFP pipeline: its compiled DAG, and a real local run of every stage (kfp.local)."""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

import pytest
import yaml

import spacenit

REPO = Path(__file__).resolve().parents[1]
STAGES = ["convert", "stats", "pretrain", "embed", "probe"]


@pytest.fixture(scope="module")
def pipeline_module():
    """`pipelines.spacenit_pipeline`, imported as `python -m` does: the repo root on sys.path."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return importlib.import_module("pipelines.spacenit_pipeline")


def _dependencies(task: dict) -> tuple[set[str], set[str]]:
    """(dependentTasks, producers of the task's input artifacts) of one compiled DAG task."""
    producers = {
        a["taskOutputArtifact"]["producerTask"]
        for a in task.get("inputs", {}).get("artifacts", {}).values()
        if "taskOutputArtifact" in a
    }
    return set(task.get("dependentTasks", [])), producers


def test_compiled_pipeline(pipeline_module, tmp_path: Path) -> None:
    out = pipeline_module.compile_pipeline(tmp_path / "spacenit_pipeline.yaml")
    spec = yaml.safe_load(out.read_text())

    assert spec["pipelineInfo"]["name"] == "spacenit"
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == set(STAGES)
    expected = {
        "convert": set(),
        "stats": {"convert"},
        "pretrain": {"convert", "stats"},
        "embed": {"convert", "pretrain"},
        "probe": {"embed"},
    }
    for name, upstream in expected.items():
        dependent, producers = _dependencies(tasks[name])
        assert dependent == upstream, name
        assert producers == upstream, name
    # The chain: each stage depends on the one before it.
    for before, after in zip(STAGES, STAGES[1:], strict=False):
        assert before in tasks[after]["dependentTasks"]

    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == len(STAGES)
    for name, executor in executors.items():
        container = executor["container"]
        assert container["image"] == spacenit.IMAGE, name
        assert "pip install" not in json.dumps(container), name
    # Training is never served from the cache, and asks for resources.
    assert not tasks["pretrain"]["cachingOptions"].get("enableCache", False)
    pretrain_exec = spec["components"]["comp-pretrain"]["executorLabel"]
    resources = executors[pretrain_exec]["container"]["resources"]
    assert resources["cpuRequest"] > 0 and resources["memoryRequest"] > 0

    params = spec["root"]["inputDefinitions"]["parameters"]
    for name in ["input_dir", "tracking_uri", "experiment", "tile_size_px", "layout", "sensor",
                 "steps", "global_batch_size", "model_preset", "register_as", "alias", "k", "seed"]:  # fmt: skip
        assert name in params, name

    checked_in = REPO / "pipelines" / "spacenit_pipeline.yaml"
    assert checked_in.read_text() == out.read_text(), (
        "pipelines/spacenit_pipeline.yaml is stale; run `python -m pipelines.spacenit_pipeline compile`"
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_pipeline_runs_locally(
    pipeline_module, synthetic_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    from spacenit.evaluation.embed import load_embeddings

    # MLflow puts a sqlite store's artifacts under the working directory.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    start = time.monotonic()
    result = pipeline_module.run_local(
        synthetic_dir,
        tmp_path / "kfp-root",
        tracking_uri,
        experiment="pipeline-test",
        tile_size_px=32,
        steps=6,
        global_batch_size=8,
        pretrain_overrides=["model.depth=2", "model.decoder_depth=1"],
        k=5,
    )
    print(f"local pipeline run: {time.monotonic() - start:.1f} s")

    # Probe metrics, as the Metrics artifact and as the JSON report.
    for name in ["knn_accuracy", "linear_accuracy", "majority_accuracy"]:
        assert 0.0 <= result.metrics[name] <= 1.0, name
    assert result.metrics["num_train"] + result.metrics["num_test"] == 24
    report = json.loads(result.artifacts["probe_report"].read_text())
    assert report["knn_accuracy"] == result.metrics["knn_accuracy"]

    # Every artifact lies under the pipeline root.
    root = (tmp_path / "kfp-root").resolve()
    for name, path in result.artifacts.items():
        assert path.exists(), name
        assert root in path.parents, name
    assert (result.artifacts["dataset"] / "dataset.json").is_file()
    assert json.loads(result.artifacts["stats"].read_text())["num_samples"] == 24
    assert (result.artifacts["model"] / "checkpoint" / "model.safetensors").is_file()
    assert (result.artifacts["model"] / "pretrain_summary.json").is_file()

    emb = load_embeddings(result.artifacts["embeddings"])
    assert emb.vectors.shape[0] == 24 == len(emb.ids)

    # MLflow: a pretrain run and a probe run with metrics, and the registered encoder.
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("pipeline-test")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    by_stage = {r.data.tags.get("spacenit.stage"): r for r in runs}
    assert {"pretrain", "probe"} <= set(by_stage)
    assert by_stage["pretrain"].data.metrics
    assert by_stage["probe"].data.metrics["knn_accuracy"] == result.metrics["knn_accuracy"]
    assert result.model_metadata["run_id"] == by_stage["pretrain"].info.run_id

    version = client.get_model_version_by_alias("spacenit-encoder", "champion")
    assert version.run_id == by_stage["pretrain"].info.run_id
    assert result.model_metadata["version"] == str(version.version)
