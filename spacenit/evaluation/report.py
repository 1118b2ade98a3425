"""The markdown report: every model x probe x dataset, with 95% CIs, from the results store; logged to MLflow.

First the overview: a row per (model, probe), a column per task, cells "value
[low, high]" of each task's primary metric with all training samples (accuracy,
or mAP for multi-label tasks). Then one section per task:
- the headline table (all training samples): a row per model, a column per
  probe, cells "value [low, high]" of the task's primary metric (accuracy,
  or mAP for multi-label tasks), then the same for the secondary metric;
- the few-shot table: a row per (model, probe), a column per n per class.

With several seeds a cell shows the mean over seeds of the value and of each
CI bound, and says how many seeds it averages. Models are whatever the store
holds: SpaceNit checkpoints, their random-init twins, raw pixels, and any
registered adapter (Galileo, Presto, ...) `spacenit evaluate --adapter NAME` ran.

`log_report` puts the markdown, its table as JSON and every overview cell as
metrics (`<task>/<model>/<probe>/<metric>`, with `_ci_low` / `_ci_high`) on
one MLflow run.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from spacenit.evaluation.metrics import primary_metric
from spacenit.evaluation.results import Result, ResultsStore
from spacenit.evaluation.splits import ALL


def _format(estimate: dict[str, float] | None, seeds: int) -> str:
    if estimate is None:
        return "-"
    return f"{estimate['value']:.3f} [{estimate['low']:.3f}, {estimate['high']:.3f}]" + (f" ({seeds} seeds)" if seeds > 1 else "")


def _cell(results: list[Result], metric: str) -> str:
    return _format(_mean_estimate(results, metric), sum(metric in r.metrics for r in results))


def _ordered(items) -> list:
    return list(dict.fromkeys(items))


def _mean_estimate(results: list[Result], metric: str) -> dict[str, float] | None:
    values = [r.metrics[metric] for r in results if metric in r.metrics]
    if not values:
        return None
    return {k: float(np.mean([v[k] for v in values])) for k in ("value", "low", "high")}


def overview_rows(by_task: dict[str, list[Result]]) -> list[dict]:
    """One row per (task, model, probe) with all training samples: the task's primary metric and its CI."""
    rows = []
    for task, results in by_task.items():
        metric = primary_metric(bool(results[0].details.get("multilabel")))
        grid: dict[tuple[str, str], list[Result]] = defaultdict(list)
        for r in results:
            if r.key.n_train == ALL:
                grid[(r.key.model, r.key.probe)].append(r)
        for (model, probe), cell in grid.items():
            estimate = _mean_estimate(cell, metric)
            if estimate is not None:
                rows.append({"task": task, "model": model, "probe": probe, "metric": metric, "seeds": len(cell), **estimate})
    return rows


