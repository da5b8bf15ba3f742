"""Running our eval_model in-process, once per architecture and domain over
all rate points."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from ..distributed import rank_share
from .errors import BenchError, error_line

__all__ = ["eval_argv", "run_eval_model"]


def eval_argv(
    args: argparse.Namespace,
    arch: str,
    images: Path,
    weights: Sequence[Path],
    out: Path,
) -> list[str]:
    """Command line of our eval_model for one architecture and domain (all
    rate points)."""
    argv = ["checkpoint", str(images), "-a", arch, "-p"]
    argv += [str(w) for w in weights]
    argv += ["--compare-base", "--per-image", "-d", str(out)]
    argv += ["--preset", args.preset, "--threads", str(rank_share(args.threads))]
    for flag in ("refine_steps", "adapt_steps", "seed", "batch_size"):
        value = getattr(args, flag)
        if value is not None:
            argv += [f"--{flag.replace('_', '-')}", str(value)]
    if args.overwrite:
        argv.append("--overwrite")
    return argv


def run_eval_model(argv: list[str]) -> dict[str, Any]:
    """eval_model's ``evaluate(argv)``: its JSON; its per-image files written.

    Its error is reported on stderr as eval_model's own ``Error:`` line.

    Raises:
        BenchError: eval_model refused ``argv`` or failed on the way.
    """
    from ..eval_model import CLIError
    from ..eval_model.__main__ import evaluate

    try:
        return evaluate(argv)
    except (CLIError, OSError) as err:
        print(f"Error: {error_line(err)}", file=sys.stderr)
        status = 1
    except SystemExit as err:  # argparse rejected argv (its usage is on stderr)
        if err.code in (0, None):
            return {}
        status = err.code
    raise BenchError(f"eval_model exited with status {status}: {' '.join(argv)}")
