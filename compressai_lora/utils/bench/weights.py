"""The base checkpoints of each architecture, one per rate point.

By default they are found in ``--weights-dir`` by name: for ``ARCH-lora`` and
quality ``q``, the one file ``ARCH-N<n>-q<q>.pth.tar`` (any ``n``: the width
may differ per architecture).  ``--weights`` names them instead: a list of
paths (one architecture), or a pattern with ``{q}`` and, for several
architectures, ``{arch}`` (the base name, e.g. ``mbt2018-mean``).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Sequence

from .errors import BenchError

__all__ = [
    "DEFAULT_WEIGHTS_DIR",
    "LORA_SUFFIX",
    "base_arch",
    "checkpoint_name",
    "find_checkpoints",
    "parse_qualities",
    "weight_paths",
]

_REPO = Path(__file__).resolve().parents[3]
#: where the project's benchmark weights are (``../shared/weights``)
DEFAULT_WEIGHTS_DIR = _REPO.parent / "shared" / "weights"
#: The suffix of the architectures the bench runs.
LORA_SUFFIX = "-lora"


def base_arch(arch: str) -> str:
    """The host architecture of a ``-lora`` name (``x-lora`` -> ``x``)."""
    return arch[: -len(LORA_SUFFIX)] if arch.endswith(LORA_SUFFIX) else arch


def checkpoint_name(path: Path) -> str:
    """The name eval_model gives a checkpoint's runs (``x.pth.tar`` -> ``x``)."""
    return path.name[: -len(".pth.tar")]


def parse_qualities(text: str, flag: str, lo: int, hi: int) -> list[int]:
    """Comma-separated distinct integers in ``[lo, hi]``, in the order given.

    Raises:
        BenchError: not integers, out of range, repeated or empty.
    """
    try:
        values = [int(q) for q in text.split(",") if q.strip()]
    except ValueError:
        why = "comma-separated integers"
        raise BenchError(f"invalid {flag}: {text!r} ({why})") from None
    bad = [q for q in values if not lo <= q <= hi]
    if not values or bad or len(set(values)) != len(values):
        raise BenchError(
            f"invalid {flag}: {text!r} (distinct integers from {lo} to {hi})"
        )
    return values


def find_checkpoints(folder: Path, arch: str, qualities: Sequence[int]) -> list[Path]:
    """``folder/<base arch>-N<n>-q<q>.pth.tar`` for each quality, any ``n``.

    Raises:
        BenchError: a quality has no such file, or several (several widths).
    """
    base = base_arch(arch)
    paths = []
    for q in qualities:
        name = re.compile(rf"{re.escape(base)}-N\d+-q{q}\.pth\.tar")
        found = (
            sorted(p for p in folder.iterdir() if name.fullmatch(p.name))
            if folder.is_dir()
            else []
        )
        if not found:
            raise BenchError(
                f"no checkpoint {base}-N*-q{q}.pth.tar in {folder} "
                "(see --weights-dir, --weights)"
            )
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise BenchError(
                f"several checkpoints for {base} q{q} in {folder} ({names}): "
                "choose with --weights 'DIR/{arch}-N64-q{q}.pth.tar'"
            )
        paths.append(found[0])
    return paths


def weight_paths(args: argparse.Namespace, arch: str) -> list[Path]:
    """The base checkpoints of ``arch``, low rate first (see the module doc).

    Raises:
        BenchError: bad --qualities or --weights, or a checkpoint that is not a
            file.
    """
    archs = list(args.architecture)
    qualities = parse_qualities(args.qualities, "--qualities", 0, 1000)
    if not args.weights:
        return find_checkpoints(Path(args.weights_dir), arch, qualities)
    if len(args.weights) == 1 and "{q}" in args.weights[0]:
        pattern = args.weights[0]
        if len(archs) > 1 and "{arch}" not in pattern:
            raise BenchError(
                "with several architectures a --weights pattern needs '{arch}'"
            )
        try:
            paths = [Path(pattern.format(q=q, arch=base_arch(arch))) for q in qualities]
        except (KeyError, IndexError, ValueError):
            raise BenchError(
                f"invalid --weights pattern {pattern!r}: only '{{q}}' and "
                "'{arch}' may be filled"
            ) from None
    elif len(archs) > 1:
        raise BenchError(
            "--weights lists paths for one architecture: with several, give a "
            "pattern with '{arch}' and '{q}', or use --weights-dir"
        )
    else:
        paths = [Path(p) for p in args.weights]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise BenchError(f"checkpoint(s) not found: {', '.join(missing)}")
    return paths