def overview_section(by_task: dict[str, list[Result]]) -> str:
    """The table of every model x probe (rows) x task (columns), primary metric with all training samples."""
    rows = overview_rows(by_task)
    tasks = list(by_task)
    metric_of = {r["task"]: r["metric"] for r in rows}
    pairs = _ordered((r["model"], r["probe"]) for r in rows)
    cell = {(r["task"], r["model"], r["probe"]): r for r in rows}
    lines = ["## Overview", "", "Each task's primary metric with all training samples, value [95% CI].", ""]
    lines.append("| model | probe | " + " | ".join(f"{t} ({metric_of.get(t, '-')})" for t in tasks) + " |")
    lines.append("|---|---|" + "---|" * len(tasks))
    for model, probe in pairs:
        cells = [_format(cell.get((t, model, probe)), (cell.get((t, model, probe)) or {}).get("seeds", 0)) for t in tasks]
        lines.append(f"| {model} | {probe} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def task_section(task: str, results: list[Result]) -> str:
    multilabel = bool(results[0].details.get("multilabel"))
    metrics = [primary_metric(multilabel), "micro_f1" if multilabel else "macro_f1"]
    models, probes = _ordered(r.key.model for r in results), _ordered(r.key.probe for r in results)
    grid: dict[tuple, list[Result]] = defaultdict(list)
    for r in results:
        grid[(r.key.model, r.key.probe, r.key.n_train)].append(r)
    first = results[0].details
    lines = [f"## {task}", ""]
    lines.append(
        f"{'multi' if multilabel else 'single'}-label, {first['num_classes']} classes, protocol: {first['protocol']}"
        f" ({first['num_folds']} fold(s), {first['num_test']} test predictions); 95% percentile-bootstrap CIs over test samples."
    )
    for metric in metrics:
        lines += ["", f"### {metric} (all training samples)", ""]
        lines.append("| model | " + " | ".join(probes) + " |")
        lines.append("|---|" + "---|" * len(probes))
        for m in models:
            lines.append(f"| {m} | " + " | ".join(_cell(grid.get((m, p, ALL), []), metric) for p in probes) + " |")
    shots = sorted({r.key.n_train for r in results if r.key.n_train != ALL})
    if shots:
        columns = [*shots, ALL]
        lines += ["", f"### few-shot {metrics[0]} (n training samples per class)", ""]
        lines.append("| model | probe | " + " | ".join("all" if n == ALL else str(n) for n in columns) + " |")
        lines.append("|---|---|" + "---|" * len(columns))
        for m in models:
            for p in probes:
                if any((m, p, n) in grid for n in shots):
                    lines.append(f"| {m} | {p} | " + " | ".join(_cell(grid.get((m, p, n), []), metrics[0]) for n in columns) + " |")
    return "\n".join(lines)


def results_by_task(store: ResultsStore, tasks: list[str] | None = None) -> dict[str, list[Result]]:
    """The store's results of `tasks` (default: all), by task in the given (or insertion) order."""
    by_task: dict[str, list[Result]] = defaultdict(list)
    for r in store.query():
        by_task[r.key.task].append(r)
    names = tasks or list(by_task)
    missing = [t for t in names if t not in by_task]
    if missing:
        raise KeyError(f"no results for task(s) {missing} in {store.path}; tasks there: {sorted(by_task)}")
    return {t: by_task[t] for t in names}


def write_report(store: ResultsStore, output: str | Path, *, tasks: list[str] | None = None) -> Path:
    """Write the markdown report of `tasks` (default: every task in the store) to `output`."""
    by_task = results_by_task(store, tasks)
    body = "\n\n".join([overview_section(by_task), *(task_section(t, rs) for t, rs in by_task.items())])
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(f"# SpaceNit evaluation report\n\nFrom `{store.path}`.\n\n{body}\n")
    return output


def metric_key(*parts: str) -> str:
    """An MLflow metric name from free-form parts: characters MLflow refuses become "_"."""
    return "/".join(re.sub(r"[^A-Za-z0-9_\-. :]", "_", p) for p in parts)


def log_report(store: ResultsStore, report: str | Path, *, tasks: list[str] | None = None,
               tracking_uri: str | None = None, experiment: str = "spacenit-eval") -> str:  # fmt: skip
    """Log the report (markdown), its overview rows (JSON) and every overview cell (metrics) to one
    MLflow run; returns the run id."""
    import mlflow

    from spacenit.train.tracking import start_run

    rows = overview_rows(results_by_task(store, tasks))
    metrics = {}
    for r in rows:
        key = metric_key(r["task"], r["model"], r["probe"], r["metric"])
        metrics.update({key: r["value"], f"{key}_ci_low": r["low"], f"{key}_ci_high": r["high"]})
    with start_run(tracking_uri, experiment, run_name="report", tags={"spacenit.stage": "report"}) as run:
        mlflow.log_params({"store": str(store.path), "tasks": ",".join(dict.fromkeys(r["task"] for r in rows))})
        mlflow.log_text(Path(report).read_text(), "report.md")
        mlflow.log_dict({"rows": rows}, "report.json")
        mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        return run.info.run_id
