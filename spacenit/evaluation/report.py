"""The markdown report: every probe x every model of each task, with 95% CIs, from the results store.

One section per task:
- the headline table (all training samples): a row per model, a column per
  probe, cells "value [low, high]" of the task's primary metric (accuracy,
  or mAP for multi-label tasks), then the same for the secondary metric;
- the few-shot table: a row per (model, probe), a column per n per class.

With several seeds a cell shows the mean over seeds of the value and of each
CI bound, and says how many seeds it averages.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from spacenit.evaluation.metrics import primary_metric
from spacenit.evaluation.results import Result, ResultsStore
from spacenit.evaluation.splits import ALL


def _cell(results: list[Result], metric: str) -> str:
    values = [r.metrics[metric] for r in results if metric in r.metrics]
    if not values:
        return "-"
    mean = {k: float(np.mean([v[k] for v in values])) for k in ("value", "low", "high")}
    seeds = f" ({len(values)} seeds)" if len(values) > 1 else ""
    return f"{mean['value']:.3f} [{mean['low']:.3f}, {mean['high']:.3f}]{seeds}"


def _ordered(items) -> list:
    return list(dict.fromkeys(items))


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


def write_report(store: ResultsStore, output: str | Path, *, tasks: list[str] | None = None) -> Path:
    """Write the markdown report of `tasks` (default: every task in the store) to `output`."""
    by_task: dict[str, list[Result]] = defaultdict(list)
    for r in store.query():
        by_task[r.key.task].append(r)
    names = tasks or list(by_task)
    missing = [t for t in names if t not in by_task]
    if missing:
        raise KeyError(f"no results for task(s) {missing} in {store.path}; tasks there: {sorted(by_task)}")
    body = "\n\n".join(task_section(t, by_task[t]) for t in names)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(f"# SpaceNit evaluation report\n\nFrom `{store.path}`.\n\n{body}\n")
    return output
