"""Phase 1: latent refinement with SGA under the RD loss, network frozen.

The learning rate and the SGA temperature anneal over ``refine_anneal`` steps
(None: over the phase), then stay at their end values: a longer phase
continues a shorter one's trajectory, and as the best checkpoint is kept,
more steps never give costlier latents.

For the autoregressive models the entropy model's context is anchored on the
serial decoder's ``y_hat``, recomputed exactly at every checkpoint: the
checkpoint's hard-rounded loss is then the real coder's cost (up to its
discretized tables), and the best iterate is chosen by it.  Each image of a
batch has its own latents, SGA generator, checkpoints and best iterate.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from ..latents import decoder_context, is_autoregressive, latent_terms
from .candidates import Target
from .loop import EVAL_EVERY, Deadline, ImageState, lr_factor, schedule_done, set_lr
from .objective import rate_bpp, sane
from .sga import sga_round, temperature

__all__ = ["Latents", "Refinement"]


class Latents(ImageState):
    """One image's latents under refinement and its best checkpoint."""

    def __init__(self, index: int, target: Target, y0: Tensor, z0, seed: int):
        super().__init__(index)
        self.target = target
        self.gen = torch.Generator(device=y0.device).manual_seed(seed)
        self.y = y0.detach().clone().requires_grad_(True)
        self.z = None if z0 is None else z0.detach().clone().requires_grad_(True)
        self.best = (y0.detach(), None if z0 is None else z0.detach())
        self.best_loss = math.nan
        self.context: Optional[Tensor] = None  # the decoder's y_hat (anchored)

    def leaves(self) -> list[Tensor]:
        return [t for t in (self.y, self.z) if t is not None]

    def bad(self) -> Optional[str]:
        return None if sane(self.y, self.z) else "latents out of range"


def _cat(tensors: list) -> Optional[Tensor]:
    return None if tensors[0] is None else torch.cat(tensors)


class Refinement:
    """SGA refinement of a batch of images' latents, from their ``y0``, ``z0``
    (one image each, one shape)."""

    name = "refine"

    def __init__(self, model, targets: Sequence[Target], y0, z0, cfg):
        self.model, self.steps = model, cfg.refine_steps
        self.tuning = cfg.tuning
        self.states = [
            Latents(n, t, y, z, cfg.seed)
            for n, (t, y, z) in enumerate(zip(targets, y0, z0))
        ]
        leaves = [t for s in self.states for t in s.leaves()]
        self.opt = torch.optim.Adam(leaves, lr=self.tuning.refine_lr)
        self.anchored = is_autoregressive(model)
        self.tau = 0.0
        for s in self.states:
            s.best_loss = self.hard_loss(s)  # the starting point

    def losses(self, group: list[Latents], rnd=None) -> list[tuple]:
        """Each image's (loss, bpp, x_hat) from one batched pass; ``rnd``
        (None: an SGA sample at the current temperature) rounds."""
        if rnd is None:
            tau, gens = self.tau, [s.gen for s in group]
            rnd = lambda v: sga_round(v, tau, gens)  # noqa: E731
        y, z = _cat([s.y for s in group]), _cat([s.z for s in group])
        ctx = _cat([s.context for s in group]) if self.anchored else None
        y_hat, liks = latent_terms(self.model, y, z, rnd, context=ctx)
        out = self.model.g_s(y_hat)
        terms = []
        for n, s in enumerate(group):
            own = {k: v[n : n + 1] for k, v in liks.items()}
            terms.append(s.target.loss(out[n : n + 1], rate_bpp(own, s.target.pixels)))
        return terms

    def hard_loss(self, s: Latents) -> float:
        """``s`` alone, hard-rounded, its context re-anchored on the decoder's
        ``y_hat``."""
        with torch.no_grad():
            if self.anchored:
                s.context = decoder_context(self.model, s.y.detach(), s.z.detach())
            return float(self.losses([s], torch.round)[0][0])

    # -- what run_phase asks ------------------------------------------------
    def prepare(self, t: int, deadline: Deadline) -> None:
        tn = self.tuning
        done = schedule_done(t, self.steps, tn.refine_anneal, deadline)
        self.tau = temperature(done)
        set_lr(self.opt, tn.refine_lr * lr_factor(tn.lr_schedule, done))

    def checkpoint(self, s: Latents) -> None:
        """Keep ``s``'s latents if their hard-rounded loss beats its best."""
        hard = self.hard_loss(s)
        if math.isfinite(hard) and hard < s.best_loss:
            s.best_loss = hard
            s.best = (
                s.y.detach().clone(),
                None if s.z is None else s.z.detach().clone(),
            )

    def finish(self, s: Latents, t: int) -> None:
        if (t - s.start) % EVAL_EVERY:  # the latest latents were not checked yet
            self.checkpoint(s)
