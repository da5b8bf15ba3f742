"""Ctrl-C while one of our tools starts: one line, not a traceback.

``python -m compressai_lora.utils.<tool>`` and the ``compressai-lora`` script
spend seconds importing torch and compressai before a tool's ``main()`` can
catch ``KeyboardInterrupt``.  While such a tool starts, this module's hook
reports an interrupt that reaches the top level as one line (exit status 130).
Importing the package as a library changes nothing.
"""

from __future__ import annotations

import os
import sys

__all__ = ["quiet_interrupts_when_run_as_tool"]

MESSAGE = "Interrupted."


def _starting_a_tool() -> bool:
    # while ``python -m`` locates the module, sys.argv[0] is "-m"
    argv0 = sys.argv[0] if sys.argv else ""
    return argv0 == "-m" or os.path.basename(argv0) == "compressai-lora"


def quiet_interrupts_when_run_as_tool() -> None:
    """Install the hook if this process is starting one of our tools."""
    if not _starting_a_tool() or getattr(sys.excepthook, "_quiet_interrupt", False):
        return
    previous = sys.excepthook

    def hook(kind, value, tb):
        if issubclass(kind, KeyboardInterrupt):
            print(MESSAGE, file=sys.stderr)
            raise SystemExit(130)
        previous(kind, value, tb)

    hook._quiet_interrupt = True  # type: ignore[attr-defined]
    sys.excepthook = hook
