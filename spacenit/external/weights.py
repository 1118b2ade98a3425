"""Published weights of external models: where they live, that they are the published bytes, strict loading.

The weights are read, never copied into the repository, from (first match):

1. the `weights_dir` argument of a loader,
2. the environment variable `SPACENIT_WEIGHTS_DIR`,
3. `../shared/weights` next to the repository checkout.

Every file is checked against the sha256 its provenance README records
before `torch.load(..., weights_only=True)` reads it, and every tensor must
land in a module parameter or buffer of the same shape: a missing, extra or
misshapen key fails with the full list, never silently.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

WEIGHTS_ENV = "SPACENIT_WEIGHTS_DIR"
#: `../shared/weights` seen from the repository root (spacenit/external/weights.py -> parents[2]).
DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "weights"


class WeightsError(ValueError):
    """Weights that are not the published ones, or do not fit the architecture; the message lists why."""


class WeightsNotFoundError(FileNotFoundError):
    """A weights file that is not where the search looked; the message names the path and the fix."""


@dataclass(frozen=True)
class WeightsFile:
    """One published file: its folder under the weights directory, its name, its sha256."""

    folder: str
    name: str
    sha256: str
    #: Where the authors published it (for the error message of a missing file).
    source: str


def weights_dir(path: str | Path | None = None) -> Path:
    """The weights directory: `path`, else $SPACENIT_WEIGHTS_DIR, else ../shared/weights of the checkout."""
    if path is not None:
        return Path(path)
    if os.environ.get(WEIGHTS_ENV):
        return Path(os.environ[WEIGHTS_ENV])
    return DEFAULT_WEIGHTS_DIR


def locate(file: WeightsFile, directory: str | Path | None = None) -> Path:
    """The path of `file`, checked to exist and to hold the published bytes."""
    path = weights_dir(directory) / file.folder / file.name
    if not path.is_file():
        raise WeightsNotFoundError(
            f"{path} does not exist. Put the published weights ({file.source}) there, point "
            f"${WEIGHTS_ENV} at the folder that holds {file.folder}/{file.name}, or pass weights_dir="
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != file.sha256:
        raise WeightsError(f"{path} has sha256 {digest}, the published file has {file.sha256}: a different or damaged file")
    return path


def load_state_dict(file: WeightsFile, directory: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The checked file's state dict, read as plain tensors on the CPU."""
    path = locate(file, directory)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} is not a state dict of tensors (got {type(state).__name__})")
    return state


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Copy every tensor of `state` into `module`; any missing, unexpected or misshapen key raises, listing all."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshapen = sorted(f"{k}: file {tuple(state[k].shape)}, model {tuple(expected[k].shape)}"
                       for k in set(state) & set(expected) if state[k].shape != expected[k].shape)  # fmt: skip
    if missing or unexpected or misshapen:
        raise WeightsError(
            f"{source} does not fit {type(module).__name__}: missing keys {missing}, unexpected keys {unexpected}, "
            f"shape mismatches {misshapen}"
        )
    module.load_state_dict(state, strict=True)
