"""The training tool's error: a problem with the inputs of a run."""

from __future__ import annotations

__all__ = ["TrainError"]


class TrainError(Exception):
    """A problem with the inputs of a run, reported without a traceback."""
