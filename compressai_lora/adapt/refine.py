"""Phase 1: latent refinement with SGA under the RD loss, network frozen.

The learning rate follows ``cfg.lr_schedule`` over the phase.

For the autoregressive models the entropy model's context is anchored on the
serial decoder's ``y_hat``: at every checkpoint (every ``EVAL_EVERY`` steps)
an exact serial pass gives the ``y_hat`` the decoder will compute, and the
steps until the next checkpoint take their context from it.  The checkpoint's
hard-rounded loss is then the real coder's rate and distortion (up to the
coder's discretized tables), and the best iterate is chosen by it.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor

from .clock import Deadline, lr_factor, set_lr
from .latents import decoder_context, is_autoregressive, latent_terms
from .objective import crop_to, distortion, diverged, finite, progress, rate_bpp, sane
from .sga import sga_round, temperature

__all__ = ["EVAL_EVERY", "refine_latents"]

EVAL_EVERY = 10


def refine_latents(
    model,
    x: Tensor,
    y0: Tensor,
    z0: Optional[Tensor],
    lmbda: float,
    cfg,
    gen,
    cb,
    offset: tuple[int, int] = (0, 0),
    deadline: Optional[Deadline] = None,
    anchor_context: bool = True,
) -> tuple[Tensor, Optional[Tensor], dict]:
    """SGA refinement of ``y``/``z``; returns the best checkpoint's latents.

    ``x`` holds the image's own pixels; they sit at ``offset`` in the decoder
    output (the rest is padding and costs nothing).  At the ``deadline`` the
    current latents get a last checkpoint and the phase ends.
    ``anchor_context=False`` takes the context from ``round(y)`` instead (the
    first release's objective, kept to measure the difference).
    """
    deadline = deadline or Deadline(None)
    pixels = x.size(-2) * x.size(-1)
    y = y0.detach().clone().requires_grad_(True)
    z = None if z0 is None else z0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([t for t in (y, z) if t is not None], lr=cfg.refine_lr)
    anchored = anchor_context and is_autoregressive(model)
    context: list[Optional[Tensor]] = [None]

    def checkpoint_loss() -> float:
        """Hard-rounded loss, the context re-anchored on the decoder's y_hat."""
        with torch.no_grad():
            if anchored:
                context[0] = decoder_context(model, y.detach(), z.detach())
            return float(loss_fn(torch.round)[0])

    def loss_fn(rnd):
        y_hat, liks = latent_terms(model, y, z, rnd, context=context[0])
        x_hat = crop_to(model.g_s(y_hat), x, offset).clamp(0, 1)  # as decoded
        bpp = rate_bpp(liks, pixels)
        return lmbda * distortion(x_hat, x, cfg.metric) + bpp, bpp, x_hat

    best_loss = checkpoint_loss()
    best = (y0.detach(), None if z0 is None else z0.detach())

    def keep_if_better() -> bool:
        """Checkpoint the current latents; keep them if they beat the best."""
        nonlocal best_loss, best
        hard = checkpoint_loss()
        if not (math.isfinite(hard) and hard < best_loss):
            return False
        best_loss = hard
        best = (y.detach().clone(), None if z is None else z.detach().clone())
        return True

    since, steps = 0, cfg.refine_steps
    stats: dict[str, Any] = {}
    t = -1
    for t in range(steps):
        if deadline.due():
            stats["stopped"] = {"phase": "refine", "step": t, "reason": "budget"}
            if t % EVAL_EVERY:  # the latest latents were not checked yet
                keep_if_better()
            t -= 1
            break
        tau = temperature(t, steps)
        done = max(t / max(steps - 1, 1), deadline.fraction())
        set_lr(opt, cfg.refine_lr * lr_factor(cfg.lr_schedule, done))
        loss, bpp, x_hat = loss_fn(lambda v: sga_round(v, tau, gen))
        if not finite(loss):
            stats["diverged"] = diverged("refine", t, "non-finite loss")
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
        if not sane(y, z):  # diverged: keep the best state so far
            stats["diverged"] = diverged("refine", t, "latents out of range")
            break
        since += 1
        if ((t + 1) % EVAL_EVERY == 0 or t == steps - 1) and keep_if_better():
            since = 0
        if cb:
            cb(progress("refine", t, steps, loss, bpp, x_hat, x, None))
        deadline.tick()
        if cfg.patience and since >= cfg.patience:
            break
    stats.update(refine_loss=best_loss, refine_iters=t + 1)
    return best[0], best[1], stats
