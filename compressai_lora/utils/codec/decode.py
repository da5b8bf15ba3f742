"""``compressai-lora decode``: a compressed file back into an RGB PNG."""

from __future__ import annotations

import argparse

import numpy as np
from compressai.zoo import image_models

from ...layers import UPDATE_FORMS
from ...zoo import image_models as lora_models
from ..images import is_png_name, png_writer
from .files import check_output, read_bytes, refuse_same_file, write_atomic
from .format import Header, reconstruction_digest, unpack
from .format import weights_fingerprint as fingerprint
from .limits import check_pixels
from .messages import CodecError, warn
from .models import build_model, select_device
from .tensors import device_name, reconstruct

__all__ = ["decode", "check_buildable", "verify"]


def check_buildable(args: argparse.Namespace, header: Header) -> None:
    """Fail unless this version can build the model ``header`` names."""
    if header.arch not in image_models:
        raise CodecError(
            f"{args.file} needs architecture {header.arch!r}, unknown here"
        )
    lora = header.arch in lora_models
    if lora != (header.rank > 0) or (lora and header.form not in UPDATE_FORMS):
        raise CodecError(
            f"{args.file} needs {header.arch} adapters of rank {header.rank}, "
            f"form {header.form!r}, which this version cannot build"
        )
    if not header.quality and not args.path:
        raise CodecError(
            f"{args.file} was encoded with checkpoint weights "
            f"{header.weights_label!r}: pass them with -p"
        )


def decode(args: argparse.Namespace) -> None:
    """Decode ``args.file`` into the PNG ``args.output``."""
    refuse_same_file(args.output, [args.file] + ([args.path] if args.path else []))
    check_output(args.output, args.force)
    if not is_png_name(args.output):
        warn(f"{args.output} is written as PNG whatever its extension")
    device = select_device(args.cuda)
    header, strings = unpack(read_bytes(args.file))
    check_pixels(header.width, header.height, args.max_pixels, None, encode=False)
    check_buildable(args, header)
    model, label, _ = build_model(
        header.arch,
        quality=header.quality or None,
        metric=header.metric,
        checkpoint=args.path,
        rank=header.rank or 2,
        form=header.form or "separable",
        device=device,
    )
    got = fingerprint(model.state_dict())
    if got != header.weights:
        raise CodecError(
            f"weights do not match: {args.file} was encoded with "
            f"{header.weights_label!r} (fingerprint {header.weights.hex()}), "
            f"these are {label!r} ({got.hex()})"
        )
    n = getattr(model, "N", None)
    check_pixels(header.width, header.height, args.max_pixels, n, encode=False)
    rgb = reconstruct(model, strings, header.shape, header.width, header.height)
    verify(args, header, rgb, device)
    write_atomic(args.output, png_writer(rgb), args.force)
    print(f"{args.file} -> {args.output}: {header.width}x{header.height}")


def verify(
    args: argparse.Namespace, header: Header, rgb: np.ndarray, device: str
) -> None:
    """Compare the decoded image with the encoder's (format version 2)."""
    if header.version < 2:
        warn(f"{args.file} is a format version 1 file: it has no reconstruction check")
        return
    if args.no_verify or reconstruction_digest(rgb) == header.recon:
        return
    raise CodecError(
        f"{args.file}: the decoded image does not match the encoder's (encoded on "
        f"{header.device}, decoded on {device_name(device)}): the file is corrupted "
        "or this decoder computes differently; --no-verify writes it anyway"
    )
