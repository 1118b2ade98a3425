"""pretrain: real accelerate runs tracked in real MLflow stores (sqlite, and an `mlflow server` that goes away);
2 synchronized CPU processes; SIGKILL and resume; NaN batches; loss going down on real EuroSAT chips."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from spacenit.arch.models import SpaceNitModel
from spacenit.cli import main
from spacenit.config import ConfigError, apply_overrides
from spacenit.data.format import load_dataset_info
from spacenit.data.loader import BatchPlanner, GeoTileDataset, LoaderConfig, pretrain_geometry
from spacenit.data.stats import load_stats
from spacenit.train.checkpoint import latest_training_checkpoint, load_checkpoint, read_train_state
from spacenit.train.pretrain import (
    PretrainConfig,
    batch_split,
    build_config,
    load_summary,
    pretrain,
    total_steps,
)
from spacenit.train.trainer import NonFiniteLossError

#: A model and batches small enough for CI (over the "small" training preset), at a fixed patch size
#: unless a test says otherwise.
TINY = [
    "model.depth=1", "model.decoder_depth=1", "model.dim=64", "model.heads=4", "model.decoder_dim=64",
    "model.decoder_heads=4", "data.min_patch_size=8", "data.max_patch_size=8", "data.num_workers=0",
    "train.global_batch_size=8", "train.log_every=1", "train.warmup_steps=2",
]  # fmt: skip
ENV = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def tiny(*overrides: str) -> PretrainConfig:
    return build_config(overrides=[*TINY, *overrides], preset="small")


def cli_pretrain(dataset: Path, out: Path, tracking_uri: str, *overrides: str, register_as: str = "") -> list[str]:
    cmd = ["-m", "spacenit.cli", "pretrain", str(dataset), "--stats", str(dataset / "stats.json"), "--output-dir", str(out),
           "--tracking-uri", tracking_uri, "--register-as", register_as, "--preset", "small"]  # fmt: skip
    for item in [*TINY, *overrides]:
        cmd += ["--set", item]
    return cmd


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


# ---------------------------------------------------------------- one process, sqlite store


def test_pretrain_logs_and_registers(pretrained) -> None:
    result, tracking_uri = pretrained
    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.get_run(result.run_id)
    assert run.data.params["train.steps"] == "4"
    assert run.data.params["world_size"] == "1"
    history = client.get_metric_history(result.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(m.value)) for m in history)
    for key in ("train/lr", "train/grad_norm", "train/tokens_per_s", "train/samples_per_s", "train/temperature",
                "train/ema_momentum", "train/contrastive_loss", "system/cpu_utilization_percentage"):  # fmt: skip
        assert key in run.data.metrics, key
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.json", "checkpoints", "pretrain_summary.json"} <= artifacts
    version = client.get_model_version_by_alias("spacenit-encoder", "champion")
    assert str(version.version) == result.model_version and version.run_id == result.run_id
    # Registered after the last buffered metrics reached the store: the tag is the final loss.
    assert version.tags["metric.train/loss"] == f"{history[-1].value:.6g}"
    assert result.model_uri == "models:/spacenit-encoder@champion"


def test_checkpoint_round_trips(pretrained) -> None:
    result, _ = pretrained
    model, meta = load_checkpoint(result.checkpoint_dir)
    assert [s.name for s in meta.sensors] == ["sentinel1", "sentinel2_l2a", "srtm"]
    assert meta.patch_size == 8 and meta.model.depth == 2
    assert set(meta.stats) == {"sentinel1", "sentinel2_l2a", "srtm"}
    state = read_train_state(latest_training_checkpoint(result.checkpoint_dir.parent / "checkpoints"))
    assert state["step"] == 4 and state["mlflow_run_id"] == result.run_id


def test_nan_batch_is_skipped_reported_and_never_checkpointed(synthetic_dataset: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(synthetic_dataset, data)
    stats = load_stats(data / "stats.json")
    cfg = tiny("train.steps=5", "train.checkpoint_every=1", "train.max_consecutive_nonfinite=2")
    # Poison the first sample of step 1 (0-based): it is also in one step of the next epoch.
    dataset = GeoTileDataset(data, stats)
    plan = BatchPlanner(len(dataset), 8, 8, pretrain_geometry(dataset, cfg.model), LoaderConfig(), cfg.train.seed).plan(1, 0)
    record = load_dataset_info(data).samples[plan.indices[0]]
    group = zarr.open_group(str(data / record.shard), mode="r+")
    s2 = group["sentinel2_l2a/10m"]  # rewritten through zarr-python: a valid chunk (checksum and all) of NaNs
    s2[record.row] = np.full(s2.shape[1:], np.nan, dtype=np.float32)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    result = pretrain(data, data / "stats.json", tmp_path / "out", cfg, tracking_uri=uri, register_as=None)
    summary = load_summary(tmp_path / "out")
    assert summary["nonfinite_steps"][0] == 2 and len(summary["nonfinite_steps"]) == 2  # once per epoch
    assert np.isfinite(result.final_loss)
    for path in [tmp_path / "out" / "checkpoint", *sorted((tmp_path / "out" / "checkpoints").glob("step-*"))]:
        assert all(torch.isfinite(t).all() for t in weights(path).values() if t.is_floating_point()), path
    run = MlflowClient(uri).get_run(result.run_id)
    assert "spacenit.nonfinite.step_2" in run.data.tags and run.data.metrics["train/nonfinite_steps"] == 2
    assert json.loads(run.data.tags["spacenit.nonfinite.step_2"])["micro_batches"][0]["index"][0] == plan.indices[0]

    # With no tolerance, training stops at the bad step; the checkpoint before it is whole and loads.
    with pytest.raises(NonFiniteLossError, match="consecutive"):
        pretrain(data, data / "stats.json", tmp_path / "stop", apply_overrides(cfg, ["train.max_consecutive_nonfinite=1"]),
                 tracking_uri=uri, register_as=None)  # fmt: skip
    last = latest_training_checkpoint(tmp_path / "stop" / "checkpoints")
    assert read_train_state(last)["step"] == 1
    assert all(torch.isfinite(t).all() for t in weights(last).values() if t.is_floating_point())
    failed = MlflowClient(uri).search_runs([run.info.experiment_id], order_by=["start_time DESC"], max_results=1)[0]
    assert failed.info.status == "FAILED"


def test_bf16_accumulation_and_in_loop_probe(synthetic_dataset: Path, tmp_path: Path) -> None:
    # A process of its own: accelerate's precision is process-wide state.
    cmd = cli_pretrain(synthetic_dataset, tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}", "train.steps=2",
                       "train.micro_batch_size=4", "train.mixed_precision=bf16", "train.checkpoint_every=0",
                       "data.min_patch_size=4", "data.token_budget=200", "objective.name=dual_branch", "train.probe_every=2",
                       "train.probe_linear=true")  # fmt: skip
    proc = subprocess.run([sys.executable, *cmd], env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert np.isfinite(load_summary(tmp_path / "out")["final_loss"])
    lines = [json.loads(x) for x in (tmp_path / "out" / "mlflow_metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2] and all(x["metrics"]["train/samples"] == 8 for x in lines)
    assert 0.0 <= lines[1]["metrics"]["eval/knn_accuracy"] <= 1.0 and "eval/knn_accuracy" not in lines[0]["metrics"]
    assert 0.0 <= lines[1]["metrics"]["eval/linear_accuracy"] <= 1.0


def test_cli_experiment_dry_run(capsys) -> None:
    code = main(["pretrain", "d", "--stats", "s.json", "--output-dir", "o", "--dry-run",
                 "--experiment-config", "merged_bandsets_cross_random_masked_neg", "--set", "train.lr=2e-4"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    for line in ("merge_bandsets: true", "strategy: modality_cross_random", "same_target_threshold: 0.999", "lr: 0.0002"):
        assert line in out


def test_spec_defaults_presets_and_the_batch_split() -> None:
    spec = PretrainConfig().train
    assert (spec.global_batch_size, spec.micro_batch_size, spec.lr, spec.warmup_steps, spec.epochs, spec.steps) == (
        512, 32, 1e-4, 8000, 300, None)  # spec section 7  # fmt: skip
    assert build_config(preset="spec").train == spec
    small = build_config(preset="small").train
    assert (small.steps, small.global_batch_size, small.micro_batch_size, small.lr) == (200, 16, None, 1e-3)
    # global = micro x processes x accumulation steps
    assert batch_split(spec, 1) == (32, 16) and batch_split(spec, 8) == (32, 2) and batch_split(spec, 16) == (32, 1)
    assert batch_split(small, 2) == (8, 1)  # no micro-batch size: one micro-batch per process
    for world in (3, 32):
        with pytest.raises(ConfigError, match=f"multiple of {32 * world}"):
            batch_split(spec, world)
    assert total_steps(spec, 1100) == 300 * 2  # the remainder of an epoch is dropped
    assert total_steps(apply_overrides(build_config(), ["train.steps=7"]).train, 1100) == 7  # steps replace epochs
    with pytest.raises(ConfigError, match="--preset small"):
        total_steps(spec, 100)
    with pytest.raises(KeyError, match="small"):
        build_config(preset="huge")


def test_dry_run_says_which_preset_and_values_are_in_force(synthetic_dataset: Path, capsys, monkeypatch) -> None:
    args = ["pretrain", str(synthetic_dataset), "--stats", "s.json", "--output-dir", "o", "--dry-run"]
    assert main([*args, "--preset", "small", "--set", "train.optimizer=muon", "--set", "model.mup=true"]) == 0
    out = capsys.readouterr().out
    for line in ("# training preset: small\n", "# duration: 200 steps (train.steps)\n",
                 "# batch: global 16 = micro 16 x 1 process(es) x 1 accumulation step(s)\n",
                 "# optimizer: muon (momentum 0.95), lr 0.001 after 20 warm-up steps", "muP from base width 128",
                 "optimizer: muon\n", "mup: true\n"):  # fmt: skip
        assert line in out, line
    monkeypatch.setenv("WORLD_SIZE", "8")  # as torchrun sets it
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "# training preset: spec (the default)\n" in out
    assert "# batch: global 512 = micro 32 x 8 process(es) x 2 accumulation step(s)\n" in out
    assert "# optimizer: adamw, lr 0.0001 after 8000 warm-up steps" in out
    # 24 samples: fewer than a global batch; said before anything runs.
    assert "300 epochs, but the dataset's 24 samples are fewer than one global batch of 512" in out
    assert main([*args, "--set", "train.global_batch_size=8", "--set", "train.micro_batch_size=1"]) == 0
    assert "# duration: 300 epochs x 3 steps = 900 steps (24 samples)\n" in capsys.readouterr().out
    # What pretrain would refuse, the dry run refuses.
    assert main([*args, "--set", "train.optimizer=sgd"]) == 2
    assert "train.optimizer must be one of" in capsys.readouterr().err


def test_spec_defaults_on_a_small_dataset_say_what_to_do(synthetic_dataset: Path, tmp_path: Path, capsys) -> None:
    code = main(["pretrain", str(synthetic_dataset), "--stats", str(synthetic_dataset / "stats.json"), "--output-dir",
                 str(tmp_path / "o"), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])  # fmt: skip
    assert code == 2
    assert "fewer than one global batch (train.global_batch_size=512)" in capsys.readouterr().err


def test_a_run_in_epochs_with_accumulated_micro_batches(synthetic_dataset: Path, tmp_path: Path) -> None:
    cfg = tiny("train.steps=null", "train.epochs=2", "train.micro_batch_size=4", "train.checkpoint_every=0")
    pretrain(synthetic_dataset, synthetic_dataset / "stats.json", tmp_path / "out", cfg,
             tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", register_as=None)  # fmt: skip
    lines = [json.loads(x) for x in (tmp_path / "out" / "mlflow_metrics.jsonl").read_text().splitlines()]
    # 24 samples, global batch 8: 3 steps an epoch; each step 2 micro-batches of 4.
    assert [x["step"] for x in lines] == [1, 2, 3, 4, 5, 6] and all(x["metrics"]["train/samples"] == 8 for x in lines)
    assert load_summary(tmp_path / "out")["config"]["train"]["epochs"] == 2


# ---------------------------------------------------------------- processes


@pytest.mark.slow
def test_two_cpu_processes_stay_in_sync_and_match_one_process(synthetic_dataset: Path, tmp_path: Path) -> None:
    """2 ranks x 1 micro-batch of 4 == 1 rank x 2 accumulated micro-batches of 4: same samples,
    masks, patch sizes and crops, gradients averaged the same way."""
    torchrun = Path(sys.executable).with_name("torchrun")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    shared = ["train.steps=3", "data.min_patch_size=4", "data.token_budget=300", "train.checkpoint_every=0"]
    two = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2",
                          *cli_pretrain(synthetic_dataset, tmp_path / "two", uri, *shared)],
                         env=ENV, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    summary = load_summary(tmp_path / "two")
    assert summary["world_size"] == 2, "two processes must really have run (not two world-size-1 runs)"
    a, b = summary["parameter_checksums"]
    assert a == b, "ranks diverged: DDP did not synchronize gradients"

    one = subprocess.run([sys.executable, *cli_pretrain(synthetic_dataset, tmp_path / "one", uri, *shared,
                                                        "train.micro_batch_size=4")],
                         env=ENV, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    w1, w2 = weights(tmp_path / "one" / "checkpoint"), weights(tmp_path / "two" / "checkpoint")
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=2e-5, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
    initial = load_summary(tmp_path / "one")["parameter_checksums"][0]
    assert initial == pytest.approx(a, rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", [[], ["train.optimizer=muon", "model.mup=true", "model.mup_base_dim=32"]],
                         ids=["adamw", "muon-mup"])  # fmt: skip
def test_sigkill_then_resume_gives_the_uninterrupted_weights(synthetic_dataset: Path, tmp_path: Path, optimizer: list[str]) -> None:
    """Muon's momentum buffers and muP's per-group learning rates are restored too (bit for bit)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["train.steps=12", "train.checkpoint_every=2", "data.num_workers=1", "data.min_patch_size=4", "data.token_budget=300",
            *optimizer]  # fmt: skip

    def start(out: Path) -> subprocess.Popen:
        log = (tmp_path / f"{out.name}.log").open("a")
        return subprocess.Popen([sys.executable, *cli_pretrain(synthetic_dataset, out, uri, *args)], env=ENV,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

    assert start(tmp_path / "straight").wait(timeout=600) == 0, (tmp_path / "straight.log").read_text()[-3000:]

    victim = start(tmp_path / "killed")
    ckpts = tmp_path / "killed" / "checkpoints"
    deadline = time.monotonic() + 600
    while not any(int(p.name[5:]) >= 4 for p in ckpts.glob("step-*")) and victim.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(victim.pid, signal.SIGKILL)  # the trainer and its loader worker, mid-step
    assert victim.wait() == -signal.SIGKILL
    assert not (tmp_path / "killed" / "checkpoint").exists(), "the run finished before it could be killed"
    killed_at = read_train_state(latest_training_checkpoint(ckpts))

    assert start(tmp_path / "killed").wait(timeout=600) == 0, (tmp_path / "killed.log").read_text()[-3000:]
    summary = load_summary(tmp_path / "killed")
    assert summary["resumed_from"].endswith(f"step-{killed_at['step']:06d}")
    assert summary["run_id"] == killed_at["mlflow_run_id"], "the resumed run continues the same MLflow run"
    for name in ("checkpoint", "checkpoints/step-000012"):  # exported model; full state (EMA target, heads)
        straight, resumed = weights(tmp_path / "straight" / name), weights(tmp_path / "killed" / name)
        assert straight.keys() == resumed.keys()
        assert all(torch.equal(straight[k], resumed[k]) for k in straight), f"{name} differs after resume"
    history = MlflowClient(uri).get_metric_history(summary["run_id"], "train/loss")
    assert sorted({m.step for m in history}) == list(range(1, 13))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mlflow_server(root: Path, port: int) -> subprocess.Popen:
    mlflow = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--artifacts-destination",
         str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return proc
        except OSError:
            time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    raise TimeoutError("mlflow server did not answer /health")


class Outage:
    """A TCP relay in front of the tracking server that can drop off the network and come back.

    Stopping it closes the listening socket and every open connection, so the
    client sees what a vanished server looks like (connection refused / reset),
    without paying the server's slow start twice.
    """

    def __init__(self, port: int, backend_port: int) -> None:
        self.port, self.backend_port = port, backend_port
        self.listener: socket.socket | None = None
        self.conns: list[socket.socket] = []

    def start(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port), reuse_port=True)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def stop(self) -> None:
        # close() alone leaves a thread blocked in accept() listening on Linux, so one more
        # connection slipped through and kept the "outage" serving; shutdown() wakes it.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()
        self.conns = []

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            backend = socket.create_connection(("127.0.0.1", self.backend_port))
            self.conns += [client, backend]
            for a, b in ((client, backend), (backend, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


@pytest.mark.slow
def test_training_survives_the_tracking_server_going_away(synthetic_dataset: Path, tmp_path: Path) -> None:
    server_port, port = _free_port(), _free_port()
    server = _mlflow_server(tmp_path, server_port)
    network = Outage(port, server_port)
    network.start()
    uri = f"http://127.0.0.1:{port}"
    env = {**ENV, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    out = tmp_path / "out"
    cmd = cli_pretrain(synthetic_dataset, out, uri, "train.steps=8", "train.checkpoint_every=4", "tracking.flush_timeout_s=300",
                       "tracking.max_retry_interval_s=1", register_as="spacenit-encoder")  # fmt: skip
    log = (tmp_path / "train.log").open("w")
    trainer = subprocess.Popen([sys.executable, *cmd], env=env, stdout=log, stderr=subprocess.STDOUT)
    local = out / "mlflow_metrics.jsonl"
    try:
        deadline = time.monotonic() + 600
        while not (local.is_file() and local.read_text().count("\n") >= 1):
            assert trainer.poll() is None and time.monotonic() < deadline, (tmp_path / "train.log").read_text()[-3000:]
            time.sleep(0.05)
        network.stop()  # the tracking server disappears mid-run
        while local.read_text().count("\n") < 5 and trainer.poll() is None:
            time.sleep(0.05)  # training goes on without it
        # The outage lasts until the trainer has noticed it (it may have sent nothing during
        # the steps above; at the latest its final flush retries): a fixed wait raced that.
        noticed = time.monotonic() + 120
        while "unreachable" not in (tmp_path / "train.log").read_text() and time.monotonic() < noticed:
            time.sleep(0.1)
        network.start()  # and comes back
        assert trainer.wait(timeout=600) == 0, (tmp_path / "train.log").read_text()[-3000:]
        text = (tmp_path / "train.log").read_text()
        assert "unreachable" in text and "answers again" in text
        steps = [json.loads(x)["step"] for x in local.read_text().splitlines()]
        assert steps == list(range(1, 9)), "every metric is also written locally"
        client = MlflowClient(uri)
        summary = load_summary(out)
        assert [m.step for m in client.get_metric_history(summary["run_id"], "train/loss")] == list(range(1, 9))
        assert client.get_model_version_by_alias("spacenit-encoder", "champion").run_id == summary["run_id"]
    finally:
        if trainer.poll() is None:
            trainer.kill()
        network.stop()
        os.killpg(server.pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.realdata
def test_loss_goes_down_on_eurosat(shared_data: Path, tmp_path: Path) -> None:
    from spacenit.conversion.convert import convert
    from spacenit.data.stats import compute_stats

    report = convert(shared_data / "eurosat_ms", tmp_path / "ds", layout="class_folders", sensor="sentinel2_l1c", progress=False)
    assert report.ok
    compute_stats(tmp_path / "ds", progress=False)
    cfg = tiny("objective.name=dual_branch", "train.steps=12", "train.log_every=3", "train.warmup_steps=3", "train.lr=2e-3",
               "data.token_budget=48", "train.checkpoint_every=0")  # fmt: skip
    pretrain(tmp_path / "ds", tmp_path / "ds" / "stats.json", tmp_path / "out", cfg,
             tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", register_as=None)  # fmt: skip
    logged = [json.loads(x)["metrics"] for x in (tmp_path / "out" / "mlflow_metrics.jsonl").read_text().splitlines()]
    for key in ("train/loss", "train/latent_loss", "train/reconstruction_loss"):
        first, last = logged[0][key], logged[-1][key]
        assert last < 0.9 * first, f"{key} did not go down: {[round(m[key], 4) for m in logged]}"


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="inductor compiles C++ on CPU")
def test_compiled_blocks_train_like_eager_ones(synthetic_dataset: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = {}
    from torch._dynamo.utils import counters

    counters.clear()
    for compiled in (False, True):
        cfg = tiny("train.steps=3", f"train.compile={str(compiled).lower()}")
        result = pretrain(synthetic_dataset, synthetic_dataset / "stats.json", tmp_path / str(compiled), cfg,
                          tracking_uri=uri, register_as=None, cpu=True)  # fmt: skip
        runs[compiled] = weights(result.checkpoint_dir)
        assert (counters["stats"]["unique_graphs"] > 0) == compiled  # inductor really compiled the blocks
    assert runs[True].keys() == runs[False].keys()
    for name, eager in runs[False].items():
        torch.testing.assert_close(runs[True][name], eager, rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_fsdp_on_two_cpu_processes_matches_ddp_and_resumes_from_its_shards(synthetic_dataset: Path, tmp_path: Path,
                                                                            optimizer: str) -> None:  # fmt: skip
    """FSDP2 over gloo: the code path GPUs take (sharded parameters, sharded checkpoints, the
    gathered export), checked against DDP with the same batches.

    Muon runs its Newton-Schulz iterations in bf16, on DTensors under FSDP: their matmuls add
    bf16 partial products across ranks, so a tall matrix's update differs from DDP's by about
    as much as bf16 Newton-Schulz differs from exact (measured: up to 11% after one step, on
    low-rank gradients bf16 itself is 40% from float64). The FSDP run must then move each
    parameter the way DDP does (within 30% of DDP's own change); resuming stays exact."""
    torchrun = Path(sys.executable).with_name("torchrun")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    shared = ["train.steps=3", "train.checkpoint_every=2", "data.min_patch_size=4", "data.token_budget=300",
              f"train.optimizer={optimizer}"]  # fmt: skip

    def launch(out: Path, distributed: str) -> None:
        run = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2",
                              *cli_pretrain(synthetic_dataset, out, uri, *shared, f"train.distributed={distributed}",
                                            register_as=f"enc-{distributed}")],
                             env=ENV, capture_output=True, text=True, timeout=600)  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]

    launch(tmp_path / "fsdp", "fsdp")
    launch(tmp_path / "ddp", "ddp")
    summary = load_summary(tmp_path / "fsdp")
    assert summary["world_size"] == 2 and summary["model_uri"] == "models:/enc-fsdp@champion"
    step2 = tmp_path / "fsdp" / "checkpoints" / "step-000002"
    assert (step2 / "accelerate").is_dir() and not (step2 / "model.safetensors").exists()  # saved as shards
    fsdp, ddp = weights(tmp_path / "fsdp" / "checkpoint"), weights(tmp_path / "ddp" / "checkpoint")
    assert fsdp.keys() == ddp.keys()
    if optimizer == "adamw":
        for k in fsdp:
            torch.testing.assert_close(fsdp[k], ddp[k], atol=1e-6, rtol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    else:
        _, meta = load_checkpoint(tmp_path / "ddp" / "checkpoint")
        torch.manual_seed(0)  # train.seed: the initial weights of both runs
        initial = SpaceNitModel(meta.model, meta.sensors).state_dict()
        for k in fsdp:
            moved = (ddp[k] - initial[k]).norm()
            assert (fsdp[k] - ddp[k]).norm() <= 0.3 * moved, f"{k}: FSDP moved it elsewhere than DDP"

    # Resume from the sharded step-2 checkpoint: the same final weights.
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "fsdp", resumed)
    for stale in (resumed / "checkpoints" / "step-000003", resumed / "checkpoint"):
        shutil.rmtree(stale)
    launch(resumed, "fsdp")
    assert load_summary(resumed)["resumed_from"].endswith("step-000002")
    again = weights(resumed / "checkpoint")
    for k in fsdp:
        torch.testing.assert_close(again[k], fsdp[k], atol=0, rtol=0, msg=lambda m, k=k: f"{k}: {m}")
