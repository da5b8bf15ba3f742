"""``compressai-lora encode``: an image into a compressed file."""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import nullcontext
from typing import Any, Callable, Optional

import numpy as np
import torch

from ...adapt.config import AdaptConfig
from ...lambdas import resolve_lmbda
from ...zoo import image_models as lora_models
from ..adapt_args import adapt_config_from_args, adaptation_flags_given
from ..images import png_writer, read_image
from .files import check_output, refuse_same_file, write_atomic
from .format import Header, pack, reconstruction_digest
from .format import weights_fingerprint as fingerprint
from .limits import check_pixels
from .messages import CodecError, nbytes, one_line, warn
from .models import DEFAULT_QUALITY, build_model, select_device
from .tensors import device_name, padding, psnr, reconstruct, to_tensor, to_uint8

__all__ = ["encode"]


def _check_outputs(args: argparse.Namespace) -> None:
    refuse_same_file(args.output, [args.image])
    check_output(args.output, args.force)
    if args.recon:
        if os.path.abspath(args.recon) == os.path.abspath(args.output):
            raise CodecError("--recon and -o name the same file")
        refuse_same_file(args.recon, [args.image, args.output])
        check_output(args.recon, args.force)


def _read(path: str, max_pixels: Optional[int]) -> np.ndarray:
    rgb = read_image(path, warn)
    height, width = rgb.shape[:2]
    if width > 2**20 or height > 2**20:
        raise CodecError(f"image {width}x{height} is too large (max side 2**20)")
    check_pixels(width, height, max_pixels, None, encode=True)
    return rgb


def _progress(cfg: AdaptConfig, verbose: bool) -> tuple[Optional[Callable], Any]:
    """A tqdm bar driven by the adaptation callback (None when not verbose)."""
    if not verbose or not cfg.enabled:
        return None, None
    from tqdm import tqdm

    starts = sum(cfg.early_adapt_steps(step) for step in cfg.early_steps())
    total = cfg.refine_steps + cfg.adapt_steps + starts
    bar = tqdm(total=total, file=sys.stderr, unit="step")

    def callback(info: dict[str, Any]) -> None:
        bar.update(1)
        if "loss" in info:
            bar.set_postfix_str(f"{info.get('phase', '')} loss {info['loss']:.4g}")

    return callback, bar


def _compress(model, rgb: np.ndarray, device: str, lora: bool, bar) -> tuple:
    """``(strings, shape, reconstruction, seconds)`` of one ``compress()``."""
    height, width = rgb.shape[:2]
    x = to_tensor(rgb, device)
    pad = model.input_padding(padding(width, height)) if lora else nullcontext()
    start = time.perf_counter()
    try:
        with torch.no_grad(), pad:
            out = model.compress(x)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    del x
    strings = [list(group) for group in out["strings"]]
    shape = tuple(int(d) for d in out["shape"])
    # the decoder checks its output against the image decoded here: the one
    # the adaptation decoded from these strings, or a decode of them now
    x_hat = getattr(model, "last_reconstruction", None) if lora else None
    if x_hat is not None:
        recon = to_uint8(x_hat, width, height)
        model.last_reconstruction = None
    else:
        recon = reconstruct(model, strings, shape, width, height)
    return strings, shape, recon, seconds


def _summary(args, model, lora: bool, rgb, recon, data, strings, seconds) -> str:
    height, width = rgb.shape[:2]
    parts = [
        f"{args.image} -> {args.output}: {width}x{height}, {nbytes(len(data))}, "
        f"{len(data) * 8 / (width * height):.4f} bpp"
    ]
    if lora:
        parts.append(f"update {nbytes(len(strings[-1][0]))}")
        stats = getattr(model, "last_adaptation", None) or {}
        if stats.get("choice") == "disabled":
            parts.append("adaptation off")
        elif "choice" in stats:
            parts.append(f"sent {stats['choice']}")
    if args.recon:
        parts.append(f"PSNR {psnr(rgb, recon):.2f} dB (recon {args.recon})")
    parts.append(f"{seconds:.2f} s")
    return ", ".join(parts)


def encode(args: argparse.Namespace) -> None:
    """Compress ``args.image`` into ``args.output`` (and ``--recon``)."""
    _check_outputs(args)
    device = select_device(args.cuda)
    rgb = _read(args.image, args.max_pixels)
    height, width = rgb.shape[:2]

    lora = args.architecture in lora_models
    quality = None if args.path else (args.quality or DEFAULT_QUALITY)
    metric = args.metric or "mse"
    try:
        cfg = adapt_config_from_args(args, metric=metric)
    except ValueError as e:
        raise CodecError(one_line(e)) from None
    model, label, meta = build_model(
        args.architecture,
        quality=quality,
        metric=metric,
        checkpoint=args.path,
        rank=cfg.rank,
        form=cfg.form,
        device=device,
        progress=args.verbose,
    )
    if args.path and args.metric is None and meta.get("metric") in ("mse", "ms-ssim"):
        metric = meta["metric"]
    adapting = lora and cfg.enabled
    check_pixels(width, height, args.max_pixels, getattr(model, "N", None), adapting)
    bar = None
    if lora:
        lmbda = resolve_lmbda(args.lmbda, meta=meta, quality=quality, metric=metric)
        if lmbda is None and cfg.enabled:
            raise CodecError(
                f"no lambda for checkpoint {args.path}: pass --lmbda (or --no-adapt)"
            )
        callback, bar = _progress(cfg, args.verbose)
        model.adapt_config = cfg.replace(lmbda=lmbda, metric=metric, callback=callback)
        if model.default_lmbda is None:
            model.default_lmbda = lmbda
    elif adaptation_flags_given(args):
        warn(f"{args.architecture} has no adapters: adaptation flags are ignored")

    weights = fingerprint(model.state_dict())  # what the decoder must load
    strings, shape, recon, seconds = _compress(model, rgb, device, lora, bar)
    header = Header(
        arch=args.architecture,
        metric=metric,
        quality=quality or 0,
        weights=weights,
        weights_label=label,
        rank=model.lora_rank if lora else 0,
        form=model.adapt_config.form if lora else "",
        width=width,
        height=height,
        shape=shape,
        cuda=device == "cuda",
        device=device_name(device),
        recon=reconstruction_digest(recon),
    )
    data = pack(header, strings)
    if args.recon:
        write_atomic(args.recon, png_writer(recon), args.force)
    write_atomic(args.output, lambda f: f.write(data), args.force)
    print(_summary(args, model, lora, rgb, recon, data, strings, seconds))
