"""Padding of the images the adaptation sees: the caller's (left out of the
loss and of the RD cost) and ours (to the codec's multiple)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch.nn.functional as F
from torch import Tensor

__all__ = ["Padding", "pad_to_multiple", "own_pixels", "per_image_paddings"]

#: (left, right, top, bottom) pixels of an input that are the caller's padding
Padding = tuple[int, int, int, int]


def pad_to_multiple(x: Tensor, factor: int) -> Tensor:
    """Replicate-pad ``x`` on the bottom/right to a multiple of ``factor``.

    The host's autoregressive coders need it; the loss only sees ``x``'s own
    pixels, so the padding just has to be cheap to code.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % factor, (-w) % factor
    if not ph and not pw:
        return x
    mode = "replicate" if h > 1 and w > 1 else "constant"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def per_image_paddings(padding: Sequence, n: Optional[int] = None):
    """``padding`` checked: one ``(left, right, top, bottom)`` for every image
    (returned as a tuple) or a sequence of them, one per image (a list).
    With ``n``, the list of the ``n`` images' paddings.

    Raises:
        ValueError: a padding is not 4 values >= 0, or not one per image.
    """
    per_image = len(padding) > 0 and hasattr(padding[0], "__len__")
    pads = [tuple(int(v) for v in p) for p in (padding if per_image else [padding])]
    if any(len(p) != 4 or min(p) < 0 for p in pads):
        raise ValueError(f"padding must be 4 values >= 0, got {padding}")
    if n is None:
        return pads if per_image else pads[0]
    if not per_image:
        return pads * n
    if len(pads) != n:
        raise ValueError(f"{len(pads)} paddings for {n} images")
    return pads


def own_pixels(x: Tensor, paddings: Sequence[Padding]) -> list[tuple[Tensor, tuple]]:
    """Each image's own pixels (``x`` less its padding) and their (top, left)
    offset in ``x``."""
    out = []
    for n, padding in enumerate(paddings):
        left, right, top, bottom = padding
        h, w = x.size(-2) - top - bottom, x.size(-1) - left - right
        if min(padding) < 0 or h < 1 or w < 1:
            raise ValueError(
                f"padding {padding} does not fit an input of {tuple(x.shape)}"
            )
        image = x[n : n + 1, :, top : top + h, left : left + w]
        out.append((image, (top, left)))
    return out
