"""The adaptation's time budget and the learning-rate schedule of a phase."""

from __future__ import annotations

import math
import time
from typing import Optional

__all__ = ["LR_FLOOR", "LR_HOLD", "Deadline", "lr_factor", "schedule_done", "set_lr"]

#: the cosine schedule holds the phase's learning rate for this share of it,
#: then decays it to ``LR_FLOOR`` times that rate at its end
LR_HOLD = 0.5
LR_FLOOR = 0.1


class Deadline:
    """A point in time (None: never) and the longest step seen so far.

    ``due()`` is true when one more step like the longest so far would end
    after the deadline, so a loop that asks before each step overruns by less
    than one step.
    """

    def __init__(self, seconds: Optional[float]):
        now = time.perf_counter()
        self.start = now
        self.end = None if seconds is None else now + seconds
        self._last = now
        self._longest = 0.0

    def tick(self) -> None:
        """Mark the end of a step."""
        now = time.perf_counter()
        self._longest = max(self._longest, now - self._last)
        self._last = now

    def due(self) -> bool:
        if self.end is None:
            return False
        return time.perf_counter() + self._longest > self.end

    def fraction(self) -> float:
        """Share of the budget used so far (0 without a budget)."""
        if self.end is None:
            return 0.0
        span = self.end - self.start
        return 1.0 if span <= 0 else min(1.0, (time.perf_counter() - self.start) / span)


def lr_factor(schedule: str, done: float) -> float:
    """Learning-rate multiplier after ``done`` (0..1) of a phase."""
    if schedule == "constant":
        return 1.0
    done = min(max((done - LR_HOLD) / (1 - LR_HOLD), 0.0), 1.0)
    return LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * done))


def schedule_done(
    step: int, steps: int, anneal: Optional[int], deadline: "Deadline"
) -> float:
    """How far a phase's schedules are (0..1) at ``step`` (counted from their
    start).

    With ``anneal`` they run over that many steps whatever the phase's length
    or budget, and stay at their end values after it: a longer phase, or a
    larger budget, continues the shorter one's trajectory step for step.
    Without it (None) they run over the phase's ``steps``, or over its time
    budget when that ends the phase first.
    """
    if anneal is not None:
        return min(step / max(anneal - 1, 1), 1.0)
    return max(step / max(steps - 1, 1), deadline.fraction())


def set_lr(opt, lr: float) -> None:
    """Set every parameter group of ``opt`` to ``lr``."""
    for group in opt.param_groups:
        group["lr"] = lr
