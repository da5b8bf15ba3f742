"""Stochastic Gumbel annealing (Yang, Bamler, Mandt, NeurIPS 2020).

A differentiable stand-in for rounding while the latents are refined: each
value is a Gumbel-softmax mix of its floor and ceiling, with logits that
favour the nearer integer; as the temperature falls the mix becomes hard
rounding.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

__all__ = ["sga_round", "temperature"]

TAU_MAX = 0.5
TAU_MIN = 0.05


def temperature(step: int, steps: int) -> float:
    """Exponential annealing from ``TAU_MAX`` to ``TAU_MIN`` over ``steps``."""
    frac = step / max(steps - 1, 1)
    return TAU_MAX * math.exp(frac * math.log(TAU_MIN / TAU_MAX))


def sga_round(
    x: Tensor, tau: float, generator: Optional[torch.Generator] = None
) -> Tensor:
    """One SGA sample of ``round(x)`` at temperature ``tau``."""
    floor = torch.floor(x)
    eps = 1e-5
    frac = (x - floor).clamp(eps, 1 - eps)
    # logit of choosing floor / ceil: -atanh(distance) / tau
    logits = torch.stack((-torch.atanh(frac), -torch.atanh(1 - frac)), dim=-1) / tau
    u = torch.rand(logits.shape, generator=generator, dtype=x.dtype)
    gumbel = -torch.log(-torch.log(u.clamp(1e-10, 1.0)).to(x.device))
    w = torch.softmax((logits + gumbel) / tau, dim=-1)
    return floor + w[..., 1]
