"""Latent strings made safe for CompressAI's rANS decoder.

The host's decoder (``compressai.ans.RansDecoder``) reads the string in 32-bit
words and never checks its end: a string that is too short, emptied or
zeroed makes it read heap memory past the buffer, so a crafted file decodes
to a different image in every run.  Before any string reaches it, the model's
``decompress`` (and the file decoder) check its length against what a real
rANS string of that many symbols can be, and zero-pad it:

* a rANS string is whole words, at least the 8 bytes of the flushed 64-bit
  state, and at most two words per symbol (16 bits of symbol plus, for an
  escaped int32 value, at most 9 bypass nibbles);
* past the real data the decoder reads zero words.  With zeros coming in, the
  state renormalizes at most once per symbol and bypass runs are bounded by
  the 64-bit state, so two words per symbol (plus some slack) cover every
  read; a valid string never reads its padding, so it decodes bit for bit as
  without it.

The counts follow the host models: one ``y`` group for the factorized prior
(``shape`` is ``y``'s), else ``[y, z]`` with ``shape`` the hyper-latent's and
``y`` four times larger in each direction.
"""

from __future__ import annotations

import math
from typing import Sequence

import compressai
from torch import nn

from .host import latent_strides

__all__ = ["MIN_STRING_BYTES", "symbol_counts", "check_and_pad"]

WORD = 4
#: Rans64EncFlush writes the 64-bit state: no real string is shorter
MIN_STRING_BYTES = 2 * WORD
PAD_WORDS_PER_SYMBOL = 2
PAD_SLACK_BYTES = 4096


def symbol_counts(model: nn.Module, shape: Sequence[int]) -> list[int]:
    """Symbols coded per image in each latent string group of ``model``."""
    if len(shape) != 2 or any(int(d) < 1 for d in shape):
        raise ValueError(f"invalid latent shape {tuple(shape)}")
    area = math.prod(int(d) for d in shape)
    if not hasattr(model, "gaussian_conditional"):  # factorized prior: y only
        return [model.M * area]
    y_stride, z_stride = latent_strides(model)
    ratio = (z_stride // y_stride) ** 2  # y's pixels per z pixel
    return [model.M * area * ratio, model.entropy_bottleneck.channels * area]


def check_and_pad(model: nn.Module, strings: list, shape: Sequence[int]) -> list:
    """``strings`` with every string checked and zero-padded for the decoder.

    Raises:
        ValueError: the groups do not fit the model, or a string's length is
            not one a rANS string of its symbol count can have.
    """
    counts = symbol_counts(model, shape)
    if len(strings) != len(counts):
        raise ValueError(
            f"expected {len(counts)} latent string group(s), got {len(strings)}"
        )
    if compressai.get_entropy_coder() != "ans":
        return strings  # another coder frames its strings its own way
    padded = []
    for g, (group, n) in enumerate(zip(strings, counts)):
        if not isinstance(group, (list, tuple)) or not group:
            raise ValueError(f"latent string group {g} must be a non-empty list")
        out = []
        for s in group:
            if not isinstance(s, (bytes, bytearray)):
                raise ValueError(f"latent strings must be bytes, not {type(s)}")
            longest = 2 * WORD * n + MIN_STRING_BYTES
            if len(s) % WORD or not MIN_STRING_BYTES <= len(s) <= longest:
                raise ValueError(
                    f"latent string of group {g} has {len(s)} bytes; a rANS "
                    f"string of {n} symbols has {MIN_STRING_BYTES} to {longest} "
                    f"bytes, a multiple of {WORD}"
                )
            pad = PAD_WORDS_PER_SYMBOL * WORD * n + PAD_SLACK_BYTES
            out.append(bytes(s) + bytes(pad))
        padded.append(out)
    return padded
