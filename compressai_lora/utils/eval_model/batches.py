"""Batches of images with the same padded size, and their inference.

With ``--batch-size B`` a ``-lora`` model adapts up to B images together
(:class:`~compressai_lora.adapt.AdaptConfig` ``batch_size``): one
``compress()`` of the batch, then, as the host's ``inference`` does per
image, each image's own strings decoded alone, its metrics and its bpp.
Images are grouped by the size the host pads them to
(``compute_padding(h, w, min_div=2**6)``), in the order they come; each
image's padding is its own (``model.input_padding``), so only its pixels are
optimized and costed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from compressai.ops import compute_padding
from PIL import Image
from torch import Tensor

from ... import host
from ...strings import image_strings
from .images import compute_metrics
from .results import adaptation_results

__all__ = ["batches", "infer_batch", "padded_size"]


def padded_size(height: int, width: int) -> tuple[int, int]:
    """The size the host's ``inference`` pads an image of this size to."""
    (left, right, top, bottom), _ = compute_padding(
        height, width, min_div=host.PAD_MULTIPLE
    )
    return height + top + bottom, width + left + right


def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        width, height = img.size
    return height, width


def batches(
    images: Sequence[tuple[int, Path]],
    batch_size: int,
    size_of: Callable[[Path], tuple[int, int]] = _image_size,
) -> list[list[tuple[int, Path]]]:
    """``images`` in groups of at most ``batch_size`` with the same padded size.

    Each group is emitted as soon as it is full, the rest in the order of
    their first image; the same images give the same groups every time.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if batch_size == 1:
        return [[item] for item in images]
    out: list[list[tuple[int, Path]]] = []
    open_groups: dict[tuple[int, int], list[tuple[int, Path]]] = {}
    for item in images:
        key = padded_size(*size_of(item[1]))
        group = open_groups.setdefault(key, [])
        group.append(item)
        if len(group) == batch_size:
            out.append(open_groups.pop(key))
    out.extend(open_groups.values())  # dicts keep the order of first insertion
    return out


@torch.no_grad()
def infer_batch(
    model: torch.nn.Module, xs: Sequence[Tensor], half: bool = False
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The host's ``inference`` of each image of ``xs`` (3xHxW each, same
    padded size), with the images adapted together in one ``compress()``.

    Each image's ``bpp`` counts its own strings and its metrics come from
    decoding them alone; ``half`` runs in half precision, as the host's
    ``--half``.  The batch's encoding and adaptation times are
    shared equally between its images; decoding is timed per image.

    Returns:
        ``[(results, adaptation statistics)]``, one per image.
    """
    pads = [compute_padding(*x.shape[-2:], min_div=host.PAD_MULTIPLE) for x in xs]
    sizes = {
        (x.size(-2) + p[2] + p[3], x.size(-1) + p[0] + p[1])
        for x, (p, _) in zip(xs, pads)
    }
    if len(sizes) != 1:
        raise ValueError(f"a batch needs one padded size, got {sorted(sizes)}")
    batch = torch.cat(
        [
            F.pad(x.unsqueeze(0), p, mode="constant", value=0)
            for x, (p, _) in zip(xs, pads)
        ]
    )
    if half:
        model, batch, xs = model.half(), batch.half(), [x.half() for x in xs]
    with model.input_padding([p for p, _ in pads]):
        start = time.time()
        out_enc = model.compress(batch)
        enc_time = time.time() - start
    stats_of = list(model.last_adaptations)
    strings = image_strings(out_enc["strings"])
    n = len(xs)
    results = []
    for x, (_, unpad), own, stats in zip(xs, pads, strings, stats_of):
        start = time.time()
        out_dec = model.decompress(own, out_enc["shape"])
        dec_time = time.time() - start
        x_hat = F.pad(out_dec["x_hat"], unpad)
        metrics = compute_metrics(x.unsqueeze(0), x_hat, 255)
        num_pixels = x.size(-2) * x.size(-1)
        rv: dict[str, Any] = {
            "psnr-rgb": metrics["psnr-rgb"],
            "ms-ssim-rgb": metrics["ms-ssim-rgb"],
            "bpp": sum(len(s[0]) for s in own) * 8.0 / num_pixels,
            "encoding_time": enc_time / n,
            "decoding_time": dec_time,
        }
        rv.update(adaptation_results(stats, num_pixels))
        if "adaptation_time" in rv:
            rv["adaptation_time"] /= n
        results.append((rv, dict(stats)))
    return results
