"""The bench's command line and its base checkpoints (one per rate point)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import BenchError
from .subset import DOMAINS

__all__ = [
    "DEFAULT_DATA",
    "DEFAULT_WEIGHTS",
    "LORA_SUFFIX",
    "checkpoint_name",
    "setup_args",
    "weight_paths",
]

_REPO = Path(__file__).resolve().parents[3]
DEFAULT_DATA = _REPO.parent / "shared" / "data"
DEFAULT_WEIGHTS = str(
    _REPO.parent / "shared" / "weights" / "cheng2020-attn-N64-q{q}.pth.tar"
)
#: The suffix of the architectures the bench runs.
LORA_SUFFIX = "-lora"


def setup_args() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m compressai_lora.utils.bench",
        description="Benchmark base codec, latent refinement only and the full "
        "method (refinement + low-rank decoder update) on Kodak and the "
        "out-of-domain sets, with real bitstreams.",
    )
    data = parser.add_argument_group("Data")
    data.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="data root with kodak/ and ood/<domain>/ (default: ../shared/data "
        "next to the repository, %(default)s)",
    )
    data.add_argument(
        "--domains",
        nargs="+",
        choices=DOMAINS,
        default=list(DOMAINS),
        metavar="DOMAIN",
        help=f"domains to run (default: all of {', '.join(DOMAINS)})",
    )
    data.add_argument(
        "--images-per-domain",
        type=int,
        default=1,
        metavar="N",
        help="the first N image files of each domain, in sorted order (default 1)",
    )
    data.add_argument(
        "--crop",
        type=int,
        default=256,
        metavar="S",
        help="centre crop to S x S pixels (smaller sides are kept); 0: full image "
        "(default 256)",
    )
    full = "every image of each domain, full size (overrides the two above)"
    data.add_argument("--full", action="store_true", help=full)
    model = parser.add_argument_group("Codec")
    model.add_argument(
        "-a",
        "--architecture",
        default="cheng2020-attn-lora",
        help="a -lora architecture (default %(default)s)",
    )
    model.add_argument(
        "--weights",
        nargs="+",
        default=[DEFAULT_WEIGHTS],
        metavar="PATH",
        help="base checkpoints, one per rate point, low rate first; a single PATH "
        "containing '{q}' is expanded for each of --qualities (default: "
        "%(default)s)",
    )
    model.add_argument(
        "--qualities",
        default="1,2,3,4",
        help="rate points that fill '{q}' in --weights (default %(default)s)",
    )
    adapt = parser.add_argument_group("Adaptation (passed to eval_model)")
    adapt.add_argument("--preset", default="fast", help="default %(default)s")
    adapt.add_argument(
        "--threads", type=int, default=2, help="torch threads (default 2)"
    )
    adapt.add_argument("--refine-steps", type=int, metavar="N", default=None)
    adapt.add_argument("--adapt-steps", type=int, metavar="N", default=None)
    adapt.add_argument("--seed", type=int, metavar="S", default=None)
    out = parser.add_argument_group("Output")
    out.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("bench-out"),
        help="output directory (per-image results, crops, tables, plots; "
        "default %(default)s)",
    )
    out.add_argument(
        "--overwrite",
        action="store_true",
        help="recompute images whose per-image results exist (default: resume)",
    )
    out.add_argument(
        "--report-only",
        action="store_true",
        help="do not run eval_model: tabulate the per-image results already in "
        "--output (domains without results are left out)",
    )
    return parser


def weight_paths(args: argparse.Namespace) -> list[Path]:
    """The base checkpoints of ``--weights`` (``{q}`` filled from --qualities).

    Raises:
        BenchError: bad --qualities, or a checkpoint that is not a file.
    """
    if len(args.weights) == 1 and "{q}" in args.weights[0]:
        try:
            qualities = [int(q) for q in args.qualities.split(",") if q.strip()]
        except ValueError:
            raise BenchError(f"invalid --qualities: {args.qualities!r}") from None
        paths = [Path(args.weights[0].format(q=q)) for q in qualities]
    else:
        paths = [Path(p) for p in args.weights]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise BenchError(f"checkpoint(s) not found: {', '.join(missing)}")
    return paths


def checkpoint_name(path: Path) -> str:
    """The name eval_model gives a checkpoint's runs (``x.pth.tar`` -> ``x``)."""
    return path.name[: -len(".pth.tar")]
