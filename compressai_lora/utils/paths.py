"""Path problems of the command-line tools, as one-line messages."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

__all__ = ["file_problem", "os_error_line", "output_dir_problem"]


def os_error_line(err: OSError) -> str:
    """``cannot access PATH: reason`` for an ``OSError`` (one line)."""
    what = err.strerror or " ".join(str(err).split()) or type(err).__name__
    if err.filename is None:
        return what
    return f"cannot access {err.filename}: {what}"


def output_dir_problem(path: str | os.PathLike, what: str = "output directory"):
    """Why ``path`` cannot become a directory of outputs, or None.

    Nothing is created: the nearest existing ancestor must be a writable
    directory (then the tool can create the rest when it writes).
    """
    directory = Path(os.path.abspath(path))
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot create {what} {path}: {existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot create {what} {path}: {existing} is not writable"
    return None


def file_problem(path: Optional[Path]) -> Optional[str]:
    """Why ``path`` cannot be written as a file (None: it can, as far as known)."""
    if path is None:
        return None
    if path.is_dir():
        return f"output file {path} is a directory"
    return output_dir_problem(path.parent, "directory")
