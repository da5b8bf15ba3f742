"""Train a base codec of CompressAI's zoo on a folder of images.

Semantics of CompressAI's ``examples/train.py``: loss ``lambda * 255^2 * MSE +
bpp`` (``lambda * (1 - MS-SSIM) + bpp`` with ``--metric ms-ssim``, the host's
``RateDistortionLoss``), Adam on every parameter but the entropy bottleneck's
``.quantiles``, a second Adam minimizing ``net.aux_loss()`` on those (the
host's ``net_aux_optimizer``), random crops and horizontal flips, gradient
clipping.  Lambda comes from the zoo's table by ``--quality`` unless
``--lambda`` is given; the size is the zoo's for that quality unless ``-N``/
``-M`` say otherwise.

Training counts steps (one batch each), not epochs: every step draws its batch
from a generator seeded by ``(seed, step)``, so a run that is stopped and
resumed sees the same batches as one that never stopped.  The run stops at
``--steps`` (total, resumed steps included) or after ``--minutes`` of this
session, whichever comes first, and saves every ``--save-every`` steps::

    OUT/NAME.pth.tar       {"state_dict", "meta"}, entropy tables updated:
                           python -m compressai.utils.eval_model checkpoint \\
                               IMAGES -a ARCH -p OUT/NAME.pth.tar
    OUT/NAME.json          how it was trained (data, steps, time, hardware,
                           final training PSNR/bpp) and the file's sha256
    OUT/NAME.state.pth.tar float32 weights, optimizer states, step count:
                           the next run with the same OUT and NAME resumes

``--convert SRC`` rewrites an existing checkpoint (e.g. with
``--half-storage``) and carries its JSON over; see ``docs/training.md``.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Optional, Sequence

import torch

from ...checkpoint import CheckpointError
from ..paths import os_error_line
from .args import setup_args
from .convert import convert
from .data import ImageBank, step_generator, step_seed
from .errors import TrainError
from .models import base_architectures, build_model, hardware, model_size
from .trainer import Trainer, lr_at

__all__ = [
    "main",
    "setup_args",
    "convert",
    "Trainer",
    "TrainError",
    "ImageBank",
    "base_architectures",
    "build_model",
    "hardware",
    "lr_at",
    "model_size",
    "step_generator",
    "step_seed",
]


def main(argv: Sequence[str]) -> Optional[dict[str, Any]]:
    """Run the tool on ``argv``; print and return the JSON it wrote."""
    parser = setup_args()
    args = parser.parse_args(argv)
    args.argv = list(argv)
    if len(args.patch_size) not in (1, 2):
        parser.error("--patch-size takes one size or height width")
    args.patch = (args.patch_size * 2)[:2]
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.convert:
            info = convert(args)
        else:
            info = Trainer(args).run()
    except (TrainError, CheckpointError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    except OSError as e:  # a path problem met on the way
        parser.exit(2, f"{parser.prog}: error: {os_error_line(e)}\n")
    except KeyboardInterrupt:
        parser.exit(130, "interrupted\n")
    print(json.dumps(info, indent=2))
    return info


if __name__ == "__main__":
    main(sys.argv[1:])
