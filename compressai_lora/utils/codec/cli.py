"""The command line of ``compressai-lora``: its parser and subcommands."""

from __future__ import annotations

import argparse

from ... import __version__
from ..adapt_args import add_adaptation_args
from .decode import decode
from .encode import encode
from .format import FORMAT_VERSION
from .info import info
from .messages import PROG
from .models import DEFAULT_ARCH, DEFAULT_QUALITY, architectures

__all__ = ["setup_args"]


_NO_VERIFY_HELP = (
    "write the image even if it differs from the encoder's reconstruction "
    "(accept drift between devices)"
)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _max_pixels_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-pixels",
        type=_positive_int,
        metavar="N",
        help="refuse images with more pixels (default: what fits in free memory)",
    )


def _encode_parser(sub) -> None:
    enc = sub.add_parser("encode", help="compress an image into a file")
    enc.add_argument("image", help="input image (any format and mode Pillow reads)")
    enc.add_argument("-o", "--output", required=True, help="compressed file to write")
    enc.add_argument(
        "-a",
        "--architecture",
        default=DEFAULT_ARCH,
        choices=architectures(),
        metavar="ARCH",
        help=f"model architecture (default: %(default)s); one of "
        f"{', '.join(architectures())}",
    )
    weights = enc.add_mutually_exclusive_group()
    weights.add_argument(
        "-q",
        "--quality",
        type=int,
        help=f"zoo quality level, pretrained weights (default: {DEFAULT_QUALITY})",
    )
    weights.add_argument("-p", "--path", help="checkpoint to use instead of the zoo")
    enc.add_argument(
        "-m", "--metric", choices=("mse", "ms-ssim"), help="metric (default: mse)"
    )
    enc.add_argument(
        "--recon", metavar="PNG", help="also write the encoder's reconstruction"
    )
    enc.add_argument("--cuda", action="store_true", help="run on the GPU")
    _max_pixels_arg(enc)
    enc.add_argument("--force", action="store_true", help="overwrite outputs")
    enc.add_argument("-v", "--verbose", action="store_true", help="progress bar")
    add_adaptation_args(enc)
    enc.set_defaults(func=encode)


def _decode_parser(sub) -> None:
    dec = sub.add_parser("decode", help="decompress a file into an RGB PNG")
    dec.add_argument("file", help="compressed file")
    dec.add_argument("-o", "--output", required=True, help="PNG image to write")
    dec.add_argument("-p", "--path", help="checkpoint the file was encoded with")
    dec.add_argument("--cuda", action="store_true", help="run on the GPU")
    _max_pixels_arg(dec)
    dec.add_argument("--no-verify", action="store_true", help=_NO_VERIFY_HELP)
    dec.add_argument("--force", action="store_true", help="overwrite the output")
    dec.set_defaults(func=decode)


def setup_args() -> argparse.ArgumentParser:
    """The parser of ``compressai-lora encode|decode|info``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Compress images to files and back with CompressAI models and "
        "per-image low-rank adaptation.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {__version__} (file format {FORMAT_VERSION})",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _encode_parser(sub)
    _decode_parser(sub)
    inf = sub.add_parser("info", help="print the header of a compressed file")
    inf.add_argument("file", help="compressed file")
    inf.add_argument("--json", action="store_true", help="print JSON")
    inf.set_defaults(func=info)
    return parser
