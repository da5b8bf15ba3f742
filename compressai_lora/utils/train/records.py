"""What the written files record: checkpoint meta, settings, versions."""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path
from typing import Any, Optional, Sequence

import compressai
import torch

import compressai_lora

from ...lambdas import LAMBDAS
from .data import REPO_ROOT

__all__ = [
    "STATE_SUFFIX",
    "FORMAT",
    "checkpoint_format",
    "command_line",
    "run_config",
    "checkpoint_meta",
    "quality_of",
    "shown_path",
    "versions",
]

#: suffix of the resumable training state, beside the checkpoint
STATE_SUFFIX = ".state.pth.tar"
FORMAT = (
    "CompressAI checkpoint: {'state_dict': ..., 'meta': ...}, entropy tables "
    "updated (net.update(force=True)); loads with compressai.utils.eval_model "
    "checkpoint -a {arch}"
)


def checkpoint_format(arch: str) -> str:
    """The ``format`` line of a checkpoint's JSON."""
    return FORMAT.replace("{arch}", arch)


def command_line(argv: Sequence[str]) -> str:
    """The command that ran this tool with ``argv``."""
    return "python -m compressai_lora.utils.train " + shlex.join(argv)


def run_config(
    args: argparse.Namespace, N: int, M: Optional[int], lmbda: float
) -> dict[str, Any]:
    """The settings a resumed run must share with the state it continues."""
    return {
        "arch": args.model,
        "N": N,
        "M": M,
        "lmbda": lmbda,
        "metric": args.metric,
        "patch": list(args.patch),
        "batch": args.batch_size,
        "seed": args.seed,
        "quantizer": args.quantizer,
    }


def checkpoint_meta(config: dict[str, Any], step: int) -> dict[str, Any]:
    """The ``meta`` stored in the checkpoint after ``step`` steps."""
    p = config["patch"]
    return {
        "arch": config["arch"],
        "N": config["N"],
        "M": config["M"],
        "lmbda": config["lmbda"],
        "metric": config["metric"],
        "steps": step,
        "patch": p[0] if p[0] == p[1] else list(p),
        "batch": config["batch"],
    }


def quality_of(lmbda: float, metric: str) -> Optional[int]:
    """The zoo quality whose table lambda is ``lmbda`` (None if none is)."""
    table = LAMBDAS[metric]
    return table.index(lmbda) + 1 if lmbda in table else None


def shown_path(path: str) -> str:
    """``path`` relative to the repository root (as in the docs) if possible."""
    try:
        return os.path.relpath(Path(path).resolve(), REPO_ROOT)
    except ValueError:
        return str(path)


def versions() -> dict[str, str]:
    """Versions of torch, compressai and compressai_lora."""
    return {
        "torch": torch.__version__,
        "compressai": compressai.__version__,
        "compressai_lora": compressai_lora.__version__,
    }
