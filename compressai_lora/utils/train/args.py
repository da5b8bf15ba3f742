"""The command line of ``python -m compressai_lora.utils.train``."""

from __future__ import annotations

import argparse

from .data import DEFAULT_DATA
from .models import base_architectures
from .quantizer import QUANTIZERS
from .records import STATE_SUFFIX

__all__ = ["setup_args"]


def setup_args() -> argparse.ArgumentParser:
    """The parser of the training tool (training and --convert)."""
    parser = argparse.ArgumentParser(
        prog="python -m compressai_lora.utils.train",
        description="Train a base codec of CompressAI's zoo (examples/train.py "
        "semantics) and write a checkpoint for eval_model.",
    )
    archs = sorted(base_architectures())
    parser.add_argument(
        "-m",
        "--model",
        "-a",
        "--architecture",
        dest="model",
        choices=archs,
        metavar="ARCH",
        help=f"architecture: {', '.join(archs)} (required to train; --convert "
        "reads it from the checkpoint's meta)",
    )
    parser.add_argument(
        "-d",
        "--dataset",
        default=str(DEFAULT_DATA),
        help="folder of training images, searched recursively (default: "
        "../shared/data/train/natural next to the source checkout)",
    )
    parser.add_argument(
        "-q",
        "--quality",
        type=int,
        default=3,
        help="zoo quality (default: %(default)s)",
    )
    parser.add_argument(
        "--metric",
        choices=("mse", "ms-ssim"),
        default="mse",
        help="distortion (default: %(default)s)",
    )
    parser.add_argument(
        "--lambda",
        dest="lmbda",
        type=float,
        help="RD trade-off (default: the zoo's table for --quality and --metric)",
    )
    parser.add_argument("-N", type=int, help="channels N (default: the zoo's)")
    parser.add_argument("-M", type=int, help="latent channels M (default: the zoo's)")
    parser.add_argument(
        "--steps", type=int, help="stop at this total step count (resumed included)"
    )
    parser.add_argument(
        "--minutes", type=float, help="stop after this many minutes of this run"
    )
    parser.add_argument(
        "--batch-size", type=int, default=16, help="(default: %(default)s)"
    )
    parser.add_argument(
        "--patch-size",
        type=int,
        nargs="+",
        default=[256, 256],
        help="training patch: one size (square) or height width (default: 256 256)",
    )
    parser.add_argument(
        "-lr",
        "--learning-rate",
        type=float,
        default=1e-4,
        help="(default: %(default)s)",
    )
    parser.add_argument(
        "--aux-learning-rate", type=float, default=1e-3, help="(default: %(default)s)"
    )
    parser.add_argument(
        "--lr-drop",
        type=int,
        nargs="*",
        default=[],
        metavar="STEP",
        help="multiply the learning rate by --lr-gamma from each of these "
        "(total) step counts",
    )
    parser.add_argument(
        "--lr-gamma", type=float, default=0.1, help="(default: %(default)s)"
    )
    parser.add_argument(
        "--clip_max_norm",
        type=float,
        default=1.0,
        help="gradient clipping max norm (0: off; default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="model init and batches (default: 0)"
    )
    parser.add_argument(
        "--quantizer",
        choices=QUANTIZERS,
        default="noise",
        help="what g_s decodes while training: noise (CompressAI's y + U(-1/2, "
        "1/2)) or ste (the real decoder's round(y - mu) + mu, straight-through; "
        "the rate still from noise) (default: %(default)s)",
    )
    parser.add_argument("--cuda", action="store_true", help="train on the GPU")
    parser.add_argument("--threads", type=int, help="torch CPU threads")

    aug = parser.add_argument_group("augmentation")
    aug.add_argument(
        "--max-side",
        type=int,
        default=1024,
        help="downscale images to this long side at load (default: %(default)s)",
    )
    aug.add_argument(
        "--scale-min",
        type=float,
        default=0.5,
        help="random rescale in [scale-min, 1] before cropping (1: plain crops)",
    )

    out = parser.add_argument_group("output and resuming")
    out.add_argument("--output-dir", default="out/train", help="(default: %(default)s)")
    out.add_argument(
        "--name", help="file stem (default: ARCH-N<N>-q<quality> or ...-l<lambda>)"
    )
    out.add_argument(
        "--save-every",
        type=int,
        default=500,
        metavar="STEPS",
        help="save every STEPS steps, and at the end (default: %(default)s)",
    )
    out.add_argument(
        "--half-storage",
        action="store_true",
        help="store the checkpoint's transforms in float16 (half the size; "
        "loaders restore float32)",
    )
    out.add_argument(
        "--avg-last",
        type=int,
        default=250,
        metavar="STEPS",
        help="report training PSNR/bpp averaged over the last STEPS steps",
    )
    out.add_argument(
        "--resume",
        metavar="STATE",
        help=f"resume from this train state (default: OUTPUT_DIR/NAME{STATE_SUFFIX} "
        "when it exists)",
    )
    out.add_argument(
        "--no-resume", action="store_true", help="start over even if a state exists"
    )
    out.add_argument(
        "--init",
        metavar="CKPT",
        help="start from these weights (fine-tuning); the step count continues "
        "from its meta",
    )
    out.add_argument(
        "--init-transforms",
        metavar="CKPT",
        help="start g_a and g_s from these weights of another architecture with "
        "the same transforms (mbt2018-mean, bmshj2018-hyperprior, "
        "bmshj2018-factorized), the rest from scratch; the step count starts at 0",
    )
    out.add_argument(
        "--convert",
        help="do not train: rewrite CKPT into OUTPUT_DIR (e.g. --half-storage), "
        "carrying its JSON over",
        metavar="CKPT",
    )
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser
