"""Phase 2 for a batch: the images' updates trained together.

Every image keeps its own factors, open layers, real-cost checkpoints, gate
decisions, early stop and divergence check (:class:`.update.ImageUpdate`,
the unbatched logic applied to each image); only the step is shared.  The
loss is the sum of the images' losses, so each image's gradient is its own,
and Adam is elementwise.  Each step runs only ``g_s`` from the first block
any active image adapts (the blocks before it are cached for the batch).
One image computes its update as a kernel delta (what ``decompress`` merges);
a batch applies its images' as a batched low-rank branch (``LoRAConv.branch``):
no per-image kernel inside the loop, and no gradient of a full kernel (on the
CPU a 64-channel 3x3 adapted convolution steps about 1.8x faster so).  An
image that has stopped leaves the batch: its factors get no gradient and no
Adam step.

:func:`train_updates` also trains an update on earlier refined latents
(past the refinement's annealing span), each as the shorter schedule ending
there would, and keeps the cheapest update.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor

from .candidates import Candidate, Target
from .clock import Deadline, lr_factor, schedule_done, set_lr
from .objective import (
    batch_loss,
    crop_to,
    distortion,
    diverged,
    finite,
    progress,
    sane,
)
from .update import EVAL_EVERY, ImageUpdate

__all__ = ["UpdateTrainer", "train_updates"]

Result = tuple[Optional[Candidate], dict[str, Any]]


def _branch(m, images: list[ImageUpdate], layer: int, rows: list[int], x: Tensor):
    """Layer ``layer``'s update output for the ``rows`` of ``x`` (``images``)."""
    factors = [s.quantized(layer) for s in images]
    stacked = {k: torch.stack([f[k] for f in factors]) for k in factors[0]}
    if len(rows) == x.size(0):
        return m.branch(x, **stacked)
    idx = torch.tensor(rows, device=x.device)
    out = m.branch(x.index_select(0, idx), **stacked)
    return out.new_zeros((x.size(0), *out.shape[1:])).index_copy(0, idx, out)


class UpdateTrainer:
    """Trains the updates of a batch of images (one image: a batch of one).

    Args:
        model: a ``-lora`` model (frozen, adapters reset)
        refined: per image, the candidate whose latents its update is for
        targets: per image, the image and RD trade-off (see :class:`Target`)
        cfg: the AdaptConfig
        callback: progress callback (or None); with several images its dict
            has ``"image"``, the image's index
    """

    def __init__(
        self,
        model,
        refined: Sequence[Candidate],
        targets: Sequence[Target],
        cfg,
        callback: Optional[Callable] = None,
    ):
        self.model, self.cfg, self.callback = model, cfg, callback
        self.adapters = list(model.adapters().values())
        self.images = [
            ImageUpdate(model, r, t, cfg, n)
            for n, (r, t) in enumerate(zip(refined, targets))
        ]
        self.y_hat = torch.cat([r.extra["y_hat"] for r in refined])
        self.opt = torch.optim.Adam(
            [t for s in self.images for t in s.leaves()], lr=cfg.adapt_lr
        )
        self._prefix: Optional[tuple[int, Tensor]] = None
        self.t = 0  # steps done (by the images still training)

    def _features(self, active: list[ImageUpdate]) -> tuple[int, Tensor]:
        """The input of ``g_s[split:]`` for ``active``, ``split`` their first
        adapted block (the blocks before it run once per split)."""
        split = min(s.split for s in active)
        if self._prefix is None or self._prefix[0] != split:
            with torch.no_grad():
                self._prefix = split, self.model.g_s[:split](self.y_hat)
        feat = self._prefix[1]
        if len(active) < len(self.images):
            feat = feat[[s.index for s in active]]
        return split, feat

    @contextlib.contextmanager
    def installed(self, active: list[ImageUpdate]) -> Iterator[None]:
        """The open layers compute with the trainable updates inside the block."""
        if len(self.images) == 1:
            s = active[0]
            for i in s.open:
                m = self.adapters[i]
                m.delta_fn = lambda _x, i=i, m=m: m.delta_from(**s.quantized(i))
        else:
            for i, m in enumerate(self.adapters):
                rows = [n for n, s in enumerate(active) if i in s.open]
                if rows:
                    images = [active[n] for n in rows]
                    m.branch_fn = functools.partial(_branch, m, images, i, rows)
        try:
            yield
        finally:
            for m in self.adapters:
                m.delta_fn = m.branch_fn = None

    def _losses(self, active: list[ImageUpdate]) -> list[tuple[Tensor, ...]]:
        """Each active image's (loss, bpp, x_hat) from one batched pass."""
        split, feat = self._features(active)
        with self.installed(active):
            out = self.model.g_s[split:](feat)
        terms = []
        for n, s in enumerate(active):
            x, t = s.target.x, s.target
            x_hat = crop_to(out[n : n + 1], x, t.offset).clamp(0, 1)
            bpp = s.bpp()
            terms.append(
                (t.lmbda * distortion(x_hat, x, self.cfg.metric) + bpp, bpp, x_hat)
            )
        return terms

    def run(self, deadline: Optional[Deadline] = None) -> list[Result]:
        """Train; per image, the best real candidate (None: no update pays)
        and its stats.

        At the ``deadline`` each image's current update gets a last real
        check and the phase ends.
        """
        self.advance(deadline)
        return self.results()

    def result(self, n: int) -> Result:
        """Image ``n``'s best real candidate and its stats (after the steps
        :meth:`advance` ran)."""
        s = self.images[n]
        return s.result(self.t if s.iters is None else s.iters)

    def results(self) -> list[Result]:
        """:meth:`result` of every image."""
        return [self.result(n) for n in range(len(self.images))]

    def drop(self, n: int) -> None:
        """Image ``n`` trains no further (its update is trained elsewhere)."""
        s = self.images[n]
        if s.iters is None:
            s.iters = self.t

    def advance(
        self, deadline: Optional[Deadline] = None, until: Optional[int] = None
    ) -> None:
        """Train on up to step ``until`` (None: the end of the phase); a later
        call goes on from there.  At the ``deadline`` each image's current
        update gets a last real check and the phase ends."""
        cfg = self.cfg
        deadline = deadline or Deadline(None)
        end = cfg.adapt_steps if until is None else min(until, cfg.adapt_steps)
        warmup = min(cfg.gate_steps, cfg.adapt_steps)
        many = len(self.images) > 1
        while self.t < end:
            t = self.t
            active = [s for s in self.images if s.iters is None]
            if not active:
                break
            if deadline.due() and t > 0:
                for s in active:
                    s.stats["stopped"] = {
                        "phase": "adapt",
                        "step": t,
                        "reason": "budget",
                    }
                    if not s.decided:  # no time for the per-layer checks
                        s.best = s.undecided()
                    elif s.open:
                        s.best = s.better()
                    s.iters = t
                break
            if any(t == s.decide_at for s in active):
                for s in active:
                    if t == s.decide_at:
                        s.decide_or_retry(t)  # the decision's coded update
                        if not s.open:
                            s.iters = t + 1
                active = [s for s in active if s.iters is None]
                if not active:
                    break
            if t >= warmup:  # the warm-up trains at the full rate
                done = schedule_done(
                    t - warmup, cfg.adapt_steps - warmup, cfg.adapt_anneal, deadline
                )
                set_lr(self.opt, cfg.adapt_lr * lr_factor(cfg.lr_schedule, done))
            live = []
            for s, term in zip(active, self._losses(active)):
                if finite(term[0]):
                    live.append((s, term))
                else:
                    s.stats["diverged"] = diverged("adapt", t, "non-finite loss")
                    s.iters = t + 1
            if live:
                self.opt.zero_grad()
                batch_loss([term[0] for _, term in live]).backward()
                self.opt.step()
            for s, (loss, bpp, x_hat) in live:
                if not sane(*s.leaves(), limit=s.limit):
                    s.stats["diverged"] = diverged("adapt", t, "factors out of range")
                    s.iters = t + 1
                    continue
                s.since += 1
                last = t == cfg.adapt_steps - 1
                check = (t + 1 - s.decide_at) % EVAL_EVERY == 0 or last
                if s.decided and t >= s.decide_at and check:
                    before, s.best = s.best, s.better()
                    s.since = 0 if s.best is not before else s.since
                if self.callback:
                    x, gates = s.target.x, len(s.open)
                    info = progress(
                        "adapt", t, cfg.adapt_steps, loss, bpp, x_hat, x, gates
                    )
                    self.callback({**info, "image": s.index} if many else info)
            deadline.tick()
            for s, _ in live:
                stall = cfg.patience and s.since >= cfg.patience
                if s.iters is None and s.decided and stall:
                    s.iters = t + 1
            self.t = t + 1


