"""Learning-rate schedules: a linear warm-up, then a cosine decay to a floor (a fraction of the base rate).

Pretraining and fine-tuning use the same shape with their own numbers (floor, warm-up ramp), kept as they were tuned.
"""
from __future__ import annotations

import math
from typing import Callable


def warmup_cosine(total_steps: int, warmup_steps: int, floor: float, ramp_offset: int = 0) -> Callable[[int], float]:
    """Multiplier of the base rate at `step`: (step + 1) / (warmup_steps + ramp_offset) during the warm-up
    (at least 1 in the denominator), then a cosine from 1 down to `floor` at `total_steps` (and `floor` after)."""
    ramp = max(1, warmup_steps + ramp_offset)

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / ramp
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def per_step(scheduler) -> dict:
    """A scheduler as Lightning's configure_optimizers wants it, stepped once per batch."""
    return {"scheduler": scheduler, "interval": "step"}
