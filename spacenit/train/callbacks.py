"""Trainer callbacks: everything optional about a training run lives here, not in the loop.

    NaNGuard        stop after too many consecutive skipped (non-finite) steps
    Throughput      samples/s, tokens/s and step time in the logged metrics
    ProgressBar     a tqdm bar on the main process
    MLflowCallback  config, metrics, system metrics, checkpoints to MLflow; survives the server going away

Checkpointing is `spacenit.train.checkpoint.Checkpointer`; the in-loop kNN probe is
`spacenit.evaluation.inloop.KnnProbeCallback`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from spacenit.train.tracking import flatten
from spacenit.train.trainer import Callback, NonFiniteLossError, Trainer

log = logging.getLogger(__name__)

#: MLflow error codes that mean "this request will never succeed", as opposed to "the server is away".
_PERMANENT = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST"}


class NaNGuard(Callback):
    """Stop after `max_consecutive` skipped steps in a row; isolated bad batches are skipped and reported."""

    def __init__(self, max_consecutive: int = 3) -> None:
        self.max_consecutive = max_consecutive
        self.run = 0

    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        if trainer.nonfinite_steps and trainer.nonfinite_steps[-1] == step:
            self.run += 1
            if self.run >= self.max_consecutive:
                raise NonFiniteLossError(
                    f"{self.run} consecutive steps (last: {step}) had non-finite gradients; stopping. "
                    f"The weights and checkpoints hold the state before them. Skipped steps: {trainer.nonfinite_steps}"
                )
        else:
            self.run = 0


class Throughput(Callback):
    """Adds samples/s, tokens/s and seconds per step over each log interval to the logged metrics."""

    def on_train_start(self, trainer: Trainer) -> None:
        self.tick, self.step = time.perf_counter(), trainer.step

    def on_log(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        now = time.perf_counter()
        elapsed, steps = max(now - self.tick, 1e-9), max(step - self.step, 1)
        counted = metrics.get("interval_steps", steps)  # skipped steps count no samples
        metrics["samples_per_s"] = metrics.get("samples", 0.0) * counted / elapsed
        metrics["tokens_per_s"] = metrics.get("tokens", 0.0) * counted / elapsed
        metrics["step_time_s"] = elapsed / steps
        self.tick, self.step = now, step


class ProgressBar(Callback):
    def __init__(self, total: int) -> None:
        self.total = total
        self.bar = None

    def on_train_start(self, trainer: Trainer) -> None:
        from tqdm import tqdm

        if trainer.accelerator.is_main_process:
            self.bar = tqdm(total=self.total, initial=trainer.step, desc="pretrain", unit="step")

    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.update()
            self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}")

    def on_train_end(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()


class MLflowCallback(Callback):
    """Logs a run to MLflow from the main process without ever blocking or failing training.

    Every record (params, config, metrics, system metrics, tags, checkpoint
    files) goes into a queue that a background thread sends in order. When the
    tracking server does not answer, the thread warns once, keeps the records,
    and retries with backoff until it does; meanwhile every metric is also
    appended to `local_dir/mlflow_metrics.jsonl` as it is produced, so nothing
    is lost even if the server never comes back. At the end of training the
    queue gets `flush_timeout_s` to drain; what could not be sent is named in
    a warning (the JSONL file has it). A server that comes back without the run
    (restarted on an empty backend) refuses every later record: they are dropped
    from MLflow, with a warning that they survive only in the JSONL file, and
    training goes on. For an HTTP server, set
    MLFLOW_HTTP_REQUEST_MAX_RETRIES / MLFLOW_HTTP_REQUEST_TIMEOUT low: this
    callback does its own retrying.
    """

    def __init__(self, run_id: str, tracking_uri: str, config_dict: dict[str, Any], local_dir: str | Path, *,
                 log_system_metrics: bool = True, log_checkpoints: bool = True, flush_timeout_s: float = 60.0,
                 max_retry_interval_s: float = 30.0) -> None:  # fmt: skip
        self.run_id, self.tracking_uri = run_id, tracking_uri
        self.client = MlflowClient(tracking_uri)
        self.config_dict = config_dict
        self.local_path = Path(local_dir) / "mlflow_metrics.jsonl"
        self.local_path.parent.mkdir(parents=True, exist_ok=True)
        if self.local_path.is_file() and not self.local_path.read_bytes().endswith(b"\n"):
            with self.local_path.open("a") as f:  # a line a kill cut short stays on its own line
                f.write("\n")
        self.log_system_metrics, self.log_checkpoints = log_system_metrics, log_checkpoints
        self.flush_timeout_s, self.max_retry_interval_s = flush_timeout_s, max_retry_interval_s
        self._queue: deque[tuple[str, Any]] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self.outage_since: float | None = None
        self.sent = 0
        self.dropped = 0
        #: The server answered that the run does not exist (RESOURCE_DOES_NOT_EXIST); warned once.
        self.run_lost = False
        self._thread = threading.Thread(target=self._worker, name="mlflow-logger", daemon=True)
        self._thread.start()

    # ---- trainer hooks

    def on_train_start(self, trainer: Trainer) -> None:
        params = {**flatten(self.config_dict), "world_size": trainer.accelerator.num_processes}
        self._put("params", [Param(k, str(v)[:6000]) for k, v in params.items()])
        self._put("dict", (self.config_dict, "config.json"))
        if trainer.step:
            self._put("tags", [RunTag("spacenit.resumed_at_step", str(trainer.step))])
            self._resend_local(trainer.step)

    def _resend_local(self, upto_step: int) -> None:
        """Queue again what the interrupted process wrote locally up to the step resumed from:
        it may never have reached the server. MLflow ignores exact duplicates (same timestamp)."""
        if not self.local_path.is_file():
            return
        for line in self.local_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by the kill
                continue
            if record["step"] <= upto_step:
                metrics = [Metric(k, v, record["timestamp"], record["step"]) for k, v in record["metrics"].items()]
                self._put("metrics", metrics)

    def on_log(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        # Trainer metrics go under train/; names that carry their own namespace (eval/knn_accuracy) stay.
        values = {(k if "/" in k else f"train/{k}"): float(v) for k, v in metrics.items() if np.isfinite(v)}
        if self.log_system_metrics:
            values.update(_system_metrics())
        with self.local_path.open("a") as f:  # the local copy first: it is the one that cannot fail
            f.write(json.dumps({"step": step, "timestamp": now, "metrics": values}) + "\n")
        self._put("metrics", [Metric(k, v, now, step) for k, v in values.items()])

    def on_nonfinite(self, trainer: Trainer, step: int, report: dict[str, Any]) -> None:
        self._put("tags", [RunTag(f"spacenit.nonfinite.step_{step}", json.dumps(report)[:4000])])

    def on_checkpoint(self, trainer: Trainer, step: int, path) -> None:
        if self.log_checkpoints:
            path = Path(path)
            files = [path / name for name in ("model.safetensors", "trainer_state.json") if (path / name).is_file()]
            self._put("files", (files, f"checkpoints/{path.name}"))

    def on_train_end(self, trainer: Trainer) -> None:
        if not self.flush(self.flush_timeout_s):
            log.warning(
                "MLflow at %s did not take %d record(s) before the timeout; every metric is in %s",
                self.tracking_uri, len(self._queue), self.local_path,
            )  # fmt: skip
        if self.run_lost:
            log.warning("MLflow at %s lost run %s during training: it lacks the metrics logged since; "
                        "every metric is in %s", self.tracking_uri, self.run_id, self.local_path)  # fmt: skip

    # ---- queue

    def _put(self, kind: str, payload: Any) -> None:
        with self._cond:
            self._queue.append((kind, payload))
            self._cond.notify()

    def flush(self, timeout_s: float) -> bool:
        """Wait until the queue is empty (True) or `timeout_s` passed (False)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._cond.notify()
            while self._queue and time.monotonic() < deadline:
                self._cond.wait(min(0.2, max(deadline - time.monotonic(), 0.0)))
            return not self._queue

    def close(self, timeout_s: float = 5.0) -> None:
        self.flush(timeout_s)
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout=1.0)

    def _worker(self) -> None:
        delay = 1.0
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                kind, payload = self._queue[0]
                if kind == "metrics":  # send consecutive metric records as one batch (MLflow takes 1000)
                    batch = []
                    for k, p in self._queue:
                        if k != "metrics" or len(batch) + len(p) > 1000:
                            break
                        batch.extend(p)
                    payload = batch or payload
            try:
                self._send(kind, payload)
            except Exception as e:  # noqa: BLE001 - whatever the tracker raises, training goes on
                if isinstance(e, MlflowException) and e.error_code in _PERMANENT:
                    self._drop(kind, payload, e)
                    continue
                if self.outage_since is None:
                    self.outage_since = time.monotonic()
                    log.warning(
                        "MLflow at %s is unreachable (%s: %s); training continues, metrics are kept in %s "
                        "and sent when it answers again", self.tracking_uri, type(e).__name__, str(e)[:200], self.local_path,
                    )  # fmt: skip
                with self._cond:
                    if self._closing:
                        return
                    self._cond.wait(delay)
                delay = min(delay * 2, self.max_retry_interval_s)
                continue
            self._pop(kind, payload)
            if self.outage_since is not None:
                log.warning("MLflow at %s answers again after %.0f s; sending the buffered records",
                            self.tracking_uri, time.monotonic() - self.outage_since)  # fmt: skip
                self.outage_since = None
            delay = 1.0

    def _drop(self, kind: str, payload: Any, error: MlflowException) -> None:
        """Give up on a record MLflow refused for good; say where its metrics remain."""
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            log.warning("MLflow refused a %s record (%s); dropping it", kind, error)
        elif not self.run_lost:
            # E.g. the server restarted on an empty backend: every later record is refused too.
            self.run_lost = True
            log.warning(
                "MLflow at %s no longer has run %s (%s): it lost its store, e.g. restarted on an empty "
                "backend. This run's metrics are dropped from MLflow from now on and survive only in %s",
                self.tracking_uri, self.run_id, str(error)[:200], self.local_path,
            )  # fmt: skip
        self._pop(kind, payload)
        self.dropped += 1

    def _pop(self, kind: str, payload: Any) -> None:
        with self._cond:
            if kind == "metrics":
                n = len(payload)
                while n > 0 and self._queue and self._queue[0][0] == "metrics":
                    n -= len(self._queue.popleft()[1])
            else:
                self._queue.popleft()
            self.sent += 1
            self._cond.notify_all()

    def _send(self, kind: str, payload: Any) -> None:
        c, run = self.client, self.run_id
        if kind == "metrics":
            c.log_batch(run, metrics=payload, synchronous=True)
        elif kind == "params":
            for i in range(0, len(payload), 100):
                c.log_batch(run, params=payload[i : i + 100], synchronous=True)
        elif kind == "tags":
            c.log_batch(run, tags=payload, synchronous=True)
        elif kind == "dict":
            c.log_dict(run, *payload)
        elif kind == "files":
            files, artifact_path = payload
            for f in files:
                c.log_artifact(run, str(f), artifact_path)
        else:
            raise AssertionError(kind)


def _system_metrics() -> dict[str, float]:
    import psutil

    out = {
        "system/cpu_utilization_percentage": psutil.cpu_percent(),
        "system/system_memory_usage_percentage": psutil.virtual_memory().percent,
        "system/process_memory_rss_mb": psutil.Process().memory_info().rss / 2**20,
    }
    if torch.cuda.is_available():
        out["system/gpu_memory_allocated_mb"] = torch.cuda.memory_allocated() / 2**20
        out["system/gpu_max_memory_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out
