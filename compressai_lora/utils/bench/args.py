"""The bench's command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from .anchors import CODECS
from .subset import DOMAINS
from .weights import (
    DEFAULT_WEIGHTS_DIR,
    LORA_SUFFIX,
    checkpoint_name,
    weight_paths,
)

__all__ = [
    "DEFAULT_ANCHOR_QUALITIES",
    "DEFAULT_ARCHITECTURE",
    "DEFAULT_DATA",
    "DEFAULT_WEIGHTS_DIR",
    "LORA_SUFFIX",
    "checkpoint_name",
    "setup_args",
    "weight_paths",
]

_REPO = Path(__file__).resolve().parents[3]
DEFAULT_DATA = _REPO.parent / "shared" / "data"
DEFAULT_ARCHITECTURE = "cheng2020-attn-lora"
#: quality sweep of the classical anchors (Pillow's 0-100 scale)
DEFAULT_ANCHOR_QUALITIES = "0,5,10,20,30,40,50,60,70,80,90,95,100"


def setup_args() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m compressai_lora.utils.bench",
        description="Benchmark base codec, latent refinement only and the full "
        "method (refinement + low-rank decoder update) of one or several "
        "architectures on Kodak and the out-of-domain sets, with real "
        "bitstreams, beside Pillow's JPEG, WebP and AVIF on the same crops.",
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
        nargs="+",
        default=["1"],
        metavar="N|DOMAIN=N",
        help="the first N image files of each domain, in sorted order; DOMAIN=N "
        "for one domain, e.g. 2 kodak=4 (default 1)",
    )
    data.add_argument(
        "--skip",
        type=int,
        default=0,
        metavar="K",
        help="leave out the first K files of each domain, e.g. 2: those the dev "
        "crops come from (default 0)",
    )
    data.add_argument(
        "--crop",
        type=int,
        default=256,
        metavar="S",
        help="centre crop to S x S pixels (smaller sides are kept); 0: full image "
        "(default 256)",
    )
    full = "every image of each domain, full size (overrides N and --crop)"
    data.add_argument("--full", action="store_true", help=full)
    model = parser.add_argument_group("Codec")
    model.add_argument(
        "-a",
        "--architecture",
        nargs="+",
        default=[DEFAULT_ARCHITECTURE],
        metavar="ARCH",
        help="-lora architecture(s), each with its own checkpoints (default "
        f"{DEFAULT_ARCHITECTURE})",
    )
    model.add_argument(
        "--weights-dir",
        type=Path,
        default=DEFAULT_WEIGHTS_DIR,
        metavar="DIR",
        help="where each architecture's checkpoints are found by name: "
        "ARCH-N<n>-q<q>.pth.tar (ARCH without -lora, any width n) for each of "
        "--qualities (default: ../shared/weights next to the repository, "
        "%(default)s)",
    )
    model.add_argument(
        "--weights",
        nargs="+",
        default=None,
        metavar="PATH",
        help="base checkpoints instead of --weights-dir: one per rate point, low "
        "rate first (one architecture), or a single pattern with '{q}' filled "
        "from --qualities and '{arch}' with the base architecture, e.g. "
        "'weights/{arch}-N64-q{q}.pth.tar'",
    )
    model.add_argument(
        "--qualities",
        default="1,2,3,4",
        help="rate points: the q of the checkpoint names (default %(default)s)",
    )
    anchors = parser.add_argument_group("Classical anchors (Pillow)")
    anchors.add_argument(
        "--anchors",
        nargs="+",
        default=None,
        choices=[*CODECS, "none"],
        metavar="CODEC",
        help=f"codecs coded on the same crops: {', '.join(CODECS)}, or none "
        "(default: every one available here)",
    )
    anchors.add_argument(
        "--anchor-qualities",
        default=DEFAULT_ANCHOR_QUALITIES,
        metavar="Q,Q,...",
        help="their quality sweep, 0-100 (default %(default)s)",
    )
    adapt = parser.add_argument_group("Adaptation (passed to eval_model)")
    adapt.add_argument("--preset", default="fast", help="default %(default)s")
    adapt.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads of the node (default 2); under torchrun each rank "
        "takes its share",
    )
    adapt.add_argument("--refine-steps", type=int, metavar="N", default=None)
    adapt.add_argument("--adapt-steps", type=int, metavar="N", default=None)
    adapt.add_argument("--seed", type=int, metavar="S", default=None)
    adapt.add_argument(
        "--batch-size",
        type=int,
        metavar="B",
        default=None,
        help="images of the same padded size adapted together (eval_model's)",
    )
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
