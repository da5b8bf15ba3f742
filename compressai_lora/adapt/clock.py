"""The adaptation's time budget: stop before a step that would overrun it."""

from __future__ import annotations

import time
from typing import Optional

__all__ = ["Deadline"]


class Deadline:
    """A point in time (None: never) and the longest step seen so far.

    ``due()`` is true when one more step like the longest so far would end
    after the deadline, so a loop that asks before each step overruns by less
    than one step.
    """

    def __init__(self, seconds: Optional[float]):
        now = time.perf_counter()
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
