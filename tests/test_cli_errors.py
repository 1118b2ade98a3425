"""Outputs that cannot be written get their own exit code and one line naming the path (issue 20, case 10);
a damaged checkpoint or its stats are named too (case 9).

The read-only and full file systems are real: a read-only bind mount and a 16 KiB
tmpfs, mounted inside a user and mount namespace (`unshare -Urm`, no privileges
needed where the kernel allows unprivileged user namespaces). chmod alone does
not deny root, so the permission test runs root's command in a user namespace
without a mapping (`unshare -U`), where root has no say over the host's files.
Tests that need a namespace skip, with the reason, where `unshare` is refused.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spacenit.cli import main
from spacenit.data.stats import compute_stats
from spacenit.io_errors import EXIT_DISK_FULL, EXIT_NOT_WRITABLE


def _unshare_works(*flags: str) -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", *flags, "true"], capture_output=True, timeout=30).returncode == 0


needs_userns = pytest.mark.skipif(
    not _unshare_works("-Urm"), reason="needs `unshare -Urm` (unprivileged user + mount namespaces) for real mounts"
)


def _cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "spacenit.cli", *map(str, args)]


def _in_namespace(setup: str, command: list[str]) -> subprocess.CompletedProcess:
    """Run `command` after the shell lines `setup`, in a fresh user + mount namespace (mapped to root there)."""
    script = f"set -e\n{setup}\nexec {shlex.join(command)}"
    return subprocess.run(["unshare", "-Urm", "sh", "-c", script], capture_output=True, text=True, timeout=300)


def _shards_removed(dataset: Path, into: Path) -> Path:
    """A copy of `dataset` with dataset.json and nothing else: computing stats on it would fail reading."""
    into.mkdir()
    shutil.copy(dataset / "dataset.json", into / "dataset.json")
    return into


def _error_line(proc: subprocess.CompletedProcess) -> str:
    """The one error line (progress bars around it aside), with no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    (line,) = [line[line.index("spacenit "):] for line in proc.stderr.splitlines() if "spacenit " in line]
    return line


@needs_userns
def test_stats_on_a_read_only_dataset_fails_before_reading_with_its_code(synthetic_dataset: Path, tmp_path: Path) -> None:
    dataset = _shards_removed(synthetic_dataset, tmp_path / "ds")
    with pytest.raises(Exception):  # noqa: B017 - the premise: where it may write, stats fails reading shards
        compute_stats(dataset, progress=False)
    proc = _in_namespace(f"mount --bind {dataset} {dataset}\nmount -o remount,bind,ro {dataset}", _cli("stats", dataset))
    assert proc.returncode == EXIT_NOT_WRITABLE, proc.stderr
    assert _error_line(proc) == (f"spacenit stats: error: read-only file system writing {dataset / 'stats.json'}; "
                               "write the output to a writable directory")  # fmt: skip
    assert not (dataset / "stats.json").exists()


def test_stats_into_a_directory_without_write_permission(synthetic_dataset: Path, tmp_path: Path) -> None:
    if os.geteuid() == 0 and not _unshare_works("-U"):
        pytest.skip("running as root, where chmod does not deny, and `unshare -U` (to drop that) is refused")
    dataset = _shards_removed(synthetic_dataset, tmp_path / "ds")
    dataset.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    try:
        prefix = ["unshare", "-U"] if os.geteuid() == 0 else []
        proc = subprocess.run([*prefix, *_cli("stats", dataset)], capture_output=True, text=True, timeout=300)
    finally:
        dataset.chmod(0o755)
    assert proc.returncode == EXIT_NOT_WRITABLE, proc.stderr
    line = _error_line(proc)
    assert line.startswith(f"spacenit stats: error: permission denied writing {dataset / 'stats.json'} (Permission denied)")


@needs_userns
def test_stats_onto_a_full_file_system(synthetic_dataset: Path, tmp_path: Path) -> None:
    # A full disk shows only when stats.json's bytes are written, after the whole pass.
    full = tmp_path / "full"
    full.mkdir()
    out = full / "stats.json"
    setup = (f"mount -t tmpfs -o size=16k tmpfs {full}\n"
             f"dd if=/dev/zero of={full / 'filler'} bs=4k count=64 2>/dev/null || true\n")  # fmt: skip
    proc = _in_namespace(setup, _cli("stats", synthetic_dataset, "--output", out))
    assert proc.returncode == EXIT_DISK_FULL, proc.stderr
    assert _error_line(proc) == (f"spacenit stats: error: no space left on the device writing {out} "
                               "(No space left on device); free some space or write elsewhere")  # fmt: skip
    assert not out.exists()  # the tmpfs is gone with the namespace; nothing was written here either


