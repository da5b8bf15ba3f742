"""Large blocks stay in the heap while adapting, and only then."""

import resource
import threading

import pytest
import torch

from compressai_lora.adapt import heap
from compressai_lora.adapt.heap import kept_heap

pytestmark = pytest.mark.skipif(
    heap._glibc() is None, reason="malloc is not glibc's to tune here"
)

FLOATS = 16 * 2**20  # 64 MiB, above glibc's largest mmap threshold


def _faults_of_a_large_block(rounds: int = 8) -> int:
    """Minor page faults of the last of ``rounds`` times a 64 MiB block is
    allocated, filled and freed (the heap settles in the first few)."""
    for _ in range(rounds - 1):
        del_me = torch.ones(FLOATS)
        del del_me
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.ones(FLOATS)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del block
    return faults


def _resident() -> int:
    """This process's resident bytes now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def test_a_freed_block_is_reused_without_faults_inside_and_given_back_after():
    pages = FLOATS * 4 // 4096
    assert _faults_of_a_large_block() > pages // 2  # mapped afresh
    with kept_heap():
        assert _faults_of_a_large_block() < pages // 20
        with kept_heap():  # nested: the outer one decides
            pass
        assert _faults_of_a_large_block() < pages // 20
        kept = _resident()
    assert _resident() < kept - FLOATS * 4  # the free pages went back


def test_a_process_that_tunes_malloc_is_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert heap._glibc() is None


def test_only_the_main_thread_keeps_the_heap():
    found = []
    worker = threading.Thread(target=lambda: found.append(heap._glibc()))
    worker.start()
    worker.join()
    assert found == [None]
