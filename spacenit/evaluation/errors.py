"""Errors of the evaluation stages that mean "your input is wrong" (the CLI prints one line)."""

from __future__ import annotations


class ProbeError(ValueError):
    """Embeddings or labels that cannot be probed (no labels, one class, too few samples)."""
