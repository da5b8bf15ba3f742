"""The base codecs that can be trained: architectures, sizes, hardware."""

from __future__ import annotations

import inspect
import os
import platform
from typing import Optional

import torch
import torch.nn as nn
from compressai.zoo.image import model_architectures as host_architectures

from ...host import zoo_sizes
from ...zoo import model_architectures as lora_architectures
from .errors import TrainError

__all__ = ["base_architectures", "model_size", "build_model", "hardware"]


def base_architectures() -> dict[str, type]:
    """The host's architectures (``compressai.zoo.image``), not our ``-lora``."""
    return {k: v for k, v in host_architectures.items() if k not in lora_architectures}


def model_size(
    arch: str, quality: int, N: Optional[int], M: Optional[int]
) -> tuple[int, Optional[int]]:
    """``(N, M)`` for ``arch``: the zoo's for ``quality`` unless given.

    ``M`` is None for architectures without it (cheng2020: M = N).
    """
    cls = base_architectures()[arch]
    has_m = "M" in inspect.signature(cls.__init__).parameters
    cfg = zoo_sizes().get(arch, {}).get(quality)
    if M is not None and not has_m:
        raise TrainError(f"{arch} has no M (its latents have N channels): drop -M")
    if N is None:
        if cfg is None:
            raise TrainError(f"the zoo has no {arch} at quality {quality}: give -N")
        N = cfg[0]
    if has_m and M is None:
        if cfg is None or len(cfg) < 2:
            raise TrainError(f"the zoo has no {arch} at quality {quality}: give -M")
        M = cfg[1]
    return N, (M if has_m else None)


def build_model(arch: str, N: int, M: Optional[int]) -> nn.Module:
    """A new ``arch`` of size ``N`` (and ``M`` when it has one)."""
    cls = base_architectures()[arch]
    return cls(N, M) if M is not None else cls(N)


def hardware(device: torch.device) -> str:
    """One line naming the GPU, or the CPU and its threads."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if "model name" in ln]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return (
        f"CPU ({cpu}), {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, no GPU"
    )
