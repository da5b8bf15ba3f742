"""Phase 1: latent refinement with SGA under the RD loss, network frozen.

When an update phase follows, every adapted layer's low-rank update trains
with the latents (all open, its bits in the loss): one backward pass gives
both gradients, the latents settle for the decoder they will be decoded
with, and the update phase starts warm (docs/RESULTS.md, issue 33).

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
from .update import ImageUpdate, adapted, g_s_adapters, stacked_factors

__all__ = ["Latents", "Refinement"]


class Latents(ImageState):
    """One image's latents under refinement, its best checkpoint and the
    update that trains with them (None: no update phase follows)."""

    def __init__(self, index: int, target: Target, y0: Tensor, z0, seed: int):
        super().__init__(index)
        self.target = target
        self.update: Optional[ImageUpdate] = None
        self.best_update: Optional[list[dict[str, Tensor]]] = None
        self.gen = torch.Generator(device=y0.device).manual_seed(seed)
        self.y = y0.detach().clone().requires_grad_(True)
        self.z = None if z0 is None else z0.detach().clone().requires_grad_(True)
        self.best = (y0.detach(), None if z0 is None else z0.detach())
        self.best_loss = math.nan
        self.context: Optional[Tensor] = None  # the decoder's y_hat (anchored)

    def leaves(self) -> list[Tensor]:
        return [t for t in (self.y, self.z) if t is not None]

    def keep(self) -> None:
        """The current latents (and update) are the best so far."""
        self.best = (
            self.y.detach().clone(),
            None if self.z is None else self.z.detach().clone(),
        )
        if self.update is not None:
            self.best_update = [
                {k: v.detach().clone() for k, v in f.items()}
                for f in self.update.factors
            ]

    def bad(self) -> Optional[str]:
        if not sane(self.y, self.z):
            return "latents out of range"
        return None if self.update is None else self.update.bad()


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
        groups = [{"params": leaves, "lr": self.tuning.refine_lr}]
        self.adapters = g_s_adapters(model)
        self.joint = cfg.adapt_steps > 0 and bool(self.adapters)
        if self.joint:  # every adapted layer's update trains with the latents
            for s in self.states:
                s.update = ImageUpdate(model, None, s.target, cfg, s.index)
            factors = [t for s in self.states for t in s.update.leaves()]
            groups.append({"params": factors, "lr": self.tuning.adapt_lr})
        self.opt = torch.optim.Adam(groups)
        self.anchored = is_autoregressive(model)
        self.tau = 0.0
        for s in self.states:
            s.best_loss = self.hard_loss(s)  # the starting point
            s.keep()

    def losses(self, group: list[Latents], rnd=None) -> list[tuple]:
        """Each image's (loss, bpp, x_hat) from one batched pass; ``rnd``
        (None: an SGA sample at the current temperature) rounds."""
        if rnd is None:
            tau, gens = self.tau, [s.gen for s in group]
            rnd = lambda v: sga_round(v, tau, gens)  # noqa: E731
        y, z = _cat([s.y for s in group]), _cat([s.z for s in group])
        ctx = _cat([s.context for s in group]) if self.anchored else None
        y_hat, liks = latent_terms(self.model, y, z, rnd, context=ctx)
        if self.joint:
            factors = stacked_factors(self.adapters, [s.update for s in group])
            out = adapted(self.model.g_s, self.adapters, factors, y_hat)
        else:
            out = self.model.g_s(y_hat)
        terms = []
        for n, s in enumerate(group):
            own = {k: v[n : n + 1] for k, v in liks.items()}
            bpp = rate_bpp(own, s.target.pixels)
            if s.update is not None:
                bpp = bpp + s.update.bpp()
            terms.append(s.target.loss(out[n : n + 1], bpp))
        return terms

    def trained_updates(self) -> Optional[list[list[dict[str, Tensor]]]]:
        """Each image's update factors at its best checkpoint (None: none
        trained): the update phase starts from them."""
        return [s.best_update for s in self.states] if self.joint else None

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
        set_lr(self.opt, lr_factor(tn.lr_schedule, done))

    def checkpoint(self, s: Latents) -> None:
        """Keep ``s``'s latents if their hard-rounded loss beats its best."""
        hard = self.hard_loss(s)
        if math.isfinite(hard) and hard < s.best_loss:
            s.best_loss = hard
            s.keep()

    def finish(self, s: Latents, t: int) -> None:
        if (t - s.start) % EVAL_EVERY:  # the latest latents were not checked yet
            self.checkpoint(s)
