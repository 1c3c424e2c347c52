"""Progress in words a radiologist can read: what is happening, how far along, and about how long is left.

Used by the CLI and (through the job events) by the widgets, so both say the same thing. No Qt here.
"""
from __future__ import annotations

import time
from typing import Optional


def duration_words(seconds: float) -> str:
    """"about 40 s", "about 3 min", "about 1 h 10 min": rounded the way a person would say it."""
    s = max(0.0, float(seconds))
    if s < 10:
        return "a few seconds"
    if s < 60:
        return f"about {int(round(s / 5.0) * 5)} s"
    if s < 3600:
        m = s / 60.0
        return f"about {m:.0f} min" if m >= 2.5 else f"about {int(s // 60)} min {int(round(s % 60 / 10.0) * 10) % 60:02d} s"
    h, m = divmod(int(round(s / 60.0)), 60)
    return f"about {h} h {m:02d} min"


class Eta:
    """Seconds left from the rate of progress since the first reported step (start-up is not counted).

    ``update(done, total)`` returns None until the estimate means something (3 steps or 2 s of
    progress), then the seconds left, smoothed so the number does not jump with every step."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.t0: Optional[float] = None
        self.d0 = 0
        self.left: Optional[float] = None

    def reset(self) -> None:
        self.t0, self.d0, self.left = None, 0, None

    def update(self, done: int, total: int) -> Optional[float]:
        now = self.clock()
        if self.t0 is None or done < self.d0:
            self.t0, self.d0, self.left = now, int(done), None
            return None
        elapsed, steps = now - self.t0, int(done) - self.d0
        if steps < 3 and elapsed < 2.0 or steps <= 0:
            return self.left
        left = (int(total) - int(done)) * elapsed / steps
        self.left = left if self.left is None else 0.7 * self.left + 0.3 * left
        return max(0.0, self.left)


def step_text(what: str, done: int, total: Optional[int], left_s: Optional[float], unit: str = "step") -> str:
    """"Training the model: step 120 of 300, about 1 min 10 s left" (no time until it is known)."""
    text = f"{what}: {unit} {int(done)}" + (f" of {int(total)}" if total else "")
    if total and int(done) >= int(total):
        return text
    if left_s is not None:
        text += f", {duration_words(left_s)} left"
    elif total:
        text += " (estimating time left)"
    return text
