"""The bench's failures, as one-line messages."""

from __future__ import annotations

from ..paths import os_error_line

__all__ = ["BenchError", "error_line"]


class BenchError(Exception):
    """Bad input: one ``Error:`` line on stderr, exit status 1."""


def error_line(err: Exception) -> str:
    """The one-line message of ``err`` (``os_error_line`` for an ``OSError``)."""
    return os_error_line(err) if isinstance(err, OSError) else str(err)
