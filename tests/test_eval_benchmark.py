"""The benchmark harness end to end on the synthetic dataset: store, skip, MLflow runs and PNGs, report, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from spacenit.cli import main
from spacenit.evaluation.adapters import Features, RawPixelAdapter, SpaceNitAdapter
from spacenit.evaluation.benchmark import BenchmarkOptions, run_benchmark
from spacenit.evaluation.datasets import bigearthnet_task, task_from_dataset
from spacenit.evaluation.finetune import FinetuneConfig
from spacenit.evaluation.heads import HeadConfig
from spacenit.evaluation.knn import knn_scores
from spacenit.evaluation.metrics import accuracy
from spacenit.evaluation.report import write_report
from spacenit.evaluation.results import ResultKey, ResultsStore
from spacenit.evaluation.splits import ALL


class CountingRawPixels(RawPixelAdapter):
    """The raw-pixel baseline, counting how often features are computed."""

    name = "raw_pixels"
    calls = 0

    def features(self, task, *, patch_tokens: bool = False) -> Features:
        CountingRawPixels.calls += 1
        return super().features(task, patch_tokens=patch_tokens)


@pytest.fixture
def fast_heads(monkeypatch):
    """Short probe training for tests: the protocol's shape, not its length."""
    import spacenit.evaluation.attentive as attentive
    import spacenit.evaluation.linear as linear

    monkeypatch.setattr(linear, "HeadConfig", lambda: HeadConfig(epochs=10, min_steps=20, lrs=(1e-2, 1e-1)))
    monkeypatch.setattr(attentive, "HeadConfig", lambda **_: HeadConfig(epochs=10, min_steps=20, lrs=(1e-2,)))


def test_benchmark_fills_the_grid_once_and_logs_each_cell(pretrained, synthetic_dataset: Path, tmp_path: Path, fast_heads) -> None:
    result, tracking_uri = pretrained
    task = task_from_dataset(synthetic_dataset)
    model = SpaceNitAdapter.from_checkpoint(result.checkpoint_dir, name="nano")
    adapters = [model, CountingRawPixels()]
    options = BenchmarkOptions(probes=("knn", "linear", "attentive", "finetune"), n_train=(2, ALL),
                               num_resamples=200, finetune=FinetuneConfig(epochs=1, batch_size=8))  # fmt: skip
    store = ResultsStore(tmp_path / "results.sqlite")
    new = run_benchmark(task, adapters, store=store, options=options, tracking_uri=tracking_uri, experiment="eval-test")
    # the SpaceNit model x 4 probes x 2 sizes + raw pixels x 3 probes (nothing to fine-tune) x 2 sizes
    assert len(new) == 4 * 2 + 3 * 2 and CountingRawPixels.calls == 1

    knn = store.get(ResultKey(task.name, "nano", "knn", ALL, 0))
    assert knn.details["protocol"] == "holdout" and knn.details["num_test"] == sum(s == "test" for s in task.splits)
    # Independent recomputation of the kNN cell from the embed stage's vectors.
    feats = model.features(task)
    train = np.array([s in ("train", "val") for s in task.splits])
    expected = accuracy(task.targets[~train], knn_scores(feats.pooled[train], task.targets[train], feats.pooled[~train], k=20).argmax(1))
    acc = knn.metrics["accuracy"]
    assert acc["value"] == pytest.approx(expected) and acc["low"] <= acc["value"] <= acc["high"]
    assert np.asarray(knn.details["confusion_matrix"]).sum() == knn.details["num_test"]
    few = store.get(ResultKey(task.name, "nano", "linear", 2, 0))
    assert few.details["num_train_per_fold"] == [2 * task.num_classes]

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name("eval-test")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(children) == len(new)
    child = next(r for r in children if r.data.params["model"] == "nano" and r.data.params["probe"] == "knn" and r.data.params["n_train"] == "-1")
    assert child.data.metrics["accuracy"] == pytest.approx(acc["value"]) and child.data.metrics["accuracy_ci_high"] == pytest.approx(acc["high"])
    assert "confusion_matrix.png" in [a.path for a in client.list_artifacts(child.info.run_id)]

    # Everything is done: a re-run computes nothing and logs nothing.
    assert run_benchmark(task, adapters, store=store, options=options, tracking_uri=tracking_uri, experiment="eval-test") == []
    assert CountingRawPixels.calls == 1 and len(client.search_runs([exp.experiment_id])) == len(runs)

    report = write_report(store, tmp_path / "report.md").read_text()
    assert "| nano |" in report and "| raw_pixels |" in report
    assert "| model | knn | linear | attentive | finetune |" in report and "few-shot" in report


