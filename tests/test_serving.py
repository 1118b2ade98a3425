"""The registered encoder served by a real `mlflow models serve` on 127.0.0.1 (issue 19).

Two POSTs the first signature refused with 400 SCHEMA_ENFORCEMENT_FAILED: a 64 x 64 Sentinel-2
tile alone, one date, integer pixels (the model trained on 24 px tiles of three sensors and two
dates), and three dates of three sensors at 32 x 32 with their months. Both answer 200 with the
embeddings `spacenit embed` computes for the same samples.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from spacenit.conversion.convert import convert
from spacenit.conversion.synthetic import make_synthetic
from spacenit.data.loader import months_of
from spacenit.data.shards import DatasetReader
from spacenit.data.stats import compute_stats
from spacenit.evaluation.embed import embed, load_embeddings

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(model_uri: str, tracking_uri: str, log: Path):
    port = _free_port()
    # The scoring server execs `uvicorn` from the PATH: the venv's, as an activated venv has it.
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    command = [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", model_uri, "--env-manager",
               "local", "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    with log.open("w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, log.read_text()
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{url}/ping", timeout=2).status == 200:
                    break
            assert time.monotonic() < deadline, f"mlflow models serve never answered:\n{log.read_text()}"
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)


def _post(url: str, inputs: dict) -> tuple[int, dict]:
    body = json.dumps({"inputs": inputs}).encode()
    request = urllib.request.Request(f"{url}/invocations", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _one_grid_dataset(tmp_path: Path, name: str, *, tile: int, dates: int, sensors: set[str]) -> Path:
    """Synthetic samples of `sensors`, every band on the 10 m grid, `tile` px, `dates` dates."""
    raw = make_synthetic(tmp_path / f"{name}-tifs", num_samples=3, tile_size_px=66, num_dates=dates, seed=5)
    for sensor_dir in raw.glob("*/*"):
        if sensor_dir.is_dir() and sensor_dir.name not in sensors:
            shutil.rmtree(sensor_dir)
    out = tmp_path / name
    assert convert(raw, out, tile_size_px=tile, one_grid=True, progress=False).ok
    return out


def _request(dataset: Path, index: int, *, native: bool = False) -> dict:
    """Sample `index` as a client sends it: each sensor's bands as one array (or, `native`, each grid
    as "<sensor>/<grid>", integer-valued ones as JSON integers), and their months."""
    sample = DatasetReader(dataset)[index]
    inputs = {}
    for sensor, grids in sample.data.items():
        for grid, x in grids.items():
            x = x[None]
            whole = native and bool((x == np.round(x)).all())
            inputs[f"{sensor}/{grid.name}" if native else sensor] = (x.astype(np.int64) if whole else x.astype(np.float64)).tolist()
        inputs[f"{sensor}/months"] = months_of(sample.record.dates[sensor])[None].tolist()
    return inputs


def test_the_served_model_takes_other_tiles_dates_sensors_and_dtypes(pretrained, synthetic_dataset: Path, tmp_path: Path) -> None:
    result, tracking_uri = pretrained
    s2_only = _one_grid_dataset(tmp_path, "s2-64", tile=64, dates=1, sensors={"sentinel2_l2a"})
    three = _one_grid_dataset(tmp_path, "three-32", tile=32, dates=3, sensors={"sentinel2_l2a", "sentinel1", "srtm"})
    expected = {}
    for dataset in (s2_only, three, synthetic_dataset):
        if dataset != synthetic_dataset:
            compute_stats(dataset, progress=False)
        # Sentinel-2 alone: `--allow-missing-bands` lets the model's other sensors be missing, as a served model does.
        vectors = embed("models:/spacenit-encoder@champion", dataset, tmp_path / f"{dataset.name}-{len(expected)}.zarr",
                        tracking_uri=tracking_uri, progress=False, num_workers=0, allow_missing_bands=dataset == s2_only)
        expected[dataset] = load_embeddings(vectors).vectors
    with served("models:/spacenit-encoder@champion", tracking_uri, tmp_path / "serve.log") as url:
        status, body = _post(url, _request(s2_only, 1))  # T=1, 64 x 64, Sentinel-2 alone
        assert status == 200, body
        np.testing.assert_allclose(np.asarray(body["predictions"]), expected[s2_only][1:2], rtol=1e-5, atol=1e-5)
        status, body = _post(url, _request(three, 2))  # T=3, 32 x 32, three sensors, float64, months
        assert status == 200, body
        np.testing.assert_allclose(np.asarray(body["predictions"]), expected[three][2:3], rtol=1e-5, atol=1e-5)
        status, body = _post(url, _request(synthetic_dataset, 4, native=True))  # native grids, integer pixels
        assert status == 200, body
        np.testing.assert_allclose(np.asarray(body["predictions"]), expected[synthetic_dataset][4:5], rtol=1e-5, atol=1e-5)
        status, body = _post(url, {"sentinel2_l2a": [[[[1.0]]]], "landsat": [[[[1.0]]]]})  # a clear 400, not a traceback
        assert status == 400 and "no sensor 'landsat'" in body["message"]


def test_the_logged_model_carries_its_code_and_no_local_paths(pretrained, tmp_path: Path) -> None:
    import mlflow

    result, tracking_uri = pretrained
    mlflow.set_tracking_uri(tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts("models:/spacenit-encoder@champion", dst_path=str(tmp_path / "m")))
    mlmodel = (local / "MLmodel").read_text()
    for path in (str(Path.cwd()), str(Path(__file__).parents[1]), str(tmp_path.parent), "/tmp/", "/work/"):
        assert path not in mlmodel, f"MLmodel records the local path {path}:\n{mlmodel}"
    requirements = (local / "requirements.txt").read_text()
    assert "spacenit" not in requirements and "torch>=" in requirements  # installable ranges, the package itself in code/
    assert (local / "code" / "spacenit" / "api.py").is_file()
