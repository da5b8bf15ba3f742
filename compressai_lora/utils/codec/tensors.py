"""Images to padded model inputs and decoder outputs back to 8-bit images."""

from __future__ import annotations

import platform
from typing import Sequence

import numpy as np
import torch
from compressai.ops import compute_padding

from ...host import PAD_MULTIPLE
from ...latent_strings import check_and_pad
from ...models import LoRAModelMixin
from .messages import CodecError, one_line

__all__ = [
    "padding",
    "padded_size",
    "to_tensor",
    "to_uint8",
    "reconstruct",
    "device_name",
    "psnr",
]


def padding(width: int, height: int) -> tuple[int, int, int, int]:
    """``(left, right, top, bottom)`` zeros to a multiple of the host's padding."""
    pad, _ = compute_padding(height, width, min_div=PAD_MULTIPLE)
    return tuple(pad)


def padded_size(width: int, height: int) -> tuple[int, int, int, int]:
    """``(padded height, padded width, top, left)`` of a ``width x height`` image."""
    left, right, top, bottom = padding(width, height)
    return height + top + bottom, width + left + right, top, left


def to_tensor(rgb: np.ndarray, device: str) -> torch.Tensor:
    """Zero-padded ``1x3xHxW`` float tensor in [0, 1] (one full-size copy)."""
    h, w = rgb.shape[:2]
    ph, pw, top, left = padded_size(w, h)
    x = torch.zeros(1, 3, ph, pw, device=device)
    src = torch.from_numpy(rgb).to(device).permute(2, 0, 1)
    x[0, :, top : top + h, left : left + w].copy_(src)
    return x.div_(255)


def to_uint8(x_hat: torch.Tensor, width: int, height: int) -> np.ndarray:
    """The ``(height, width, 3)`` uint8 image inside a padded decoder output."""
    _, _, top, left = padded_size(width, height)
    x_hat = x_hat[0, :, top : top + height, left : left + width]
    x_hat = x_hat.clamp(0, 1).mul_(255).round_().to(torch.uint8)
    return x_hat.permute(1, 2, 0).cpu().numpy()


def reconstruct(
    model: torch.nn.Module, strings: list, shape: Sequence[int], width: int, height: int
) -> np.ndarray:
    """Decode ``strings`` into the ``(height, width, 3)`` uint8 image.

    Raises:
        CodecError: the strings or the shape do not fit the image ("corrupted").
    """
    ph, pw, _, _ = padded_size(width, height)
    factor = model.downsampling_factor
    if tuple(shape) != (ph // factor, pw // factor):
        raise CodecError(
            f"corrupted file: latent shape {tuple(shape)} does not fit a "
            f"{width}x{height} image"
        )
    try:
        if not isinstance(model, LoRAModelMixin):  # ours check in decompress
            strings = check_and_pad(model, strings, shape)
        with torch.no_grad():
            x_hat = model.decompress(strings, list(shape))["x_hat"]
    except ValueError as e:  # the update stream rejects what it cannot parse
        raise CodecError(f"corrupted file: {one_line(e)}") from None
    if tuple(x_hat.shape[-2:]) != (ph, pw):
        raise CodecError(
            f"corrupted file: decoded size {tuple(x_hat.shape[-2:])}, "
            f"expected {(ph, pw)}"
        )
    return to_uint8(x_hat, width, height)


def device_name(device: str) -> str:
    """The device as the file records it, e.g. "cpu x86_64, torch 2.14.1"."""
    if device == "cuda":
        name = f"cuda {torch.cuda.get_device_name()}"
    else:
        name = f"cpu {platform.machine()}"
    return f"{name}, torch {torch.__version__}"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two 8-bit images (inf when equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
