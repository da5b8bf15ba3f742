"""torch.distributed under torchrun: the ranks, the process group, threads.

torchrun (``python -m torch.distributed.run``) starts one process per rank and
sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` (and the
rendezvous, ``MASTER_ADDR``/``MASTER_PORT``); over several nodes the ranks are
global, as torchrun numbers them.  Without these variables, or with
``WORLD_SIZE=1``, a process is the only rank of a world of one and nothing
here touches torch.distributed.

The process group uses gloo on the CPU and nccl when CUDA is asked for and
available (one GPU per rank: ``cuda:LOCAL_RANK``).  Besides object
collectives, the tools use the group's key-value store (``TCPStore``) for
cheap counters (progress, finished and failed ranks), which never block.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
import torch.distributed as dist

__all__ = [
    "Counters",
    "World",
    "all_gather",
    "cpu_count",
    "device_of",
    "is_main_process",
    "rank_share",
    "join",
    "rank_threads",
    "world_from_env",
]


@dataclass(frozen=True)
class World:
    """This process's place among the ranks (a world of one without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # on this node
    local_size: int = 1  # ranks on this node

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(env: Mapping[str, str], name: str, default: Optional[int]) -> int:
    value = env.get(name)
    if value is None or value == "":
        if default is None:
            raise ValueError(f"{name} is not set (WORLD_SIZE is: start with torchrun)")
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} is not an integer: {value!r}") from None


def world_from_env(env: Optional[Mapping[str, str]] = None) -> World:
    """The world torchrun describes in the environment (``env``: os.environ).

    Raises:
        ValueError: inconsistent or malformed variables (one line).
    """
    env = os.environ if env is None else env
    size = _env_int(env, "WORLD_SIZE", 1)
    if size < 1:
        raise ValueError(f"WORLD_SIZE must be >= 1, got {size}")
    if size == 1:
        return World()
    rank = _env_int(env, "RANK", None)
    local_rank = _env_int(env, "LOCAL_RANK", 0)
    local_size = _env_int(env, "LOCAL_WORLD_SIZE", size)
    if not 0 <= rank < size:
        raise ValueError(f"RANK {rank} is outside 0..{size - 1} (WORLD_SIZE {size})")
    if not 0 <= local_rank < local_size <= size:
        raise ValueError(
            f"LOCAL_RANK {local_rank} / LOCAL_WORLD_SIZE {local_size} do not fit "
            f"WORLD_SIZE {size}"
        )
    return World(rank, size, local_rank, local_size)


def is_main_process() -> bool:
    """Whether this process is rank 0 (or runs alone): the one that writes.

    Reads the environment only (no process group needed); a malformed
    ``RANK`` counts as rank 0.
    """
    try:
        return int(os.environ.get("RANK", "0") or 0) == 0
    except ValueError:
        return True


def cpu_count() -> int:
    """CPUs this process may run on (its affinity, where the OS tells)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def rank_threads(
    world: World, given: Optional[int], cpus: Optional[int] = None
) -> Optional[int]:
    """torch threads of one rank: ``given`` (``--threads``), else the node's
    CPUs split evenly between its ranks (at least 1); None alone (no change)."""
    if not world.distributed:
        return None
    if given is not None:
        return given
    return max(1, (cpu_count() if cpus is None else cpus) // world.local_size)


def rank_share(threads: int) -> int:
    """This rank's part of ``threads`` meant for the whole node (at least 1):
    ``threads`` alone, ``threads // LOCAL_WORLD_SIZE`` under torchrun."""
    try:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    except ValueError:
        local = 1
    return max(1, threads // max(1, local))


def device_of(world: World, cuda: bool) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` under torchrun with
    ``cuda`` (plain ``cuda`` alone), else the CPU.

    Raises:
        ValueError: more local ranks than visible GPUs.
    """
    if not (cuda and torch.cuda.is_available()):
        return torch.device("cpu")
    if not world.distributed:
        return torch.device("cuda")
    count = torch.cuda.device_count()
    if world.local_rank >= count:
        raise ValueError(
            f"LOCAL_RANK {world.local_rank} needs GPU {world.local_rank}, but "
            f"{count} are visible: start at most {count} processes per node"
        )
    return torch.device("cuda", world.local_rank)


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def join(world: World, cuda: bool) -> None:
    """Join torchrun's process group (once per process; nothing alone).

    gloo on the CPU; nccl, with this rank's GPU as the current device, when
    ``cuda`` and CUDA is available.  The group is left at exit, so that
    in-process callers (the bench) can run several evaluations in it.
    """
    if not world.distributed or dist.is_initialized():
        return
    nccl = cuda and torch.cuda.is_available()
    if nccl:
        torch.cuda.set_device(device_of(world, cuda))
    dist.init_process_group(
        "nccl" if nccl else "gloo", rank=world.rank, world_size=world.size
    )
    atexit.register(_leave)


def all_gather(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (pickled object collective)."""
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class Counters:
    """Integer counters shared by all ranks in the process group's store.

    ``add`` never blocks on other ranks, so a rank can count its progress or
    its end while others still work; ``prefix`` keeps the counters of
    successive runs in one process group apart.
    """

    def __init__(self, prefix: str) -> None:
        # the default group's store: torch keeps its accessor private
        self._store = dist.distributed_c10d._get_default_store()
        self._prefix = prefix

    def add(self, name: str, amount: int = 1) -> int:
        """Add ``amount`` to counter ``name``; its new value."""
        return int(self._store.add(self._prefix + name, amount))

    def get(self, name: str) -> int:
        return self.add(name, 0)
