"""Phase 1: latent refinement with SGA under the RD loss, network frozen.

The learning rate follows ``cfg.lr_schedule`` and the SGA temperature anneals
over ``cfg.refine_anneal`` steps (None: over the phase), then both stay at
their end values: a longer phase continues a shorter one's trajectory, and as
the best checkpoint is kept, more steps never give costlier latents.

For the autoregressive models the entropy model's context is anchored on the
serial decoder's ``y_hat``: at every checkpoint (every ``EVAL_EVERY`` steps)
an exact serial pass gives the ``y_hat`` the decoder will compute, and the
steps until the next checkpoint take their context from it.  The checkpoint's
hard-rounded loss is then the real coder's rate and distortion (up to the
coder's discretized tables), and the best iterate is chosen by it.

A batch of images is refined together (:func:`refine_batch`): the loss is
the sum of the images' losses, so each image's gradient is its own; Adam is
elementwise, every image has its own latents (leaf tensors), its own SGA
generator, its own checkpoints (computed on the image alone), best iterate,
early stop and divergence check.  An image that has stopped leaves the batch.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

from .clock import Deadline, lr_factor, schedule_done, set_lr
from .latents import decoder_context, is_autoregressive, latent_terms
from .objective import (
    batch_loss,
    crop_to,
    distortion,
    diverged,
    finite,
    progress,
    rate_bpp,
    sane,
)
from .sga import sga_round, temperature

__all__ = ["EVAL_EVERY", "refine_batch", "refine_latents"]

EVAL_EVERY = 10

Refined = tuple[Tensor, Optional[Tensor], dict]


class _Latents:
    """One image's latents under refinement, its best checkpoint and stats."""

    def __init__(self, index: int, x: Tensor, y0: Tensor, z0, gen, offset):
        self.index, self.x, self.gen, self.offset = index, x, gen, offset
        self.pixels = x.size(-2) * x.size(-1)
        self.y = y0.detach().clone().requires_grad_(True)
        self.z = None if z0 is None else z0.detach().clone().requires_grad_(True)
        self.best = (y0.detach(), None if z0 is None else z0.detach())
        self.best_loss = math.nan
        self.early: dict[int, tuple] = {}  # step: the best latents then
        self.context: Optional[Tensor] = None
        self.since = 0
        self.iters: Optional[int] = None  # steps done, once it has stopped
        self.stats: dict[str, Any] = {}

    def leaves(self) -> list[Tensor]:
        return [t for t in (self.y, self.z) if t is not None]


def _cat(tensors: list) -> Optional[Tensor]:
    return None if tensors[0] is None else torch.cat(tensors)


