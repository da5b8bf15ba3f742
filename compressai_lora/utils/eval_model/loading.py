"""Models of a run: zoo weights and checkpoints, with one-line errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import torch
from compressai.utils.eval_model import __main__ as host

from . import CLIError
from .images import short_error

__all__ = ["checkpoint_lmbda", "load_checkpoint", "load_pretrained"]


def load_pretrained(arch: str, metric: str, quality: int) -> torch.nn.Module:
    """The host's ``load_pretrained``; a failure is a :class:`CLIError`."""
    try:
        return host.load_pretrained(arch, metric, quality)
    except Exception as err:
        raise CLIError(
            f"cannot load pretrained {arch} ({metric}, quality {quality}): "
            f"{short_error(err)}"
        ) from None


def _state_dict_mismatch(err: BaseException) -> Optional[str]:
    """Summary of torch's multi-line load_state_dict error, else None."""
    text = str(err)
    if "Error(s) in loading state_dict" not in text:
        return None
    parts = []
    mismatches = []
    for line in (line.strip() for line in text.splitlines()):
        for label in ("Missing", "Unexpected"):
            if line.startswith(f"{label} key(s)"):
                keys = re.findall(r'"([^"]+)"', line)
                parts.append(f"{len(keys)} {label.lower()} keys (e.g. {keys[0]})")
        if line.startswith("size mismatch for "):
            mismatches.append(line[len("size mismatch for ") :].split(":")[0])
    if mismatches:
        parts.append(f"{len(mismatches)} size mismatches (e.g. {mismatches[0]})")
    return ", ".join(parts) or None


def load_checkpoint(arch: str, no_update: bool, path: str) -> torch.nn.Module:
    """The host's ``load_checkpoint``; a failure is a :class:`CLIError`.

    The message summarizes missing/unexpected keys and size mismatches (a
    checkpoint of another architecture) instead of torch's key lists.
    """
    if not Path(path).is_file():
        raise CLIError(f"checkpoint not found: {path}")
    try:
        return host.load_checkpoint(arch, no_update, path)
    except Exception as err:
        mismatch = _state_dict_mismatch(err)
        if mismatch is None and not isinstance(err, KeyError):
            raise CLIError(
                f"cannot load checkpoint {path} as {arch}: "
                f"{short_error(err, limit=200)}"
            ) from None
        raise CLIError(
            f"cannot load checkpoint {path} as {arch} "
            f"({mismatch or short_error(err)}); "
            "is it a checkpoint of another architecture?"
        ) from None


def checkpoint_lmbda(path: str) -> Optional[float]:
    """``checkpoint["meta"]["lmbda"]`` when the checkpoint has it."""
    try:
        checkpoint = torch.load(path, map_location="cpu")
    except Exception:
        return None
    meta = checkpoint.get("meta") if isinstance(checkpoint, dict) else None
    value = meta.get("lmbda") if isinstance(meta, dict) else None
    return float(value) if isinstance(value, (int, float)) else None
