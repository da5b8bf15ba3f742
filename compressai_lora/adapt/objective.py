"""Loss and rate terms of the adaptation, and the checks of its state."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from pytorch_msssim import ms_ssim, ssim
from torch import Tensor

__all__ = [
    "LATENT_LIMIT",
    "coded_distortion",
    "crop_to",
    "distortion",
    "progress",
    "rate_bpp",
    "sane",
]

#: refined latents beyond this magnitude are treated as diverged (real latents
#: stay within a few hundred; the range coder's escape codes grow with |value|)
LATENT_LIMIT = 2.0**15


def distortion(x_hat: Tensor, x: Tensor, metric: str) -> Tensor:
    """Differentiable distortion term: 255^2 * MSE, or 1 - MS-SSIM."""
    if metric == "mse":
        return F.mse_loss(x_hat, x) * 255**2
    side = min(x.shape[-2:])
    if side > 160:
        return 1 - ms_ssim(x_hat, x, data_range=1.0)
    win = min(11, side - (1 - side % 2))  # largest odd window that fits
    if win < 3:
        return F.mse_loss(x_hat, x)  # too small for any SSIM window
    return 1 - ssim(x_hat, x, data_range=1.0, win_size=win)


def crop_to(t: Tensor, x: Tensor, offset: tuple[int, int] = (0, 0)) -> Tensor:
    """The part of decoder output ``t`` that covers image ``x`` (at ``offset``)."""
    top, left = offset
    return t[..., top : top + x.size(-2), left : left + x.size(-1)]


def coded_distortion(
    x_hat: Tensor, x: Tensor, metric: str, offset: tuple[int, int] = (0, 0)
) -> float:
    """Distortion of 8-bit rounded images, as eval_model measures it."""
    a = (x * 255).clamp(0, 255).round() / 255
    b = (crop_to(x_hat, x, offset) * 255).clamp(0, 255).round() / 255
    return float(distortion(b, a, metric))


def rate_bpp(likelihoods: dict[str, Tensor], pixels: int) -> Tensor:
    return sum(-torch.log2(v).sum() for v in likelihoods.values()) / pixels


def sane(*tensors: Optional[Tensor], limit: float = LATENT_LIMIT) -> bool:
    """Finite and within ``limit``: safe to code."""
    return all(
        t is None or bool(torch.isfinite(t).all() and t.abs().max() <= limit)
        for t in tensors
    )


def progress(phase, t, steps, loss, bpp, x_hat, x, gates) -> dict[str, Any]:
    """The callback's view of one step."""
    mse = F.mse_loss(x_hat.detach().clamp(0, 1), x).item()
    return {
        "phase": phase,
        "step": t + 1,
        "steps": steps,
        "loss": loss.item(),
        "bpp": bpp.item(),
        "psnr": 10 * math.log10(1 / max(mse, 1e-10)),
        "gates": gates,
    }
