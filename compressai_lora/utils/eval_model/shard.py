"""Sharding a run over torchrun's ranks: who evaluates what, progress, gather.

An *item* is one image at one rate point (with ``--compare-base``, the base
and the ``-lora`` model on it, back to back).  Items are numbered as one
process evaluates them, rate point major: ``k = run * n_images + image``;
rank ``r`` of ``W`` evaluates the items with ``k % W == r``.  The rule needs
no communication, is the same on every rank and in every rerun (so per-image
files of a killed run are found again), and deals the images of each rate
point round-robin.

Each rank counts its items in the process group's store; rank 0 shows one
tqdm bar over all items of all ranks (with ETA).  At the end every rank
waits, without a collective, until all ranks have reported their end in the
store, then the ranks exchange their status and their results with one
``all_gather_object``: every rank gets all results, or, if a rank failed,
all raise a :class:`CLIError` that names the failing rank, image and rate
point.  A rank that fails stops the others after their current item.  A
rank that dies (killed) leaves the rest to torchrun, which stops them.

Alone (no torchrun) the same object only drives the bar.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Optional, Sequence

from tqdm import tqdm

from ..distributed import Counters, World, all_gather
from ..paths import os_error_line
from . import CLIError
from .images import short_error

__all__ = ["FAULT_ENV", "Aborted", "Shard", "owned"]

#: Test hook, not for users: ``RANK:N:raise`` or ``RANK:N:kill`` makes rank
#: RANK raise an error (or SIGKILL itself) when it is about to compute its
#: (N+1)-th item (resumed items do not count).
FAULT_ENV = "COMPRESSAI_LORA_TEST_FAULT"
#: seconds between two reads of the store's counters for the bar
_POLL_S = 1.0
_runs = itertools.count()  # one set of counters per run in a process group


def owned(world: World, run: int, num_images: int) -> list[int]:
    """Indices of the images that rank ``world.rank`` evaluates at rate point
    number ``run``: item ``run * num_images + image`` goes to rank
    ``item % world.size``."""
    first = run * num_images
    return [j for j in range(num_images) if (first + j) % world.size == world.rank]


class Aborted(Exception):
    """Another rank failed: this one stops after its current item."""


def _fault(world: World) -> Optional[tuple[int, str]]:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    try:
        rank, after, kind = spec.split(":")
        if kind not in ("raise", "kill"):
            raise ValueError
        return (int(after), kind) if int(rank) == world.rank else None
    except ValueError:
        raise CLIError(f"{FAULT_ENV} must be RANK:N:raise|kill, not {spec!r}") from None


def _message(err: BaseException) -> str:
    if isinstance(err, CLIError):
        return str(err)
    if isinstance(err, OSError):
        return os_error_line(err)
    return short_error(err)


class Shard:
    """This rank's part of a run, the run's progress bar and the gather."""

    def __init__(self, world: World, resumable: bool) -> None:
        self.world = world
        self.resumable = resumable
        self.counters: Optional[Counters] = None
        if world.distributed:
            self.counters = Counters(f"eval_model/{next(_runs)}/")
        self.line_prefix = f"[rank {world.rank}] " if world.distributed else ""
        self.bar: Optional[tqdm] = None
        self._where: Optional[str] = None  # the item in progress
        self._label = ""
        self._computed = 0
        self._fault: Optional[tuple[int, str]] = _fault(world)
        self._polled = 0.0

    # -- assignment --------------------------------------------------------
    def images(self, run: int, filepaths: Sequence[Path]) -> list[tuple[int, Path]]:
        """``(index, path)`` of the images this rank evaluates at rate point
        number ``run``."""
        return [(j, filepaths[j]) for j in owned(self.world, run, len(filepaths))]

    # -- progress ----------------------------------------------------------
    def start_bar(self, total: int) -> None:
        """The bar over all ``total`` items (rank 0 only shows it)."""
        # TQDM_DISABLE=1 hides it on rank 0 too (tqdm reads it for kwargs not given)
        hidden = {} if self.world.is_main else {"disable": True}
        self.bar = tqdm(
            total=total, unit="img", position=0, dynamic_ncols=True, **hidden
        )

    def set_run(self, label: str, trained_net: str) -> None:
        """The rate point now evaluated: ``label`` for messages, the bar's name."""
        self._label = label
        if self.bar is not None:
            self.bar.set_description(trained_net)

    def start(self, filepaths: Sequence[Path]) -> None:
        """The images of the item(s) now evaluated (a batch: several)."""
        if len(filepaths) == 1:
            what = f"image {filepaths[0]}"
        else:
            what = "batch of images " + ", ".join(str(p) for p in filepaths)
        self._where = f"{what} (rate point {self._label})"

    def computing(self) -> None:
        """An item is about to be computed (not resumed): the test hook."""
        if self._fault is not None and self._computed == self._fault[0]:
            if self._fault[1] == "kill":
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"test fault ({FAULT_ENV})")

    def finish(self, computed: bool) -> None:
        """The item is done (``computed``, or loaded from its files).

        Raises:
            Aborted: another rank failed.
        """
        self._where = None
        self._computed += computed
        if self.counters is None:
            if self.bar is not None:
                self.bar.update(1)
            return
        self.counters.add("done")
        self.poll(force=True)
        if self.counters.get("failed"):
            raise Aborted

    def poll(self, force: bool = False) -> None:
        """Rank 0: move the bar to the items all ranks have done (at most
        once a second unless ``force``)."""
        if self.counters is None or self.bar is None or self.bar.disable:
            return
        now = time.monotonic()
        if not force and now - self._polled < _POLL_S:
            return
        self._polled = now
        done = self.counters.get("done")
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # -- the end -----------------------------------------------------------
    def failed(self, err: BaseException) -> tuple[str, Optional[str]]:
        """This rank's status after ``err``: ``("aborted", None)`` or
        ``("failed", message)``.  A failure on an image, or an unexpected
        error (with its traceback), is said at once on stderr."""
        if isinstance(err, Aborted):
            return "aborted", None
        message = _message(err)
        if self._where is not None:
            message = f"{self._where}: {message}"
        expected = isinstance(err, (CLIError, OSError))
        if not expected:
            traceback.print_exc(file=sys.stderr)
        if self._where is not None or not expected:  # else bad input: rank 0 says it
            tqdm.write(
                f"rank {self.world.rank} failed: {message}; stopping the other ranks",
                file=sys.stderr,
            )
        return "failed", message

    def gather(self, results: dict, status: Optional[tuple]) -> dict:
        """All ranks' ``results`` merged, once every rank has ended.

        ``status`` is None (this rank succeeded) or from :meth:`failed`.

        Raises:
            CLIError: on every rank, if any rank failed.
        """
        if self.counters is None:
            self.close()
            return results
        if status is not None:
            self.counters.add("failed")
        self.counters.add("finished")
        while self.counters.get("finished") < self.world.size:
            self.poll()
            time.sleep(0.1)
        self.poll(force=True)
        self.close()
        parts = all_gather((status, {} if status else results))
        failures = [
            (rank, s[1]) for rank, (s, _) in enumerate(parts) if s and s[0] == "failed"
        ]
        if failures:
            raise CLIError(self._failure_line(failures))
        if any(s for s, _ in parts):  # aborted without a failure: cannot happen
            raise CLIError("a rank stopped without an error")
        merged: dict[Any, Any] = {}
        for _, part in parts:
            merged.update(part)
        return merged

    def _failure_line(self, failures: list[tuple[int, str]]) -> str:
        messages = {m for _, m in failures}
        if len(failures) == self.world.size and len(messages) == 1:
            return messages.pop()  # the same on all ranks: bad input
        line = "; ".join(f"rank {rank}: {m}" for rank, m in failures)
        if self.resumable:
            line += "; results done so far are kept: rerun the same command to resume"
        return line
