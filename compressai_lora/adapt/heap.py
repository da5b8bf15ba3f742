"""Keep freed memory in the process's heap while adapting (Linux, glibc).

Every step allocates the decoder's activations and frees them again.  glibc
serves a block above its mmap threshold (at most 32 MiB: at N=64, the
activations of an image of about 0.5 MP and up) with a fresh mapping and
unmaps it on free, so each step page-faults and zeroes its large blocks
anew.  Inside :func:`kept_heap` such blocks come from the heap and stay
there for the next step (a 1024x734 screenshot at the default: 20% faster,
peak memory 1.6 times, docs/RESULTS.md); on leaving, the free pages go back
to the system (``malloc_trim``).  Any ``mallopt`` ends glibc's adjustment of
its thresholds to the blocks it frees, so on leaving they are set where that
adjustment ends up in a process of large tensors (mmap above 32 MiB, trim
above 64 MiB).  Only where memory comes from changes: the
arithmetic, and so the bytes, do not.  The settings are the process's: a
process that tunes glibc's malloc in its environment (``MALLOC_*_``,
``GLIBC_TUNABLES``) is left as it is, settings made with ``mallopt`` at run
time are not kept, and another allocator preloaded in glibc's place is not
detected (the calls change nothing there).  Only the main thread's adaptation
keeps the heap: other threads allocate from arenas of their own.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import threading
from typing import Iterator, Optional

__all__ = ["kept_heap"]

# mallopt(3) parameters, and their values on leaving: glibc's default
# (M_MMAP_MAX) or the end of its own adjustment (the thresholds)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_LEAVE = {
    _M_MMAP_MAX: 65536,
    _M_MMAP_THRESHOLD: 32 * 2**20,
    _M_TRIM_THRESHOLD: 64 * 2**20,
}
_NEVER_TRIM = 2**31 - 1  # bytes of free heap top kept (mallopt takes an int)

_depth = 0


def _glibc() -> Optional[ctypes.CDLL]:
    """The process's glibc, or None where malloc is not glibc's to tune."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    if threading.current_thread() is not threading.main_thread():
        return None  # its arena is not the heap these settings keep
    if any(k.startswith("MALLOC_") or k == "GLIBC_TUNABLES" for k in os.environ):
        return None  # the user's own settings stand
    libc = ctypes.CDLL(None)
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None
    return libc


@contextlib.contextmanager
def kept_heap() -> Iterator[None]:
    """Large blocks come from the heap and stay there inside (no-op where
    malloc is not glibc's, or nested)."""
    global _depth
    libc = _glibc() if _depth == 0 else None
    if libc is not None:
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if libc is not None:
            for param, value in _LEAVE.items():
                libc.mallopt(param, value)
            libc.malloc_trim(0)
