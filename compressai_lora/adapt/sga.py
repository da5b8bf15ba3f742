"""Stochastic Gumbel annealing: a differentiable stand-in for rounding, each
value a Gumbel-softmax mix of its floor and ceiling favouring the nearer; hard
rounding as the temperature falls.  SGA (Yang, Bamler, Mandt, NeurIPS 2020)
with the logits of SGA+ (Perugachi-Diaz et al., NeurIPS 2024): the
sigmoid-scaled logit, whose gradients stay bounded near the integers, in
place of SGA's ``atanh`` (docs/RESULTS.md, "What we tried": better refined
latents in the same steps).
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["sga_round", "temperature"]

#: the temperature anneals from ``TAU_MAX`` to ``TAU_MIN``; ``SCALE``: the
#: sigmoid-scaled logit's (1: probabilities linear in the distance)
TAU_MAX = 1.5
TAU_MIN = 0.15
SCALE = 1.4


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
    # logits of floor / ceil: -log(1 + (d / (1 - d)) ** SCALE) at distance d
    odds = SCALE * torch.logit(frac)
    logits = torch.stack((-F.softplus(odds), -F.softplus(-odds)), dim=-1) / tau
    u = _uniform(logits.shape, x, generator)
    gumbel = -torch.log(-torch.log(u.clamp(1e-10, 1.0)))
    w = torch.softmax((logits + gumbel) / tau, dim=-1)
    return floor + w[..., 1]
