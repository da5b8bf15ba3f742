"""Images of the dataset: listing, reading, and measuring small ones."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from compressai.ops import compute_padding
from PIL import Image
from torch import Tensor

from ... import host
from ..images import read_tensor
from . import CLIError

__all__ = [
    "MSSSIM_MIN_SIDE",
    "PaddedForward",
    "compute_metrics",
    "dataset_images",
    "read_image",
    "short_error",
]

#: pytorch_msssim needs the smaller image side to exceed (11 - 1) * 2**4.
MSSSIM_MIN_SIDE = 161


def short_error(err: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line, at most ``limit`` characters."""
    text = " ".join(str(err).split()) or type(err).__name__
    text = f"{type(err).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_image(filepath: str | Path) -> Tensor:
    """The host's ``read_image``, except that 16-bit images keep their range.

    PIL's ``convert("RGB")`` clips 16-bit grayscale (modes ``I;16*`` and
    ``I``) at 255, which turns most images white; they are scaled to 8 bits
    (``round(v / 257)``) instead.  8-bit images give the host's tensor.
    """
    return read_tensor(filepath)


def _unreadable(filepaths: list[Path]) -> list[tuple[Path, str]]:
    bad = []
    for path in filepaths:
        try:
            with Image.open(path) as img:
                img.load()
        except Exception as err:  # PIL raises many types for broken files
            bad.append((path, short_error(err)))
    return bad


def dataset_images(dataset: str) -> list[Path]:
    """The host's image list of ``dataset``, without files PIL cannot decode.

    Those are skipped with a warning on stderr that lists them.

    Raises:
        CLIError: the folder is missing, or holds no (readable) image.
    """
    folder = Path(dataset)
    if not folder.exists():
        raise CLIError(f"dataset folder not found: {dataset}")
    if not folder.is_dir():
        raise CLIError(f"dataset is not a folder: {dataset}")
    filepaths = host.collect_images(dataset)
    if len(filepaths) == 0:
        raise CLIError(
            f"no images found in directory {dataset} "
            f"(extensions: {', '.join(host.image_extensions())})"
        )
    bad = _unreadable(filepaths)
    if bad:
        lines = "\n".join(f"  {path}: {why}" for path, why in bad)
        print(
            f"Warning: skipping {len(bad)} unreadable image file(s):\n{lines}",
            file=sys.stderr,
        )
        skipped = {path for path, _ in bad}
        filepaths = [p for p in filepaths if p not in skipped]
        if not filepaths:
            raise CLIError(f"no readable images in {dataset}")
    return filepaths


def compute_metrics(org: Tensor, rec: Tensor, max_val: int = 255) -> dict[str, Any]:
    """The host's metrics, also for images pytorch_msssim refuses.

    The host's ``compute_metrics`` asserts inside pytorch_msssim for images
    whose smaller side is <= 160 px; for those the PSNR is the host's and
    MS-SSIM is ``None``.  Larger images go through the host function.
    """
    if min(org.shape[-2:]) >= MSSSIM_MIN_SIDE:
        return host.compute_metrics(org, rec, max_val)
    org = (org * max_val).clamp(0, max_val).round()
    rec = (rec * max_val).clamp(0, max_val).round()
    return {"psnr-rgb": host.psnr(org, rec).item(), "ms-ssim-rgb": None}


class PaddedForward:
    """``forward`` on the input padded as ``inference`` pads it for compress.

    The host's entropy estimation runs ``forward`` on the unpadded image,
    which fails for sizes that are not a multiple of the model's stride.
    For multiples of 64 the padding is empty and the result is the host's.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def forward(self, x: Tensor, **kwargs: Any) -> dict[str, Any]:
        h, w = x.size(2), x.size(3)
        pad, unpad = compute_padding(h, w, min_div=host.PAD_MULTIPLE)
        out = dict(
            self.model.forward(F.pad(x, pad, mode="constant", value=0), **kwargs)
        )
        out["x_hat"] = F.pad(out["x_hat"], unpad)
        return out
