"""Latent analysis, rate terms and coding of given latents, per host family.

The host models differ in how ``y`` (and ``z``) are analysed, rounded and
entropy-modelled.  These functions give the adaptation one view of all six:

* :func:`analyse` runs ``g_a`` (and ``h_a``) like the host's ``compress``;
* :func:`latent_terms` returns the ``y_hat`` the decoder would see and the
  likelihoods, with a pluggable rounding (SGA while refining, hard rounding
  for estimates), centred where the real coder centres (``y - mu``, medians);
* :func:`fixed_latents` lets the host's own ``compress`` code given latents,
  so refined latents are coded by exactly the host's code path.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.models import (
    JointAutoregressiveHierarchicalPriors,
    MeanScaleHyperprior,
    ScaleHyperprior,
)
from torch import Tensor

from . import host

__all__ = [
    "has_hyperprior",
    "is_autoregressive",
    "analyse",
    "decoder_context",
    "decoder_y_hat",
    "latent_terms",
    "fixed_latents",
]

Rounding = Callable[[Tensor], Tensor]


def has_hyperprior(model: nn.Module) -> bool:
    return isinstance(model, ScaleHyperprior)


def is_autoregressive(model: nn.Module) -> bool:
    return isinstance(model, JointAutoregressiveHierarchicalPriors)


def analyse(model: nn.Module, x: Tensor) -> tuple[Tensor, Optional[Tensor]]:
    """``(y, z)`` as the host's ``compress`` computes them (``z`` None if absent)."""
    y = model.g_a(x)
    if not has_hyperprior(model):
        return y, None
    if isinstance(model, MeanScaleHyperprior):
        return y, model.h_a(y)
    return y, model.h_a(torch.abs(y))


def _bottleneck(eb: EntropyBottleneck, z: Tensor, rnd: Rounding):
    """Round around the medians (as ``compress`` does) and get likelihoods."""
    perm = (1, 0, 2, 3)
    medians = host.bottleneck_medians(eb).detach().view(1, -1, 1, 1)
    z_hat = rnd(z - medians) + medians  # image-major, so SGA noise is per image
    lik = host.bottleneck_likelihood(eb, z_hat.permute(*perm).reshape(z.size(1), 1, -1))
    if eb.use_likelihood_bound:
        lik = eb.likelihood_lower_bound(lik)
    shape = (z.size(1), z.size(0), z.size(2), z.size(3))
    return z_hat, lik.reshape(shape).permute(*perm)


def _gaussian(gc: GaussianConditional, y_hat: Tensor, scales, means) -> Tensor:
    lik = host.gaussian_likelihood(gc, y_hat, scales, means)
    if gc.use_likelihood_bound:
        lik = gc.likelihood_lower_bound(lik)
    return lik


@torch.no_grad()
def decoder_y_hat(model: nn.Module, y: Tensor, z_hat: Tensor) -> Tensor:
    """The ``y_hat`` the serial decoder of an autoregressive model computes.

    Position by position in raster order, as the host's ``_compress_ar`` and
    ``decompress`` do: the context comes from the already decoded
    ``round(y - mu) + mu`` values, so the result is exactly the decoder's.
    """
    conv = model.context_prediction
    k = conv.weight.size(-1)
    pad = (k - 1) // 2
    params = model.h_s(z_hat)
    height, width = y.shape[-2:]
    y_hat = F.pad(torch.zeros_like(y), (pad, pad, pad, pad))
    weight = conv.weight * conv.mask
    for h in range(height):
        for w in range(width):
            ctx = F.conv2d(y_hat[:, :, h : h + k, w : w + k], weight, conv.bias)
            p = params[:, :, h : h + 1, w : w + 1]
            gp = model.entropy_parameters(torch.cat((p, ctx), dim=1))
            _, means = gp.squeeze(3).squeeze(2).chunk(2, 1)
            y_hat[:, :, h + pad, w + pad] = torch.round(y[:, :, h, w] - means) + means
    return y_hat[:, :, pad : pad + height, pad : pad + width]


def decoder_context(model: nn.Module, y: Tensor, z: Tensor) -> Tensor:
    """:func:`decoder_y_hat` of ``y`` with the hyper-latent ``z`` hard-rounded
    as the coder rounds it (around the medians)."""
    with torch.no_grad():
        z_hat, _ = _bottleneck(model.entropy_bottleneck, z, torch.round)
        return decoder_y_hat(model, y, z_hat)


def latent_terms(
    model: nn.Module,
    y: Tensor,
    z: Optional[Tensor],
    rnd: Rounding,
    context: Optional[Tensor] = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``(y_hat, likelihoods)`` of latents ``y``/``z`` under ``model``.

    ``rnd`` is the rounding (``torch.round`` or an SGA sample).  Mean-shifted
    models round ``y - mu`` and add ``mu`` back, as CompressAI's real coder
    does.  The autoregressive models take their context from ``context``: the
    serial decoder's ``y_hat`` (:func:`decoder_y_hat`) at the current ``y``
    makes the result the real coder's exactly; without it, from ``rnd(y)``
    (the host's training-time approximation).
    """
    if not has_hyperprior(model):
        y_hat, lik_y = _bottleneck(model.entropy_bottleneck, y, rnd)
        return y_hat, {"y": lik_y}
    z_hat, lik_z = _bottleneck(model.entropy_bottleneck, z, rnd)
    params = model.h_s(z_hat)
    gc = model.gaussian_conditional
    if isinstance(model, JointAutoregressiveHierarchicalPriors):
        ctx = model.context_prediction(rnd(y) if context is None else context)
        params = model.entropy_parameters(torch.cat((params, ctx), dim=1))
    if isinstance(model, MeanScaleHyperprior):
        scales, means = params.chunk(2, 1)
        y_hat = rnd(y - means) + means
    else:
        scales, means = params, None
        y_hat = rnd(y)
    return y_hat, {"y": _gaussian(gc, y_hat, scales, means), "z": lik_z}


class _Const(nn.Module):
    def __init__(self, value: Tensor):
        super().__init__()
        self.value = value

    def forward(self, _: Tensor) -> Tensor:
        return self.value


@contextlib.contextmanager
def fixed_latents(model: nn.Module, y: Tensor, z: Optional[Tensor]) -> Iterator:
    """Within the block, the host's ``compress`` codes ``y``/``z`` as given.

    ``g_a`` (and ``h_a``) are swapped for constants and restored afterwards,
    so the host's own entropy-coding path (autoregressive loop included)
    produces the strings.
    """
    saved = {"g_a": model.g_a}
    model.g_a = _Const(y.detach())
    if z is not None:
        saved["h_a"] = model.h_a
        model.h_a = _Const(z.detach())
    try:
        yield
    finally:
        for name, module in saved.items():
            setattr(model, name, module)
