"""How the synthesis transform sees the latents while training.

``noise`` is CompressAI's recipe: ``g_s`` decodes ``y + U(-1/2, 1/2)``. ``ste`` feeds
``g_s`` what the real decoder sees, ``round(y - mu) + mu`` (``mu``: the Gaussian
conditional's means, 0 without them, or the entropy bottleneck's medians for the
factorized prior), with a straight-through gradient; the likelihoods (the rate) are
still those of the noisy latents.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
import torch.nn as nn

from ... import host

__all__ = ["QUANTIZERS", "decoder_quantizer"]

QUANTIZERS = ("noise", "ste")


def _ste(y: torch.Tensor, mu: Optional[torch.Tensor]) -> torch.Tensor:
    """``round(y - mu) + mu`` forward, the identity backward."""
    q = torch.round(y) if mu is None else torch.round(y - mu) + mu
    return y + (q - y).detach()


@contextlib.contextmanager
def decoder_quantizer(net: nn.Module, kind: str) -> Iterator[None]:
    """Within the block, ``net``'s forward feeds ``g_s`` as ``kind`` says.

    The latents and their means are taken where the host's forward hands them to its
    entropy model (``gaussian_conditional``, else ``entropy_bottleneck``), so every
    zoo family is covered without copying its ``forward``.
    """
    if kind not in QUANTIZERS:
        raise ValueError(f"unknown quantizer {kind!r}: one of {QUANTIZERS}")
    if kind == "noise" or not net.training:
        yield
        return
    gaussian = getattr(net, "gaussian_conditional", None)
    seen: dict[str, Optional[torch.Tensor]] = {}

    def from_gaussian(module, args, kwargs):
        y = args[0]
        means = kwargs.get("means", args[2] if len(args) > 2 else None)
        seen["y"], seen["mu"] = y, means

    def from_bottleneck(module, args, kwargs):
        y = args[0]
        seen["y"] = y
        seen["mu"] = host.bottleneck_medians(module).detach()

    def into_g_s(module, args):
        if "y" not in seen:
            raise RuntimeError("ste: g_s ran before the entropy model saw y")
        y_hat = _ste(seen.pop("y"), seen.pop("mu"))
        return (y_hat,) + tuple(args[1:])

    if gaussian is not None:
        source = gaussian.register_forward_pre_hook(from_gaussian, with_kwargs=True)
    else:
        source = net.entropy_bottleneck.register_forward_pre_hook(
            from_bottleneck, with_kwargs=True
        )
    sink = net.g_s.register_forward_pre_hook(into_g_s)
    try:
        yield
    finally:
        source.remove()
        sink.remove()