def refine_batch(
    model,
    images: Sequence[Tensor],
    y0: Sequence[Tensor],
    z0: Sequence[Optional[Tensor]],
    lmbda: float,
    cfg,
    gens: Sequence[torch.Generator],
    cb: Optional[Callable] = None,
    offsets: Optional[Sequence[tuple[int, int]]] = None,
    deadline: Optional[Deadline] = None,
    anchor_context: bool = True,
    early_steps: Sequence[int] = (),
) -> list[Refined]:
    """SGA refinement of a batch; per image, the best checkpoint's latents.

    ``images[n]`` holds image ``n``'s own pixels; they sit at ``offsets[n]``
    in its decoder output (the rest is padding and costs nothing).  ``y0``,
    ``z0`` are its latents (1 image each, all of one shape) and ``gens[n]``
    its SGA generator.  At the ``deadline`` the current latents get a last
    checkpoint and the phase ends.  ``anchor_context=False`` takes the
    context from ``round(y)`` instead (the first release's objective, kept to
    measure the difference).  With several images ``cb`` gets ``"image"``.
    ``stats["early"]`` maps each of ``early_steps`` the phase reached to the
    best ``(y, z)`` after that many steps (latest first; the same as the
    final ones where later steps found nothing better).
    """
    deadline = deadline or Deadline(None)
    offsets = offsets or [(0, 0)] * len(images)
    states = [_Latents(n, *a) for n, a in enumerate(zip(images, y0, z0, gens, offsets))]
    opt = torch.optim.Adam([t for s in states for t in s.leaves()], lr=cfg.refine_lr)
    anchored = anchor_context and is_autoregressive(model)
    many = len(states) > 1

    def losses(group: list[_Latents], rnd) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Each image's (loss, bpp, x_hat) from one batched pass."""
        y, z = _cat([s.y for s in group]), _cat([s.z for s in group])
        ctx = _cat([s.context for s in group]) if anchored else None
        y_hat, liks = latent_terms(model, y, z, rnd, context=ctx)
        out = model.g_s(y_hat)
        terms = []
        for n, s in enumerate(group):
            x_hat = crop_to(out[n : n + 1], s.x, s.offset).clamp(0, 1)  # as decoded
            bpp = rate_bpp({k: v[n : n + 1] for k, v in liks.items()}, s.pixels)
            loss = lmbda * distortion(x_hat, s.x, cfg.metric) + bpp
            terms.append((loss, bpp, x_hat))
        return terms

    def checkpoint_loss(s: _Latents) -> float:
        """``s`` alone, hard-rounded, its context re-anchored on the decoder's
        y_hat."""
        with torch.no_grad():
            if anchored:
                s.context = decoder_context(model, s.y.detach(), s.z.detach())
            return float(losses([s], torch.round)[0][0])

    def keep_if_better(s: _Latents) -> bool:
        """Checkpoint ``s``; keep its latents if they beat its best."""
        hard = checkpoint_loss(s)
        if not (math.isfinite(hard) and hard < s.best_loss):
            return False
        s.best_loss = hard
        s.best = (s.y.detach().clone(), None if s.z is None else s.z.detach().clone())
        return True

    for s in states:
        s.best_loss = checkpoint_loss(s)  # the starting point
    steps, t = cfg.refine_steps, -1
    for t in range(steps):
        active = [s for s in states if s.iters is None]
        if not active:
            break
        if deadline.due():
            for s in active:
                s.stats["stopped"] = {"phase": "refine", "step": t, "reason": "budget"}
                if t % EVAL_EVERY:  # the latest latents were not checked yet
                    keep_if_better(s)
                s.iters = t
            break
        span = cfg.refine_anneal or steps  # the temperature's annealing
        tau = temperature(min(t, span - 1), span)
        done = schedule_done(t, steps, cfg.refine_anneal, deadline)
        set_lr(opt, cfg.refine_lr * lr_factor(cfg.lr_schedule, done))
        terms = losses(active, lambda v: sga_round(v, tau, [s.gen for s in active]))
        live = []
        for s, term in zip(active, terms):
            if finite(term[0]):
                live.append((s, term))
            else:
                s.stats["diverged"] = diverged("refine", t, "non-finite loss")
                s.iters = t + 1
        if live:
            opt.zero_grad()
            batch_loss([term[0] for _, term in live]).backward()
            opt.step()
        for s, (loss, bpp, x_hat) in live:
            if not sane(s.y, s.z):  # diverged: keep the best state so far
                s.stats["diverged"] = diverged("refine", t, "latents out of range")
                s.iters = t + 1
                continue
            s.since += 1
            if ((t + 1) % EVAL_EVERY == 0 or t == steps - 1) and keep_if_better(s):
                s.since = 0
            if t + 1 in early_steps:
                s.early[t + 1] = s.best
            if cb:
                info = progress("refine", t, steps, loss, bpp, x_hat, s.x, None)
                cb({**info, "image": s.index} if many else info)
        deadline.tick()
        for s, _ in live:
            if s.iters is None and cfg.patience and s.since >= cfg.patience:
                s.iters = t + 1
    results = []
    for s in states:
        iters = t + 1 if s.iters is None else s.iters
        s.stats.update(refine_loss=s.best_loss, refine_iters=iters)
        if s.early:
            s.stats["early"] = dict(sorted(s.early.items(), reverse=True))
        results.append((s.best[0], s.best[1], s.stats))
    return results


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
) -> Refined:
    """SGA refinement of ``y``/``z`` of one image (see :func:`refine_batch`)."""
    return refine_batch(
        model, [x], [y0], [z0], lmbda, cfg, [gen], cb, [offset], deadline,
        anchor_context,
    )[0]  # fmt: skip
