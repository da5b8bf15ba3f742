"""The compressed-file format of ``compressai-lora encode`` (version 2).

Layout, every variable-size field length-framed (``varint``: unsigned LEB128,
at most 5 bytes; ``str8``: 1-byte length + ASCII)::

    4 bytes   magic b"CALR"
    1 byte    format version (2; version 1 files are still read)
    varint    header length H, then H bytes of header:
                str8    architecture (zoo name, e.g. "cheng2020-attn-lora")
                str8    metric ("mse" or "ms-ssim")
                1 byte  quality (1..8; 0: weights from a checkpoint file)
                8 bytes weights fingerprint (SHA-256 prefix of the state dict)
                str8    weights label (zoo "q3-mse" or the checkpoint's file name)
                1 byte  adapter rank (0: base architecture, no update stream)
                str8    adapter update form ("" for a base architecture)
                varint  image width, varint image height (original size)
                1 byte  flags (bit 0: encoded on CUDA)
                1 byte  number of latent dimensions D, then D varints
                        (the ``shape`` passed to ``decompress``)
                -- version 2 only --
                str8    the encoder's device (e.g. "cpu x86_64, torch 2.14.1")
                8 bytes reconstruction check: SHA-256 prefix of the image the
                        encoder decoded from these strings
                        (:func:`reconstruction_digest`)
    varint    number of string groups G, then per group:
                varint  number of strings S, then per string:
                  varint length, bytes
    4 bytes   CRC-32 (zlib, big-endian) of every byte before it

The reconstruction check lets the decoder verify its own output: a payload
changed behind a valid CRC, or a decoder whose float results differ from the
encoder's (another device or platform), gives another image and is caught.

The string groups are ``compress()["strings"]`` as the model returned them:
the host's latent strings and, for ``-lora`` models, the update stream as the
last group (``[update_bytes]``, see :mod:`compressai_lora.update_stream`).

Readers check, in this order: length, magic, version, CRC, then parse every
byte strictly (no trailing bytes).  Every failure raises :class:`FormatError`
with a one-line message.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from ...byte_reader import ByteReader, encode_varint

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "FormatError",
    "Header",
    "pack",
    "reconstruction_digest",
    "unpack",
    "weights_fingerprint",
]

MAGIC = b"CALR"
FORMAT_VERSION = 2
#: versions this reader parses (version 1 has no device and no check)
READ_VERSIONS = (1, 2)
DIGEST_BYTES = 8
FLAG_CUDA = 0x01
MAX_SIDE = 1 << 20
_MIN_SIZE = len(MAGIC) + 1 + 1 + 1 + 4  # magic, version, header len, G, CRC


class FormatError(ValueError):
    """The data is not a valid compressai-lora file of a version we read."""


@dataclass(frozen=True)
class Header:
    """What the decoder needs besides the strings.

    Args:
        arch: zoo architecture name
        metric: "mse" or "ms-ssim"
        quality: zoo quality level, 0 when the weights came from a checkpoint
        weights: 8-byte fingerprint of the weights (:func:`weights_fingerprint`)
        weights_label: human-readable name of the weights (for messages only)
        rank: adapter rank of a ``-lora`` model, 0 for a base architecture
        form: adapter update form ("" for a base architecture)
        width: original image width
        height: original image height
        shape: latent shape given to ``decompress``
        cuda: encoded on a CUDA device
        device: the encoder's device, for messages ("" in version 1 files)
        recon: reconstruction check (:func:`reconstruction_digest`; empty
            in version 1 files)
        version: format version of the file the header came from
    """

    arch: str
    metric: str
    quality: int
    weights: bytes
    weights_label: str
    rank: int
    form: str
    width: int
    height: int
    shape: tuple[int, ...]
    cuda: bool = False
    device: str = ""
    recon: bytes = b""
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if not 0 <= self.quality <= 255 or not 0 <= self.rank <= 255:
            raise FormatError("quality and rank must be in [0, 255]")
        if len(self.weights) != 8:
            raise FormatError("the weights fingerprint must be 8 bytes")
        if not (1 <= self.width <= MAX_SIDE and 1 <= self.height <= MAX_SIDE):
            raise FormatError(
                f"image size {self.width}x{self.height} out of range [1, {MAX_SIDE}]"
            )
        if not 1 <= len(self.shape) <= 8 or not all(
            1 <= d <= MAX_SIDE for d in self.shape
        ):
            raise FormatError(f"invalid latent shape {self.shape}")
        if self.version not in READ_VERSIONS:
            raise FormatError(f"unknown format version {self.version}")
        if len(self.recon) != (DIGEST_BYTES if self.version >= 2 else 0):
            raise FormatError(
                f"a version {self.version} header needs a reconstruction check of "
                f"{DIGEST_BYTES if self.version >= 2 else 0} bytes"
            )


# -- writing ---------------------------------------------------------------
def _varint(n: int) -> bytes:
    try:
        return encode_varint(n)
    except ValueError as err:
        raise FormatError(str(err)) from None


def _str8(s: str) -> bytes:
    raw = s.encode("ascii", errors="replace")[:255]
    return bytes([len(raw)]) + raw


def _header_bytes(h: Header) -> bytes:
    if h.version != FORMAT_VERSION:
        raise FormatError(f"this writer makes version {FORMAT_VERSION} files only")
    return b"".join(
        [
            _str8(h.arch),
            _str8(h.metric),
            bytes([h.quality]),
            h.weights,
            _str8(h.weights_label),
            bytes([h.rank]),
            _str8(h.form),
            _varint(h.width),
            _varint(h.height),
            bytes([FLAG_CUDA if h.cuda else 0]),
            bytes([len(h.shape)]),
            *(_varint(int(d)) for d in h.shape),
            _str8(h.device),
            h.recon,
        ]
    )


def pack(header: Header, strings: Sequence[Sequence[bytes]]) -> bytes:
    """Serialize ``header`` and ``compress()["strings"]`` to the file bytes."""
    head = _header_bytes(header)
    parts = [MAGIC, bytes([FORMAT_VERSION]), _varint(len(head)), head]
    parts.append(_varint(len(strings)))
    for group in strings:
        if not isinstance(group, (list, tuple)):
            raise FormatError("each strings entry must be a list of bytes")
        parts.append(_varint(len(group)))
        for s in group:
            if not isinstance(s, (bytes, bytearray)):
                raise FormatError(f"strings must hold bytes, got {type(s).__name__}")
            parts += [_varint(len(s)), bytes(s)]
    body = b"".join(parts)
    return body + zlib.crc32(body).to_bytes(4, "big")


# -- reading ---------------------------------------------------------------
def _parse_header(data: bytes, version: int) -> Header:
    r = ByteReader(data, "header", FormatError)
    arch = r.str8("architecture")
    metric = r.str8("metric")
    quality = r.byte("quality")
    weights = r.take(8, "weights fingerprint")
    label = r.str8("weights label")
    rank = r.byte("rank")
    form = r.str8("update form")
    width = r.varint("width")
    height = r.varint("height")
    flags = r.byte("flags")
    if flags & ~FLAG_CUDA:
        raise FormatError(f"corrupted header: unknown flags {flags:#04x}")
    shape = tuple(r.varint("latent shape") for _ in range(r.byte("latent rank")))
    device, recon = "", b""
    if version >= 2:
        device = r.str8("device")
        recon = r.take(DIGEST_BYTES, "reconstruction check")
    r.end()
    return Header(
        arch=arch,
        metric=metric,
        quality=quality,
        weights=weights,
        weights_label=label,
        rank=rank,
        form=form,
        width=width,
        height=height,
        shape=shape,
        cuda=bool(flags & FLAG_CUDA),
        device=device,
        recon=recon,
        version=version,
    )


def unpack(data: bytes) -> tuple[Header, list[list[bytes]]]:
    """Parse file bytes into ``(header, strings)``; raises :class:`FormatError`."""
    data = bytes(data)
    if not data:
        raise FormatError("file is empty")
    if data[: len(MAGIC)] != MAGIC[: len(data)]:
        raise FormatError("not a compressai-lora file (bad magic bytes)")
    if len(data) < _MIN_SIZE:
        raise FormatError(f"file is truncated ({len(data)} bytes)")
    version = data[len(MAGIC)]
    if version not in READ_VERSIONS:
        raise FormatError(
            f"file has format version {version}, this decoder reads versions "
            f"{', '.join(map(str, READ_VERSIONS))}"
        )
    body, crc = data[:-4], int.from_bytes(data[-4:], "big")
    if zlib.crc32(body) != crc:
        raise FormatError("file is corrupted or truncated (CRC-32 mismatch)")
    r = ByteReader(body, "file", FormatError)
    r.take(len(MAGIC) + 1, "magic and version")
    try:
        header = _parse_header(r.take(r.varint("header length"), "header"), version)
    except FormatError as e:
        raise FormatError(f"corrupted file: {e}") from None
    strings: list[list[bytes]] = []
    for _ in range(r.varint("string group count")):
        group = []
        for _ in range(r.varint("string count")):
            group.append(r.take(r.varint("string length"), "string"))
        strings.append(group)
    r.end()
    return header, strings


def reconstruction_digest(rgb: np.ndarray) -> bytes:
    """First 8 bytes of SHA-256 over the size and pixels of a uint8 image."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3:
        raise ValueError("the reconstruction check needs an HxWxC uint8 image")
    h = hashlib.sha256(f"{rgb.shape}|".encode())
    h.update(np.ascontiguousarray(rgb).tobytes())
    return h.digest()[:DIGEST_BYTES]


def weights_fingerprint(state_dict: Mapping[str, torch.Tensor]) -> bytes:
    """First 8 bytes of SHA-256 over names, dtypes, shapes and raw bytes.

    Computed on the model's ``state_dict()`` after ``update(force=True)``, i.e.
    on exactly what decoding depends on (weights and entropy-coder tables);
    the same weights give the same fingerprint on any device.
    """
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(state_dict[name].shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.digest()[:8]