@needs_userns
def test_convert_onto_a_full_file_system_names_the_output(synthetic_dir: Path, tmp_path: Path) -> None:
    # Zarr's write() names no file: the line names the output directory instead.
    full = tmp_path / "full"
    full.mkdir()
    proc = _in_namespace(f"mount -t tmpfs -o size=64k tmpfs {full}",
                         _cli("convert", synthetic_dir, full / "ds", "--tile-size-px", "24"))  # fmt: skip
    assert proc.returncode == EXIT_DISK_FULL, proc.stderr
    assert _error_line(proc) == (f"spacenit convert: error: no space left on the device writing {full / 'ds'} "
                                 "(No space left on device); free some space or write elsewhere")  # fmt: skip


def test_pretrain_into_an_unwritable_output_fails_before_a_run_starts(synthetic_dataset: Path, tmp_path: Path) -> None:
    if os.geteuid() == 0 and not _unshare_works("-U"):
        pytest.skip("running as root, where chmod does not deny, and `unshare -U` (to drop that) is refused")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    prefix = ["unshare", "-U"] if os.geteuid() == 0 else []
    try:
        proc = subprocess.run([*prefix, *_cli("pretrain", synthetic_dataset, "--stats", synthetic_dataset / "stats.json",
                                              "--output-dir", locked / "out", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}")],
                              capture_output=True, text=True, timeout=300)  # fmt: skip
    finally:
        locked.chmod(0o755)
    assert proc.returncode == EXIT_NOT_WRITABLE, proc.stderr
    assert _error_line(proc).startswith(f"spacenit pretrain: error: permission denied writing {locked / 'out' / 'pretrain_summary.json'}")
    assert not (tmp_path / "m.db").exists()  # no MLflow run was left behind RUNNING


def test_exit_codes_are_in_the_help(capsys) -> None:
    for argv in (["--help"], ["stats", "--help"], ["convert", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert f"  {EXIT_DISK_FULL}  no space left" in out and f"  {EXIT_NOT_WRITABLE}  an output is not writable" in out


# ---------------------------------------------------------------- checkpoints: damaged weights, bad stats


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    """A randomly initialized Sentinel-1 model with plausible stats, as `pretrain` exports it."""
    import torch

    from spacenit.arch.models import create_model
    from spacenit.data.stats import SensorStats
    from spacenit.sensors import SENTINEL1
    from spacenit.train.checkpoint import CheckpointMeta, save_checkpoint

    torch.manual_seed(0)
    model = create_model("spacenit_nano", [SENTINEL1], dim=32, depth=1, heads=2, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    stats = {"sentinel1": SensorStats(["VV", "VH"], np.array([-12.0, -18.0]), np.array([3.0, 4.0]))}
    return save_checkpoint(tmp_path / "ckpt", model, CheckpointMeta(model.config, [SENTINEL1], 8, stats, {}))


def test_a_damaged_safetensors_header_names_the_file(tiny_checkpoint: Path, synthetic_dataset: Path, tmp_path: Path, capsys) -> None:
    weights = tiny_checkpoint / "model.safetensors"
    payload = bytearray(weights.read_bytes())
    payload[8:12] = b"{{{{"  # the JSON header after its 8-byte length
    weights.write_bytes(bytes(payload))
    code = main(["embed", str(tiny_checkpoint), str(synthetic_dataset), str(tmp_path / "emb.zarr")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"{weights} is not a readable safetensors file" in err


def test_a_checkpoint_with_a_nan_std_names_its_metadata_and_band(tiny_checkpoint: Path, synthetic_dataset: Path,
                                                                 tmp_path: Path, capsys) -> None:  # fmt: skip
    # A model's stats travel with it and are the training data's: checked for usable values
    # when used, not against the fingerprint of the dataset it embeds.
    metadata = tiny_checkpoint / "spacenit.json"
    meta = json.loads(metadata.read_text())
    meta["stats"]["sentinel1"]["std"][1] = float("nan")
    metadata.write_text(json.dumps(meta))
    code = main(["embed", str(tiny_checkpoint), str(synthetic_dataset), str(tmp_path / "emb.zarr"), "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"{metadata}: sensor 'sentinel1', band 'VH': mean -18.0 and std nan must be finite numbers" in err