def test_evaluate_and_report_verbs(pretrained, synthetic_dataset: Path, tmp_path: Path) -> None:
    result, tracking_uri = pretrained
    store, md = tmp_path / "r.sqlite", tmp_path / "report.md"
    args = ["evaluate", str(synthetic_dataset), "--model", f"nano={result.checkpoint_dir}", "--baseline", "raw_pixels",
            "--baseline", "random_init", "--probes", "knn,prototypical", "--store", str(store), "--no-mlflow"]  # fmt: skip
    assert main(args) == 0
    assert len(ResultsStore(store).query()) == 3 * 2
    assert main(["report", str(store), str(md), "--tracking-uri", tracking_uri, "--mlflow-experiment", "report-verb"]) == 0
    for name in ("nano", "random-init(nano,seed=0)", "raw_pixels"):
        assert f"| {name} |" in md.read_text()
    client = MlflowClient(tracking_uri=tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("report-verb").experiment_id])
    assert "report.md" in [a.path for a in client.list_artifacts(run.info.run_id)]
    assert main(["report", str(tmp_path / "missing.sqlite"), str(md)]) == 2  # a user error, one line


def test_probe_stage_reports_cis_and_logs_confusion_pngs(pretrained, synthetic_dataset: Path, tmp_path: Path) -> None:
    from spacenit.evaluation.embed import embed
    from spacenit.evaluation.probe import probe

    result, tracking_uri = pretrained
    emb = embed(result.checkpoint_dir, synthetic_dataset, tmp_path / "e.zarr", progress=False)
    metrics = probe(emb, tmp_path / "p.json", k=5, tracking_uri=tracking_uri, experiment="probe-ci", probes=("knn", "linear", "prototypical"),
                    num_resamples=200)  # fmt: skip
    for name in ("knn_accuracy", "linear_accuracy", "prototypical_macro_f1"):
        assert metrics[f"{name}_ci_low"] <= metrics[name] <= metrics[f"{name}_ci_high"]
    assert all(isinstance(v, int | float) for v in metrics.values())  # the KFP component logs each as a metric
    saved = json.loads((tmp_path / "p.json").read_text())
    assert np.asarray(saved["confusion_matrices"]["knn"]).sum() == metrics["num_test"]
    client = MlflowClient(tracking_uri=tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("probe-ci").experiment_id])
    assert {"confusion_knn.png", "confusion_linear.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


@pytest.mark.realdata
def test_bigearthnet_is_multilabel_with_map_and_f1(shared_data: Path, tmp_path: Path) -> None:
    task = bigearthnet_task(shared_data, tmp_path)
    assert task.multilabel and task.targets.shape == (30, task.num_classes) and task.targets.sum(axis=1).min() >= 1
    store = ResultsStore(tmp_path / "r.sqlite")
    options = BenchmarkOptions(probes=("knn", "prototypical"), num_resamples=200)
    run_benchmark(task, [RawPixelAdapter()], store=store, options=options, log_to_mlflow=False)
    r = store.get(ResultKey("bigearthnet", "raw_pixels", "knn", ALL, 0))
    assert set(r.metrics) == {"map", "micro_f1", "macro_f1"} and r.details["num_test"] == 10
    for m in r.metrics.values():
        assert 0.0 <= m["low"] <= m["value"] <= m["high"] <= 1.0
