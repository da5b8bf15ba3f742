"""Writing files atomically: a reader never sees half a file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Union

__all__ = ["write_atomic", "write_bytes", "write_json"]

PathLike = Union[str, os.PathLike]


def write_atomic(
    path: PathLike, write: Callable[[BinaryIO], Any], overwrite: bool = True
) -> None:
    """Write ``path`` through ``write(f)`` on a temporary file, then rename.

    The temporary file lies in the same directory (created if missing) and is
    removed on any failure, so ``path`` is either untouched or complete.  The
    file gets the permissions of a new file (umask), not the 0600 of the
    temporary.  With ``overwrite=False`` an existing ``path`` is never
    replaced, also when it appears while ``write`` runs (``os.link`` refuses
    atomically where the file system has hard links).

    Raises:
        FileExistsError: ``overwrite`` is False and ``path`` exists.
        OSError: the directory or the file cannot be written.
    """
    path = Path(path)
    if not overwrite and os.path.lexists(path):
        raise FileExistsError(17, "File exists", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise
            except OSError:  # no hard links here: check, then rename
                if os.path.lexists(path):
                    raise FileExistsError(17, "File exists", str(path)) from None
                os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def write_bytes(path: PathLike, data: bytes, overwrite: bool = True) -> None:
    """:func:`write_atomic` of ``data``."""
    write_atomic(path, lambda f: f.write(data), overwrite)


def write_json(path: PathLike, obj: Any, newline: bool = False) -> None:
    """``obj`` as indented JSON (as the host writes it), atomically.

    ``newline`` ends the file with one (for files kept in git).
    """
    text = json.dumps(obj, indent=2) + ("\n" if newline else "")
    write_bytes(path, text.encode())
