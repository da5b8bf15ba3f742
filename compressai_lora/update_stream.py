"""Bitstream of the per-image decoder update.

Layout (format version 1), every field explicitly sized::

    byte 0        version (high nibble) | flags (bit 0: an update follows)
    -- only when bit 0 is set --
    2 bytes       fingerprint of the adapted-layer set (architecture, layer
                  names, kernel shapes, update form), big-endian
    1 byte        rank r
    1 byte        number of adapted layers L
    ceil(L/8)     gate bits, one per layer, MSB first; at least one is set
    1 byte        quantization step code s: step = 2 ** (-s / 4)
    ceil(n/2)     4-bit prior-scale index per transmitted factor tensor
                  (A, B[, K] of each open layer, in order)
    varint        length of the range-coded payload (LEB128)
    payload       quantized factors of the open layers, rANS-coded with
                  compressai's coder under the discretized Laplace priors

With every gate closed the stream is empty (0 bytes): the ``strings`` entry
frames its length, so "no update" costs nothing and a ``-lora`` model with no
update counts exactly the host's bytes.  Streams of the first release wrote
the single byte ``0x10`` for it; the decoder still reads that.  The decoder
parses every byte, rejects trailing or missing bytes, and re-encodes the
decoded symbols to check they reproduce the payload bit for bit, so a
truncated or corrupted update raises ``ValueError`` instead of silently
decoding a wrong model.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Mapping

import torch
from compressai.ans import RansDecoder, RansEncoder
from torch import Tensor

from .byte_reader import ByteReader, encode_varint
from .layers import LoRAConv
from .priors import best_scale, cdf_tables

__all__ = [
    "FORMAT_VERSION",
    "MAX_SYMBOL",
    "DEFAULT_STEP_CODE",
    "LayerUpdate",
    "step_from_code",
    "quantize",
    "fingerprint",
    "encode_update",
    "decode_update",
]

FORMAT_VERSION = 1
DEFAULT_STEP_CODE = 24  # step 2 ** -6
_HAS_UPDATE = 0x01
#: Largest |symbol| we code.  compressai's rANS encoder never returns for
#: bypass-coded raw values >= 2 ** 28 (its shift loop wraps), and a corrupted
#: payload can decode to any 32-bit value: both sides check this bound.
MAX_SYMBOL = 2**26


@dataclass
class LayerUpdate:
    """Quantized factors of one open layer: integer symbols and their step."""

    symbols: dict[str, Tensor]
    step: float

    def dequantized(self) -> dict[str, Tensor]:
        return {k: v.to(torch.float32) * self.step for k, v in self.symbols.items()}


def step_from_code(code: int) -> float:
    if not 0 <= code <= 255:
        raise ValueError(f"quantization step code must be in [0, 255], got {code}")
    return 2.0 ** (-code / 4)


def quantize(factors: Mapping[str, Tensor], step_code: int) -> LayerUpdate:
    """Round factors to the uniform grid of ``step_from_code(step_code)``."""
    step = step_from_code(step_code)
    symbols = {}
    for k, v in factors.items():
        q = torch.round(v.detach().float().cpu() / step)
        # Checked before the int32 cast, whose result for NaN/inf or overflow
        # depends on the platform.
        if not torch.isfinite(q).all() or (q.abs() > MAX_SYMBOL).any():
            raise ValueError(
                f"factor {k} is non-finite or exceeds {MAX_SYMBOL} quantization steps"
            )
        symbols[k] = q.to(torch.int32)
    return LayerUpdate(symbols, step)


def fingerprint(arch: str, adapters: Mapping[str, LoRAConv]) -> int:
    """16-bit fingerprint of what the decoder must share with the encoder."""
    desc = [arch] + [
        f"{name}:{type(m.base).__name__}:{tuple(m.base.weight.shape)}:{m.form}"
        for name, m in adapters.items()
    ]
    return zlib.crc32("|".join(desc).encode()) & 0xFFFF


def _rans(symbols: list[int], indexes: list[int]) -> bytes:
    cdfs, lengths, offsets = cdf_tables()
    return RansEncoder().encode_with_indexes(symbols, indexes, cdfs, lengths, offsets)


def encode_update(
    fp: int,
    rank: int,
    n_layers: int,
    updates: Mapping[int, LayerUpdate],
    step_code: int,
) -> bytes:
    """Serialize the updates of the open layers (``{layer index: update}``)."""
    if not updates:
        return b""
    if n_layers > 255 or rank > 255:
        raise ValueError("at most 255 adapted layers and rank 255 are supported")
    gates = bytearray(math.ceil(n_layers / 8))
    nibbles: list[int] = []
    symbols: list[int] = []
    indexes: list[int] = []
    for i in sorted(updates):
        gates[i // 8] |= 0x80 >> (i % 8)
        for tensor in updates[i].symbols.values():
            flat = tensor.flatten()
            if flat.numel() and not (
                -MAX_SYMBOL <= int(flat.min()) and int(flat.max()) <= MAX_SYMBOL
            ):
                raise ValueError(
                    f"quantized factor of layer {i} exceeds {MAX_SYMBOL} steps "
                    "(non-finite or far too large for the quantization step)"
                )
            j = best_scale(flat)
            nibbles.append(j)
            symbols += flat.tolist()
            indexes += [j] * flat.numel()
    if len(nibbles) % 2:
        nibbles.append(0)
    packed = bytes((a << 4) | b for a, b in zip(nibbles[::2], nibbles[1::2]))
    payload = _rans(symbols, indexes)
    return b"".join(
        [
            bytes([(FORMAT_VERSION << 4) | _HAS_UPDATE]),
            fp.to_bytes(2, "big"),
            bytes([rank, n_layers]),
            bytes(gates),
            bytes([step_code]),
            packed,
            encode_varint(len(payload)),
            payload,
        ]
    )


def decode_update(
    data: bytes,
    fp: int,
    rank: int,
    shapes: list[dict[str, tuple]],
) -> dict[int, LayerUpdate]:
    """Parse an update stream made for ``len(shapes)`` adapted layers.

    Args:
        data: the stream
        fp: the decoder's fingerprint (see :func:`fingerprint`)
        rank: the decoder's adapter rank
        shapes: per adapted layer, the factor shapes ``{name: shape}``

    Returns:
        ``{layer index: LayerUpdate}`` for the open layers (empty: no update).

    Raises:
        ValueError: the stream is truncated, corrupted or made for another
            model (architecture, adapted layers or rank).
    """
    if not isinstance(data, (bytes, bytearray)):
        raise ValueError(f"update stream must be bytes, got {type(data).__name__}")
    if not data:
        return {}  # no update
    r = ByteReader(data, "update stream")
    head = r.take(1, "header")[0]
    if head >> 4 != FORMAT_VERSION:
        raise ValueError(
            f"update stream has format version {head >> 4}, "
            f"this decoder reads version {FORMAT_VERSION}"
        )
    if head & 0x0F & ~_HAS_UPDATE:
        raise ValueError(f"update stream corrupted: unknown flags {head & 0x0F:#x}")
    if not head & _HAS_UPDATE:
        r.end()
        return {}
    got_fp = int.from_bytes(r.take(2, "fingerprint"), "big")
    got_rank, got_layers = r.take(2, "rank and layer count")
    if got_layers != len(shapes):
        raise ValueError(
            f"update stream is for a model with {got_layers} adapted layers, "
            f"this model has {len(shapes)}"
        )
    if got_rank != rank:
        raise ValueError(
            f"update stream has rank {got_rank}, this model's adapters have rank {rank}"
        )
    if got_fp != fp:
        raise ValueError(
            "update stream was made for another architecture or adapted-layer set "
            f"(fingerprint {got_fp:#06x}, this model {fp:#06x})"
        )
    gate_bytes = r.take(math.ceil(len(shapes) / 8), "gate bits")
    open_layers = [i for i in range(len(shapes)) if gate_bytes[i // 8] & 0x80 >> i % 8]
    spare = len(gate_bytes) * 8 - len(shapes)
    if not open_layers or (spare and gate_bytes[-1] & ((1 << spare) - 1)):
        raise ValueError("update stream corrupted: invalid gate bits")
    step = step_from_code(r.take(1, "quantization step")[0])
    tensors = [
        (i, name, shape) for i in open_layers for name, shape in shapes[i].items()
    ]
    packed = r.take(math.ceil(len(tensors) / 2), "prior scale indexes")
    nibbles = [n for b in packed for n in (b >> 4, b & 0x0F)]
    if len(nibbles) > len(tensors) and nibbles[-1]:
        raise ValueError("update stream corrupted: invalid padding of scale indexes")
    payload = r.take(r.varint("payload length"), "payload")
    r.end()

    indexes: list[int] = []
    for (_, _, shape), j in zip(tensors, nibbles):
        indexes += [j] * math.prod(shape)
    cdfs, lengths, offsets = cdf_tables()
    # Zero padding keeps a corrupted payload from reading past the buffer: the
    # decoder reads at most a few 32-bit words per symbol past the real data.
    padded = payload + bytes(16 * len(indexes) + 64)
    values = RansDecoder().decode_with_indexes(padded, indexes, cdfs, lengths, offsets)
    if any(not -MAX_SYMBOL <= v <= MAX_SYMBOL for v in values):
        raise ValueError("update stream corrupted: factor value out of range")
    if _rans(values, indexes) != payload:
        raise ValueError("update stream corrupted: payload does not decode cleanly")

    out: dict[int, LayerUpdate] = {}
    pos = 0
    for i, name, shape in tensors:
        n = math.prod(shape)
        t = torch.tensor(values[pos : pos + n], dtype=torch.int32).view(shape)
        out.setdefault(i, LayerUpdate({}, step)).symbols[name] = t
        pos += n
    return out
