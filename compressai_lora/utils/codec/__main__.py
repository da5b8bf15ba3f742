"""Compress an image to a file and back, with per-image adaptation.

    python -m compressai_lora.utils.codec encode IMAGE -o FILE [-a ARCH]
        [-q QUALITY | -p CHECKPOINT] [-m METRIC] [adaptation flags] [--cuda]
        [--recon RECON.png] [--max-pixels N] [--force] [-v]
    python -m compressai_lora.utils.codec decode FILE -o IMAGE.png
        [-p CHECKPOINT] [--cuda] [--max-pixels N] [--no-verify] [--force]
    python -m compressai_lora.utils.codec info FILE [--json]

The decoder needs only the file and the same weights: the zoo's pretrained
weights for the file's architecture, quality and metric, or the checkpoint the
encoder used (``-p``); it refuses weights whose fingerprint differs.  The
encoder decodes what it writes and stores a hash of that image; the decoder
checks its own output against it (``--no-verify`` skips the check).  Every
failure exits non-zero with one line on stderr, and no output file is left
behind or overwritten (unless ``--force``); an output that is one of the
inputs is refused even with ``--force``.
"""

from __future__ import annotations

import sys
from typing import NoReturn, Sequence

import torch

from ..images import ImageError
from .cli import setup_args
from .files import write_atomic
from .format import FormatError
from .limits import PixelBudgetError
from .messages import PROG, CodecError, one_line
from .models import build_model

__all__ = [
    "CodecError",
    "build_model",
    "console_main",
    "main",
    "setup_args",
    "write_atomic",
]


def _fail(msg: str, code: int = 1) -> NoReturn:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: Sequence[str]) -> None:
    """Run the command line ``argv``; every failure exits with one line."""
    args = setup_args().parse_args(argv)
    try:
        args.func(args)
    except (CodecError, ImageError, PixelBudgetError) as e:
        _fail(str(e))
    except FormatError as e:
        _fail(f"{getattr(args, 'file', '')}: {e}")
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except MemoryError:
        _fail("out of memory (try a smaller image or fewer adaptation steps)")
    except torch.cuda.OutOfMemoryError:
        _fail("out of GPU memory (try without --cuda or a smaller image)")
    except Exception as e:  # never a traceback for the user
        _fail(f"unexpected {type(e).__name__}: {one_line(e)}")


def console_main() -> None:
    """Entry point of the ``compressai-lora`` console script."""
    main(sys.argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
