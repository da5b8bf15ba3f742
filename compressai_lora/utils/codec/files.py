"""The codec's files: output checks before any work, reads and atomic writes."""

from __future__ import annotations

import os
from typing import BinaryIO, Callable, Sequence

from .. import files
from .messages import CodecError, one_line

__all__ = ["check_output", "refuse_same_file", "write_atomic", "read_bytes"]


def _exists(path: str) -> CodecError:
    return CodecError(f"output {path} exists (use --force to overwrite)")


def check_output(path: str, force: bool) -> None:
    """Fail early (before any work) if ``path`` cannot or must not be written."""
    if os.path.isdir(path):
        raise CodecError(f"output {path} is a directory")
    if os.path.lexists(path) and not force:
        raise _exists(path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CodecError(f"cannot write {path}: directory {parent} does not exist")


def refuse_same_file(output: str, inputs: Sequence[str]) -> None:
    """Fail if ``output`` is one of ``inputs`` (same real path or inode), which
    writing it would destroy, whatever ``--force`` says."""
    for path in inputs:
        same = os.path.realpath(output) == os.path.realpath(path)
        if not same and os.path.exists(output) and os.path.exists(path):
            same = os.path.samefile(output, path)
        if same:
            raise CodecError(
                f"output {output} is the input {path}: refusing to overwrite it"
            )


def write_atomic(path: str, write: Callable[[BinaryIO], None], force: bool) -> None:
    """:func:`compressai_lora.utils.files.write_atomic` after :func:`check_output`.

    Readers never see a partial file and nothing is left behind on failure;
    without ``force`` an existing file is never replaced.

    Raises:
        CodecError: the output exists (without ``force``) or cannot be written.
    """
    check_output(path, force)
    try:
        files.write_atomic(path, write, overwrite=force)
    except FileExistsError:
        raise _exists(path) from None
    except OSError as e:
        raise CodecError(f"cannot write {path}: {e.strerror or one_line(e)}") from None


def read_bytes(path: str) -> bytes:
    """The content of ``path``; CodecError with the reason if unreadable."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CodecError(f"cannot read {path}: {e.strerror or one_line(e)}") from None
