"""The loop both phases run, their per-image state, the time budget and the
learning-rate schedule."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from .objective import progress

__all__ = ["EVAL_EVERY", "Deadline", "ImageState", "lr_factor", "run_phase"]

#: steps between two checkpoints of a phase (each one costed on the image alone)
EVAL_EVERY = 10
#: the cosine schedule holds the phase's rate for this share of its span, then
#: decays it to ``LR_FLOOR`` times that rate at its end
LR_HOLD = 0.5
LR_FLOOR = 0.1


class Deadline:
    """A point in time (None: never); ``due()`` when one more step as long as
    the longest so far would end after it (a loop overruns by under a step)."""

    def __init__(self, seconds: Optional[float]):
        now = time.perf_counter()
        self.start, self._last, self._longest = now, now, 0.0
        self.end = None if seconds is None else now + seconds

    def tick(self) -> None:
        """Mark the end of a step."""
        now = time.perf_counter()
        self._longest = max(self._longest, now - self._last)
        self._last = now

    def due(self) -> bool:
        return self.end is not None and time.perf_counter() + self._longest > self.end

    def fraction(self, since: float = 0.0) -> float:
        """Share of the budget used so far (0 without a budget); from share
        ``since`` on, of what was left then."""
        if self.end is None:
            return 0.0
        span = self.end - self.start
        used = 1.0 if span <= 0 else min(1.0, (time.perf_counter() - self.start) / span)
        return 1.0 if since >= 1 else max(used - since, 0.0) / (1 - since)


def lr_factor(schedule: str, done: float) -> float:
    """Learning-rate multiplier after ``done`` (0..1) of a schedule."""
    if schedule == "constant":
        return 1.0
    done = min(max((done - LR_HOLD) / (1 - LR_HOLD), 0.0), 1.0)
    return LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * done))


def schedule_done(
    step: int, steps: int, anneal: Optional[int], deadline, since: float = 0.0
) -> float:
    """How far a schedule is (0..1) at ``step``: over ``anneal`` steps (None:
    the phase's ``steps``), then at its end, so that a longer phase continues
    a shorter one; with a budget, at least the share of it used (from share
    ``since`` on): the schedule ends by the deadline."""
    span = steps if anneal is None else anneal
    return max(min(step / max(span - 1, 1), 1.0), deadline.fraction(since))


@dataclass
class ImageState:
    """One image's progress through a phase: its checkpoints count from step
    ``start`` once ``ready``; ``iters`` is set when it stops."""

    index: int
    start: int = 0
    ready: bool = True
    iters: Optional[int] = None
    diverged: Optional[dict[str, Any]] = None
    stopped: Optional[dict[str, Any]] = None

    @property
    def running(self) -> bool:
        return self.iters is None

    def stop(self, steps: int) -> None:
        if self.iters is None:
            self.iters = steps

    def end(self, phase: str, step: int, reason: str) -> None:
        """Stop early after ``step`` steps: out of time (``reason`` "budget")
        or diverged (the best so far is kept)."""
        record = {"phase": phase, "step": step, "reason": reason}
        setattr(self, "stopped" if reason == "budget" else "diverged", record)
        self.stop(step)

    def bad(self) -> Optional[str]:  # why the state cannot go on, or None
        return None

    def open_layers(self) -> Optional[int]:  # layers that train (the update's)
        return None

    def checkpoint_due(self, t: int, steps: int) -> bool:
        """Whether step ``t`` (0-based) ends with a checkpoint."""
        on_grid = (t + 1 - self.start) % EVAL_EVERY == 0 or t == steps - 1
        return self.ready and t >= self.start and on_grid


def run_phase(
    phase, deadline: Deadline, callback: Optional[Callable[[dict], None]] = None
) -> int:
    """Run ``phase`` to its end, its deadline, or until no image runs; the
    number of steps done (images that stopped earlier have ``iters``).

    An image's state is looked at (finite, in range) only at its checkpoints
    (and with a ``callback``): between them nothing waits for the device.  A
    state that went bad ends the image's phase; its best checkpoint stands.

    ``phase`` has ``name``, ``steps``, ``states`` (:class:`ImageState` with
    a ``target``), ``opt`` and the methods ``prepare(t, deadline)``,
    ``losses(active)`` (each image's loss, bpp, x_hat and the pixels it is
    compared with), ``checkpoint(s)`` and ``finish(s, t)`` (a last look at
    the deadline).
    """
    many = len(phase.states) > 1
    t = 0
    while t < phase.steps:
        if deadline.due():
            for s in phase.states:
                if s.running:
                    phase.finish(s, t)  # a last look at the current state
                    s.end(phase.name, t, "budget")
            break
        phase.prepare(t, deadline)
        active = [s for s in phase.states if s.running]
        if not active:
            break
        terms = phase.losses(active)
        phase.opt.zero_grad()
        loss = [term[0] for term in terms]
        (loss[0] if len(loss) == 1 else torch.stack(loss).sum()).backward()
        phase.opt.step()
        for s, (loss, bpp, x_hat, x) in zip(active, terms):
            due = s.checkpoint_due(t, phase.steps)
            if due or callback:  # a look at the state (on a GPU: a wait)
                why = None if torch.isfinite(loss).all() else "non-finite loss"
                why = why or s.bad()
                if why:
                    s.end(phase.name, t + 1, why)
                    continue
            if due:
                phase.checkpoint(s)
            if callback:
                gates = s.open_layers()
                info = progress(phase.name, t, phase.steps, loss, bpp, x_hat, x, gates)
                callback({**info, "image": s.index} if many else info)
        deadline.tick()
        t += 1
    for s in phase.states:
        s.stop(t)
    return t


def set_lr(opt: torch.optim.Optimizer, factor: float) -> None:
    """Set every parameter group of ``opt`` to ``factor`` times the rate it
    was built with."""
    for group in opt.param_groups:
        group["lr"] = group.setdefault("initial_rate", group["lr"]) * factor
