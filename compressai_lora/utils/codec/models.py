"""The codec's models: the zoo's pretrained weights or a checkpoint's."""

from __future__ import annotations

import io
import os
from contextlib import nullcontext, redirect_stderr
from typing import Optional

import torch
from compressai.zoo import image_models
from compressai.zoo.image import model_architectures

from ...checkpoint import CheckpointError, load_state_dict_and_meta
from ...models import LoRAModelMixin
from .messages import CodecError, one_line

__all__ = [
    "DEFAULT_ARCH",
    "DEFAULT_QUALITY",
    "architectures",
    "build_model",
    "select_device",
]

DEFAULT_ARCH = "cheng2020-attn-lora"
DEFAULT_QUALITY = 3


def architectures() -> list[str]:
    """Image architectures of the zoo (ours and the host's, without VBR)."""
    return sorted(n for n in image_models if not n.endswith("-vbr"))


def select_device(cuda: bool) -> str:
    """``"cuda"`` or ``"cpu"``; CodecError if CUDA is asked for but missing."""
    if cuda and not torch.cuda.is_available():
        raise CodecError("--cuda given but no CUDA device is available")
    return "cuda" if cuda else "cpu"


def _load(checkpoint: str) -> tuple[dict, dict]:
    """``(state_dict, meta)``; a CheckpointError becomes a CodecError."""
    try:
        return load_state_dict_and_meta(checkpoint)
    except CheckpointError as e:
        raise CodecError(str(e)) from None


def _from_checkpoint(arch: str, checkpoint: str) -> tuple[torch.nn.Module, dict]:
    cls = model_architectures.get(arch, model_architectures.get(arch.replace("-", "_")))
    if cls is None:
        raise CodecError(f"architecture {arch} cannot load checkpoints")
    state_dict, meta = _load(checkpoint)
    try:
        return cls.from_state_dict(state_dict), meta
    except Exception as e:
        raise CodecError(
            f"checkpoint {checkpoint} does not fit {arch}: {one_line(e, 200)}"
        ) from None


def _from_zoo(
    arch: str, quality: Optional[int], metric: str, progress: bool
) -> torch.nn.Module:
    if arch not in image_models:
        raise CodecError(f"unknown architecture {arch}")
    try:
        # torch.hub writes "Downloading: ..." to stderr even without progress
        quiet = nullcontext() if progress else redirect_stderr(io.StringIO())
        with quiet:
            return image_models[arch](
                quality, metric=metric, pretrained=True, progress=progress
            )
    except ValueError as e:
        raise CodecError(one_line(e)) from None
    except Exception as e:
        raise CodecError(
            f"cannot load pretrained {arch} weights (quality {quality}, "
            f"{metric}): {one_line(e, 150)}; pass a checkpoint with -p"
        ) from None


def build_model(
    arch: str,
    *,
    quality: Optional[int],
    metric: str,
    checkpoint: Optional[str],
    rank: int,
    form: str,
    device: str,
    progress: bool = False,
) -> tuple[torch.nn.Module, str, dict]:
    """``(model, weights label, checkpoint meta)``, updated and in eval mode.

    The weights are the checkpoint's if given, else the zoo's pretrained ones
    for ``quality`` and ``metric``; ``-lora`` models get ``rank`` and ``form``.
    """
    meta: dict = {}
    if checkpoint:
        net, meta = _from_checkpoint(arch, checkpoint)
        label = os.path.basename(checkpoint)
    else:
        net = _from_zoo(arch, quality, metric, progress)
        label = f"q{quality}-{metric}"
    if isinstance(net, LoRAModelMixin):
        net.adapt_config = net.adapt_config.replace(rank=rank, form=form)
    net.update(force=True)
    return net.eval().to(device), label, meta
