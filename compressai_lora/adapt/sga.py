"""Stochastic Gumbel annealing (Yang, Bamler, Mandt, NeurIPS 2020): a
differentiable stand-in for rounding, each value a Gumbel-softmax mix of its
floor and ceiling favouring the nearer; hard rounding as the temperature falls.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import torch
from torch import Tensor

__all__ = ["sga_round", "temperature"]

TAU_MAX = 0.5
TAU_MIN = 0.05


def temperature(done: float) -> float:
    """Exponential annealing from ``TAU_MAX`` to ``TAU_MIN`` as ``done`` goes
    from 0 to 1."""
    return TAU_MAX * math.exp(min(done, 1.0) * math.log(TAU_MIN / TAU_MAX))


Generators = Union[None, torch.Generator, Sequence[torch.Generator]]


def _uniform(shape: torch.Size, x: Tensor, generator: Generators) -> Tensor:
    """Uniform noise; a sequence of generators draws image by image (dim 0)."""
    if generator is None or isinstance(generator, torch.Generator):
        device = x.device if generator is None else generator.device
        u = torch.rand(shape, generator=generator, dtype=x.dtype, device=device)
        return u.to(x.device)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for {shape[0]} images")
    return torch.cat([_uniform((1, *shape[1:]), x, g) for g in generator])


def sga_round(x: Tensor, tau: float, generator: Generators = None) -> Tensor:
    """One SGA sample of ``round(x)`` at temperature ``tau``.

    ``generator`` draws the noise (None: torch's global RNG); a sequence of
    generators, one per image of ``x`` (dim 0), gives each image the noise it
    gets alone.
    """
    floor = torch.floor(x)
    eps = 1e-5
    frac = (x - floor).clamp(eps, 1 - eps)
    # logit of choosing floor / ceil: -atanh(distance) / tau
    logits = torch.stack((-torch.atanh(frac), -torch.atanh(1 - frac)), dim=-1) / tau
    u = _uniform(logits.shape, x, generator)
    gumbel = -torch.log(-torch.log(u.clamp(1e-10, 1.0)))
    w = torch.softmax((logits + gumbel) / tau, dim=-1)
    return floor + w[..., 1]
