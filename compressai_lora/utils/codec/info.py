"""``compressai-lora info``: the header and sizes of a compressed file."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .files import read_bytes
from .format import unpack
from .messages import nbytes
from .tensors import padded_size

__all__ = ["describe", "info"]


def describe(path: str, data: bytes) -> dict[str, Any]:
    """The header and sizes of a compressed file, as a JSON-able dict."""
    header, strings = unpack(data)
    lora = header.rank > 0
    latent = strings[:-1] if lora else strings
    string_bytes = sum(len(s) for group in strings for s in group)
    pixels = header.width * header.height
    ph, pw, _, _ = padded_size(header.width, header.height)
    return {
        "file": path,
        "bytes": len(data),
        "format_version": header.version,
        "architecture": header.arch,
        "weights": header.weights_label,
        "quality": header.quality or None,
        "metric": header.metric,
        "fingerprint": header.weights.hex(),
        "rank": header.rank or None,
        "form": header.form or None,
        "width": header.width,
        "height": header.height,
        "padded": [pw, ph],
        "latent_shape": list(header.shape),
        "device": "cuda" if header.cuda else "cpu",
        "device_name": header.device or None,
        "reconstruction_check": header.recon.hex() or None,
        "latent_bytes": [sum(len(s) for s in group) for group in latent],
        "update_bytes": len(strings[-1][0]) if lora and strings[-1] else None,
        "bpp": len(data) * 8 / pixels,
        "bpp_strings": string_bytes * 8 / pixels,
    }


def _rows(d: dict[str, Any]) -> list[tuple[str, str]]:
    """The lines of the text output, as (key, value)."""
    if d["quality"]:
        weights = f"zoo, quality {d['quality']}, {d['metric']}"
    else:
        weights = f"checkpoint {d['weights']!r}, {d['metric']}"
    if d["rank"]:
        update = d["update_bytes"]
        adapters = f"rank {d['rank']}, form {d['form']}; update {nbytes(update)}"
        adapters += " (none sent)" if update == 0 or update == 1 else ""
    else:
        adapters = "none (base architecture)"
    return [
        ("file", f"{d['file']} ({d['bytes']} bytes, format version "
                 f"{d['format_version']})"),
        ("architecture", d["architecture"]),
        ("weights", f"{weights} (fingerprint {d['fingerprint']})"),
        ("adapters", adapters),
        ("image", f"{d['width']}x{d['height']} (coded as {d['padded'][0]}x"
                  f"{d['padded'][1]}), encoded on "
                  f"{d['device_name'] or d['device']}"),
        ("check", f"reconstruction {d['reconstruction_check']}"
                  if d["reconstruction_check"] else "none (format version 1)"),
        ("latents", f"shape {'x'.join(map(str, d['latent_shape']))}, "
                    f"strings {d['latent_bytes']} bytes"),
        ("bpp", f"{d['bpp']:.4f} (file), {d['bpp_strings']:.4f} (strings)"),
    ]  # fmt: skip


def info(args: argparse.Namespace) -> None:
    """Print what :func:`describe` finds, as text or (``--json``) JSON."""
    d = describe(args.file, read_bytes(args.file))
    if args.json:
        print(json.dumps(d, indent=2))
        return
    for key, value in _rows(d):
        print(f"{key + ':':14}{value}")
