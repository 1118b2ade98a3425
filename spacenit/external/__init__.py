"""External encoders with published weights, ported to SpaceNit (issue 18): Galileo nano and Presto.

Each implements `ExternalEncoder` (interface.py): raw SpaceNit sensor arrays in, pooled embeddings and
per-patch maps out. `load_external(name)` builds one from the weights found by `weights.weights_dir`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from spacenit.external.galileo import GalileoEncoder
from spacenit.external.interface import ExternalEmbeddings, ExternalEncoder, ExternalInputError
from spacenit.external.presto import PrestoEncoder
from spacenit.external.weights import WeightsError, WeightsNotFoundError

#: Name -> loader of the published weights (`weights_dir`, then encoder options such as `patch_size_px`).
EXTERNAL_ENCODERS: dict[str, Callable[..., ExternalEncoder]] = {
    "galileo_nano": GalileoEncoder.from_pretrained,
    "presto": PrestoEncoder.from_pretrained,
}


def load_external(name: str, weights_dir: str | Path | None = None, **options) -> ExternalEncoder:
    """The external encoder `name` with its published weights; `options` go to the encoder (patch_size_px, device)."""
    if name not in EXTERNAL_ENCODERS:
        raise KeyError(f"unknown external encoder {name!r}; known: {sorted(EXTERNAL_ENCODERS)}")
    return EXTERNAL_ENCODERS[name](weights_dir, **options)


__all__ = ["EXTERNAL_ENCODERS", "ExternalEmbeddings", "ExternalEncoder", "ExternalInputError", "GalileoEncoder",
           "PrestoEncoder", "WeightsError", "WeightsNotFoundError", "load_external"]
