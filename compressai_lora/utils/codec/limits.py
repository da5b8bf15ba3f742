"""What the codec may allocate: a pixel budget checked before the work starts.

A file's header claims the image size, and a 100-byte file can claim
100000x100000 pixels.  The decoder (and the encoder, for large inputs) checks
the size against a budget before it allocates anything that grows with the
pixels, so such a file is refused at once instead of exhausting memory.

The default budget is what fits in this machine's available memory (and the
process's address-space limit, if one is set), at the peak bytes per pixel
measured by ``benchmarks/codec_memory.py`` (decoding) and
``benchmarks/size_speed.py`` (encoding) with a safety margin.
"""

from __future__ import annotations

import resource
from typing import Optional

import psutil

__all__ = [
    "PixelBudgetError",
    "available_memory",
    "bytes_per_pixel",
    "check_pixels",
    "default_max_pixels",
]

#: Peak bytes per pixel and per channel of N (the model's width) on top of
#: the model: decoding 5.1 (1920x1080, benchmarks/codec_memory.py), encoding
#: with adaptation 39 (benchmarks/size_speed.py, a 1024x734 screenshot at the
#: default preset: 2,553 B/px at N=64, less the fixed 64, over 64 channels;
#: the backward pass keeps the decoder's activations, and the heap keeps
#: freed blocks while adapting, see adapt/heap.py).  The budget allows about
#: 1.5 and 1.2 times that.
DECODE_BYTES_PER_CHANNEL = 8
ENCODE_BYTES_PER_CHANNEL = 48
#: image tensors, padding and the output, whatever the model
FIXED_BYTES_PER_PIXEL = 64


class PixelBudgetError(ValueError):
    """The image has more pixels than the budget allows."""


def available_memory() -> int:
    """Bytes this process can still allocate (RAM and address-space limit)."""
    available = psutil.virtual_memory().available
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        used = psutil.Process().memory_info().vms
        available = min(available, max(soft - used, 0))
    return int(available)


def bytes_per_pixel(channels: Optional[int], encode: bool) -> int:
    """Peak bytes per pixel for a model of width ``channels`` (None: unknown,
    the floor only)."""
    per_channel = ENCODE_BYTES_PER_CHANNEL if encode else DECODE_BYTES_PER_CHANNEL
    return FIXED_BYTES_PER_PIXEL + per_channel * (channels or 0)


def default_max_pixels(channels: Optional[int], encode: bool) -> int:
    """The pixel budget of this machine for a model of width ``channels``."""
    return available_memory() // bytes_per_pixel(channels, encode)


def check_pixels(
    width: int,
    height: int,
    max_pixels: Optional[int],
    channels: Optional[int],
    encode: bool,
) -> None:
    """Raise :class:`PixelBudgetError` if ``width x height`` exceeds the budget.

    ``max_pixels`` None takes :func:`default_max_pixels`.
    """
    pixels = width * height
    given = max_pixels is not None
    limit = max_pixels if given else default_max_pixels(channels, encode)
    if pixels > limit:
        why = (
            "--max-pixels"
            if given
            else f"what fits in {available_memory() / 2**30:.1f} GiB of free memory"
        )
        raise PixelBudgetError(
            f"image {width}x{height} has {pixels} pixels, more than the budget "
            f"of {limit} ({why}); raise it with --max-pixels"
        )
