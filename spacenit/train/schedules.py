"""Schedules as pure functions of the step, so a resumed run follows them exactly."""

from __future__ import annotations

import math


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float = 0.1):
    """LR factor for `LambdaLR`: linear warm-up to 1, then cosine decay to `min_ratio`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def linear_warmup(start: float, end: float, warmup_steps: int, step: int) -> float:
    """From `start` at step 0 to `end` at `warmup_steps`, then flat (EMA momentum, masking ratios)."""
    frac = min(max(step, 0) / max(warmup_steps, 1), 1.0)
    return start + (end - start) * frac