def train_updates(
    model,
    refined: Sequence[Candidate],
    early: Sequence[dict[int, Candidate]],
    targets: Sequence[Target],
    cfg,
    callback: Optional[Callable] = None,
    deadline: Optional[Deadline] = None,
) -> list[Result]:
    """Phase 2 from each image's ``refined`` candidate and from each of its
    ``early`` ones (the best latents after that many refinement steps).

    Each earlier start trains the update its shorter schedule would
    (``cfg.early_adapt_steps(step)`` steps: refinement and update steps
    halved together), the shortest first; the update from ``refined`` trains
    as it would alone.  So a schedule has every candidate of its half.  Per
    image the update of the lowest real ``J`` is the candidate; with earlier
    starts its stats name its latents (``update_start``) and give each
    start's update ``J`` (``start_J``; None: no update paid).  The callback's
    dicts of an earlier start have ``"start"``, its name.
    """
    deadline = deadline or Deadline(None)
    found: list[dict[int, Optional[Candidate]]] = [{} for _ in refined]
    for step in sorted({k for e in early for k in e}):
        mine = [n for n, e in enumerate(early) if step in e]
        starts = [e.get(step, r) for r, e in zip(refined, early)]
        names = [c.name for c in starts]
        cb = callback and (
            lambda info, names=names: callback(
                {**info, "start": names[info.get("image", 0)]}
            )
        )
        sub = cfg.replace(adapt_steps=cfg.early_adapt_steps(step))
        trainer = UpdateTrainer(model, starts, targets, sub, cb)
        for n in set(range(len(starts))) - set(mine):
            trainer.drop(n)
        trainer.advance(deadline)
        for n in mine:
            found[n][step] = trainer.result(n)[0]
    out = UpdateTrainer(model, refined, targets, cfg, callback).run(deadline)
    for n, (update, stats) in enumerate(out):
        if not found[n]:
            continue
        updates = {"refined": update}  # then the earlier starts, latest first
        for step in sorted(found[n], reverse=True):
            updates[early[n][step].name] = found[n][step]
        stats["start_J"] = {k: None if u is None else u.J for k, u in updates.items()}
        paid = {k: u for k, u in updates.items() if u is not None}
        if paid:
            start = min(paid, key=lambda k: paid[k].J)  # ties: the later latents
            stats["update_start"] = start
            out[n] = (paid[start], stats)
    return out
