"""Models of a run: zoo weights and checkpoints, with one-line errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import torch
from compressai.zoo.image import model_architectures

from ... import host
from ...checkpoint import CheckpointError, load_state_dict_and_meta
from . import CLIError
from .images import short_error

__all__ = ["checkpoint_model", "load_pretrained"]

#: VBR architectures whose checkpoints the host loads with a variable-rate
#: entropy bottleneck, updated at the largest gain
_VBR_BOTTLENECK = ("bmshj2018-hyperprior-vbr", "mbt2018-mean-vbr")


def load_pretrained(arch: str, metric: str, quality: int) -> torch.nn.Module:
    """The host's ``load_pretrained``; a failure is a :class:`CLIError`."""
    try:
        return host.load_pretrained_model(arch, metric, quality)
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


def checkpoint_model(
    arch: str, no_update: bool, path: str
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``(model, meta)`` of a checkpoint, loaded as the host's
    ``load_checkpoint`` loads it; a failure is a :class:`CLIError`.

    The message summarizes missing/unexpected keys and size mismatches (a
    checkpoint of another architecture) instead of torch's key lists.
    """
    if not Path(path).is_file():
        raise CLIError(f"checkpoint not found: {path}")
    try:
        state_dict, meta = load_state_dict_and_meta(path)
    except CheckpointError as err:
        raise CLIError(str(err)) from None
    try:
        cls = model_architectures[arch]
        if arch in _VBR_BOTTLENECK:
            net = cls.from_state_dict(state_dict, vr_entbttlnck=True)
            if not no_update:
                net.update(force=True, scale=net.Gain[-1])
        else:
            net = cls.from_state_dict(state_dict)
            if not no_update:
                net.update(force=True)
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
    return net.eval(), meta
