"""The results store: one SQLite table keyed on (task, model, probe, n_train, seed).

A benchmark is a grid (tasks x models x probes x training-set sizes x seeds)
that takes long to fill and is often interrupted or extended. Each finished
cell is written here at once, and a re-run asks `has()` before computing, so
only missing cells are run (the biobench pattern). `n_train` is the number
of training samples per class, or -1 for all of them.

The key deliberately leaves out hyperparameters: a changed protocol needs a
new store (or new task/model names), so numbers from two protocols never mix
silently in one table.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    task TEXT NOT NULL,
    model TEXT NOT NULL,
    probe TEXT NOT NULL,
    n_train INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    metrics TEXT NOT NULL,      -- JSON: {metric: {"value", "low", "high"}}
    details TEXT NOT NULL,      -- JSON: protocol, sizes, chosen hyperparameters, confusion matrix
    created REAL NOT NULL,      -- unix time
    PRIMARY KEY (task, model, probe, n_train, seed)
)
"""


@dataclass(frozen=True)
class ResultKey:
    task: str
    model: str
    probe: str
    n_train: int
    seed: int


@dataclass
class Result:
    key: ResultKey
    metrics: dict[str, dict[str, float]]
    details: dict


class ResultsStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # One connection per operation, committed and closed: safe across processes; sqlite serializes writes.
        db = sqlite3.connect(self.path, timeout=30)
        try:
            with db:
                yield db
        finally:
            db.close()

    def has(self, key: ResultKey) -> bool:
        with self._connect() as db:
            row = db.execute(
                "SELECT 1 FROM results WHERE task=? AND model=? AND probe=? AND n_train=? AND seed=?",
                (key.task, key.model, key.probe, key.n_train, key.seed),
            ).fetchone()
        return row is not None

    def put(self, result: Result) -> None:
        k = result.key
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (k.task, k.model, k.probe, k.n_train, k.seed, json.dumps(result.metrics), json.dumps(result.details), time.time()),
            )

    def get(self, key: ResultKey) -> Result | None:
        found = self.query(task=key.task, model=key.model, probe=key.probe, n_train=key.n_train, seed=key.seed)
        return found[0] if found else None

    def query(self, **where) -> list[Result]:
        """Results whose columns equal the given values (task=..., model=..., ...), in insertion order."""
        columns = {"task", "model", "probe", "n_train", "seed"}
        unknown = set(where) - columns
        if unknown:
            raise KeyError(f"cannot filter results on {sorted(unknown)}; columns: {sorted(columns)}")
        clause = " AND ".join(f"{c}=?" for c in where) or "1"
        with self._connect() as db:
            rows = db.execute(
                f"SELECT task, model, probe, n_train, seed, metrics, details FROM results WHERE {clause} ORDER BY created",
                tuple(where.values()),
            ).fetchall()
        return [Result(ResultKey(*r[:5]), json.loads(r[5]), json.loads(r[6])) for r in rows]
