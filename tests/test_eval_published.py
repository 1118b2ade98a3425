"""`spacenit evaluate NAME` on the published benchmarks (fixtures in their release layouts), and the one
report of every model x probe x dataset with CIs, logged to MLflow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from spacenit.cli import main
from spacenit.evaluation.adapters import RawPixelAdapter
from spacenit.evaluation.benchmark import run_benchmark
from spacenit.evaluation.datasets import CLASSIFICATION, SEGMENTATION, load_task
from spacenit.evaluation.errors import ProbeError
from spacenit.evaluation.report import (
    log_report,
    metric_key,
    overview_rows,
    results_by_task,
    write_report,
)
from spacenit.evaluation.results import Result, ResultKey, ResultsStore
from tests.data import benchmarks as fx


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data-root")
    fx.write_so2sat(root / "so2sat_lcz42", sizes={"training.h5": 24, "validation.h5": 8, "testing.h5": 16})
    fx.write_sen1floods11(root / "sen1floods11")
    fx.write_geobench(root / "geobench")
    return root


def test_published_tasks_load_by_name(data_root: Path, tmp_path: Path) -> None:
    so2sat = load_task("so2sat", data_root=data_root, work_dir=tmp_path)
    assert so2sat.kind == CLASSIFICATION and so2sat.num_classes == 4 and (tmp_path / "so2sat" / "stats.json").is_file()
    assert sorted(set(so2sat.splits)) == ["test", "train", "val"]
    flood = load_task("sen1floods11", data_root=data_root, work_dir=tmp_path)
    assert flood.kind == SEGMENTATION and flood.class_names == ["not water", "water"]
    with pytest.raises(ProbeError, match="segmentation task"):
        run_benchmark(flood, [RawPixelAdapter()], store=ResultsStore(tmp_path / "r.sqlite"), log_to_mlflow=False)
    cashew = load_task("geobench-m-cashew-plant", data_root=data_root, work_dir=tmp_path)
    assert cashew.kind == SEGMENTATION and cashew.class_names == fx.CASHEW_CLASSES
    eurosat = load_task("geobench-m-eurosat", data_root=data_root, work_dir=tmp_path)
    assert eurosat.class_names == fx.EUROSAT_CLASSES[:4]
    with pytest.raises(ProbeError, match=r"reads .*pastis, which does not exist"):
        load_task("pastis", data_root=data_root, work_dir=tmp_path)
    with pytest.raises(ProbeError, match=r"GEO-Bench task .m-nothing.: expected one folder .*/geobench/<benchmark>/m-nothing/"):
        load_task("geobench-m-nothing", data_root=data_root, work_dir=tmp_path)
    with pytest.raises(ProbeError, match="unknown task 'eurosatt'.*so2sat"):
        load_task("eurosatt", data_root=data_root, work_dir=tmp_path)


def test_evaluate_several_tasks_writes_one_report_and_logs_it(data_root: Path, tmp_path: Path, capsys) -> None:
    store, report, uri = tmp_path / "r.sqlite", tmp_path / "report.md", f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["evaluate", "so2sat", "geobench-m-eurosat", "sen1floods11", "--data-root", str(data_root),
                 "--work-dir", str(tmp_path / "work"), "--baseline", "raw_pixels", "--probes", "knn,prototypical",
                 "--store", str(store), "--report", str(report), "--tracking-uri", uri, "--mlflow-experiment", "eval-report"])  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    assert "sen1floods11: a segmentation task" in err and "skipped" in err
    results = ResultsStore(store)
    knn = results.get(ResultKey("so2sat", "raw_pixels", "knn", -1, 0))
    assert knn.details["num_test"] == 16 and knn.metrics["accuracy"]["value"] > 0.9  # class is in the band means
    text = report.read_text()
    assert "| model | probe | so2sat (accuracy) | geobench-m-eurosat (accuracy) |" in text
    value = knn.metrics["accuracy"]
    assert f"| raw_pixels | knn | {value['value']:.3f} [{value['low']:.3f}, {value['high']:.3f}] |" in text
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("eval-report").experiment_id], "tags.`spacenit.stage` = 'report'")
    (run,) = runs
    assert run.data.metrics["so2sat/raw_pixels/knn/accuracy"] == pytest.approx(value["value"])
    assert run.data.metrics["so2sat/raw_pixels/knn/accuracy_ci_low"] == pytest.approx(value["low"])
    assert "report.md" in [a.path for a in client.list_artifacts(run.info.run_id)]


def _result(task: str, model: str, probe: str, value: float, multilabel: bool = False) -> Result:
    metric = "map" if multilabel else "accuracy"
    details = {"multilabel": multilabel, "num_classes": 3, "protocol": "holdout", "num_folds": 1, "num_test": 10}
    return Result(ResultKey(task, model, probe, -1, 0), {metric: {"value": value, "low": value - 0.1, "high": value + 0.1}}, details)


def test_report_covers_every_model_probe_and_dataset_with_any_adapter_name(tmp_path: Path) -> None:
    models = ["nano", "random-init(nano,seed=0)", "raw_pixels", "galileo_nano", "presto"]
    store = ResultsStore(tmp_path / "r.sqlite")
    rng = np.random.default_rng(0)
    for task, multilabel in (("eurosat", False), ("bigearthnet", True), ("eurosat->other", False)):
        for model in models:
            for probe in ("knn", "linear"):
                store.put(_result(task, model, probe, float(rng.uniform(0.2, 0.8)), multilabel))
    rows = overview_rows(results_by_task(store))
    assert len(rows) == 3 * 5 * 2 and {r["metric"] for r in rows if r["task"] == "bigearthnet"} == {"map"}
    text = write_report(store, tmp_path / "report.md").read_text()
    assert "| model | probe | eurosat (accuracy) | bigearthnet (map) | eurosat->other (accuracy) |" in text
    for model in models:
        for probe in ("knn", "linear"):
            cells = [store.get(ResultKey(t, model, probe, -1, 0)).metrics for t in ("eurosat", "bigearthnet", "eurosat->other")]
            shown = [f"{m[k]['value']:.3f} [{m[k]['low']:.3f}, {m[k]['high']:.3f}]" for m, k in zip(cells, ("accuracy", "map", "accuracy"), strict=True)]
            assert f"| {model} | {probe} | " + " | ".join(shown) + " |" in text
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = log_report(store, tmp_path / "report.md", tracking_uri=uri, experiment="report-test")
    metrics = MlflowClient(uri).get_run(run_id).data.metrics
    key = metric_key("eurosat->other", "random-init(nano,seed=0)", "knn", "accuracy")
    assert key == "eurosat-_other/random-init_nano_seed_0_/knn/accuracy"
    assert metrics[key] == pytest.approx(store.get(ResultKey("eurosat->other", "random-init(nano,seed=0)", "knn", -1, 0)).metrics["accuracy"]["value"])
    assert len(metrics) == 3 * len(rows)
