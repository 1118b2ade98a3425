"""benchmarks/bench_gpu.py end to end in its tiny CPU configuration, its peak table, and its token counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spacenit.arch.tokenization import TokenizationConfig
from spacenit.arch.tokenizer import MultiSensorTokenizer
from spacenit.sensors import SENTINEL2_L2A

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # the script imports its sibling bench_encoder
    import bench_gpu

    return bench_gpu


def test_the_script_runs_end_to_end_on_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--json", str(out), "--peak-tflops", "0.5"],
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step time / ViT-B/16's" in proc.stdout and "OlmoEarth Nano ~789" in proc.stdout
    report = json.loads(out.read_text())
    assert report["setup"]["tiny"] and report["peak_bf16_tflops"] == 0.5
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == {"spacenit encoder", "spacenit pretrain step", "ViT-B/16", "nano inference"}
    assert not any(r["compiled"] for r in report["rows"])  # CPU: eager only by default
    batch, tokens = report["setup"]["batch"], report["setup"]["tokens_per_sample"]
    for name in ("spacenit encoder", "spacenit pretrain step", "ViT-B/16"):  # the same tokens on both sides
        assert rows[name]["samples"] == batch and rows[name]["tokens"] == batch * tokens, name
    assert rows["nano inference"]["tokens"] == report["setup"]["infer_batch"] * 192
    for r in report["rows"]:
        assert r["flops"] > 0 and r["step_s"] > 0
        assert r["mfu"] == pytest.approx(r["flops"] / r["step_s"] / 0.5e12)
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["step_s"])
    # The pretraining step runs the encoder and more (predictor, EMA target): more FLOPs.
    assert rows["spacenit pretrain step"]["flops"] > rows["spacenit encoder"]["flops"]
    assert report["goals"]["eager"]["step_time_ratio_vs_vit"] == pytest.approx(
        rows["spacenit encoder"]["step_s"] / rows["ViT-B/16"]["step_s"])  # fmt: skip


def test_peaks_are_looked_up_by_device_name(bench) -> None:
    cases = {"NVIDIA H100 80GB HBM3": 989, "NVIDIA H100 PCIe": 756, "NVIDIA H100 NVL": 835, "NVIDIA H200": 989,
             "NVIDIA GH200 480GB": 989, "NVIDIA A100-SXM4-80GB": 312, "NVIDIA A100-PCIE-40GB": 312, "NVIDIA L4": 121,
             "NVIDIA L40S": 362, "NVIDIA B200": 2250, "Tesla T4": None}  # fmt: skip
    for name, peak in cases.items():
        assert bench.peak_bf16_tflops(name) == peak, name


def test_the_base_setup_feeds_2250_tokens_a_sample_to_both_models(bench) -> None:
    setup = bench.BASE
    assert setup.tokens == 2250 == setup.peer_grid[0] * setup.peer_grid[1] and setup.batch == 32
    images, months = bench.model_inputs(1, setup.timesteps, setup.grid[0] * setup.patch, setup.grid[1] * setup.patch,
                                        torch.device("cpu"))  # fmt: skip
    tokenizer = MultiSensorTokenizer([SENTINEL2_L2A], TokenizationConfig(), 32, 8, 10.0)
    assert tokenizer(images, months, setup.patch).tokens.shape == (1, 2250, 32)
    images, months = bench.model_inputs(2, 1, 64, 64, torch.device("cpu"))  # nano inference: 64 x 64 px, 12 bands
    assert images["sentinel2_l2a"].shape == (2, 1, 12, 64, 64)
    assert tokenizer(images, months, 8).tokens.shape[1] == 192
