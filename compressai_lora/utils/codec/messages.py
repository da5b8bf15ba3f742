"""What the codec tool says: its one-line errors and warnings on stderr."""

from __future__ import annotations

import sys

__all__ = ["PROG", "CodecError", "one_line", "warn", "nbytes"]

PROG = "compressai-lora"


class CodecError(Exception):
    """A user-facing failure, reported as one line on stderr."""


def one_line(e: BaseException, limit: int = 300) -> str:
    """The message of ``e`` on one line, at most ``limit`` characters."""
    msg = " ".join(str(e).split()) or type(e).__name__
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def warn(msg: str) -> None:
    """Print ``compressai-lora: warning: msg`` on stderr."""
    print(f"{PROG}: warning: {msg}", file=sys.stderr)


def nbytes(n: int) -> str:
    """``"1 byte"``, ``"2 bytes"``..."""
    return f"{n} byte" if n == 1 else f"{n} bytes"
