"""Phase 2: the low-rank decoder update, trained on the ``y_hat`` the real
decoder sees (the refined candidate's), with its bits in the loss.

1. Warm-up: the factors of every adapted layer train together for
   ``cfg.gate_steps`` steps (straight-through quantized; they start at zero,
   so an update has to earn its bits).
2. The gates decide on measured figures: the warm update is coded for real
   and, layer by layer, the real ``J`` without that layer's update is
   compared with the real ``J`` with it (backward elimination).  A layer
   stays open if removing it costs (``dJ > 0``); ``stats["gates"]`` records
   each decision and its ``dJ``.  Deterministic: no gate network, no random
   draw.  When the time budget ends the warm-up, the warm update of every
   layer is coded once instead (``dJ`` None, ``"by": "budget"``).
3. The open layers train on, the learning rate following
   ``cfg.lr_schedule`` over the rest of the phase; every ``EVAL_EVERY`` steps
   the update is coded for real and the lowest real ``J`` is kept
   (``cfg.patience`` steps without a better one end the phase).  A greedy
   pass on real costs then closes the layers that no longer pay.

Only ``g_s`` runs, and its blocks before the first open adapter are cached.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import torch
from torch import Tensor

from .. import update_stream
from ..priors import tensor_bits
from .candidates import Candidate, Target, prune_by_real_cost, update_candidate
from .clock import Deadline, lr_factor, set_lr
from .objective import crop_to, distortion, diverged, finite, progress, sane

__all__ = ["EVAL_EVERY", "UpdateTrainer", "first_adapted_block"]

EVAL_EVERY = 10


def first_adapted_block(model, paths=None) -> int:
    """Index of the first ``g_s`` block that holds one of the adapters ``paths``."""
    paths = model.lora_layers if paths is None else paths
    for i in range(len(model.g_s)):
        if any(p == f"g_s.{i}" or p.startswith(f"g_s.{i}.") for p in paths):
            return i
    return len(model.g_s)


def _ste_round(t: Tensor) -> Tensor:
    return t + (torch.round(t) - t).detach()


class UpdateTrainer:
    """Owns the trainable factors of one image's update and trains them.

    Args:
        model: a ``-lora`` model (frozen, adapters reset)
        refined: the candidate whose latents the update is trained for
        target: the image and RD trade-off (see :class:`Target`)
        cfg: the AdaptConfig
        callback: progress callback (or None)
    """

    def __init__(self, model, refined: Candidate, target: Target, cfg, callback):
        self.model, self.refined, self.target = model, refined, target
        self.cfg, self.callback = cfg, callback
        self.adapters = list(model.adapters().values())
        self.names = list(model.lora_layers)
        self.step = update_stream.step_from_code(cfg.step_code)
        self.limit = self.step * update_stream.MAX_SYMBOL / 4
        device = target.x.device
        self.factors = [
            {
                k: v.to(device).requires_grad_(True)
                for k, v in m.initial_factors().items()
            }
            for m in self.adapters
        ]
        self.open = list(range(len(self.adapters)))
        self.opt = torch.optim.Adam(
            [t for f in self.factors for t in f.values()], lr=cfg.adapt_lr
        )
        self.stats: dict[str, Any] = {}

    # -- the update --------------------------------------------------------
    def _quantized(self, i: int) -> dict[str, Tensor]:
        return {
            k: _ste_round(v / self.step) * self.step for k, v in self.factors[i].items()
        }

    def updates(self, layers) -> dict[int, update_stream.LayerUpdate]:
        """The quantized updates of ``layers`` that are not all zero."""
        out = {}
        for i in layers:
            f = {k: v.detach() for k, v in self.factors[i].items()}
            if sane(*f.values(), limit=self.limit) and any(
                torch.round(v / self.step).abs().sum() > 0 for v in f.values()
            ):
                out[i] = update_stream.quantize(f, self.cfg.step_code)
        return out

    def real(self, layers) -> Optional[Candidate]:
        """``layers``' current update, coded and decoded for real (None: empty)."""
        updates = self.updates(layers)
        if not updates:
            return None
        return update_candidate(
            self.model, self.refined, updates, self.cfg.step_code, self.target
        )

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """The open layers compute with the trainable update inside the block."""
        for i in self.open:
            m = self.adapters[i]
            m.delta_fn = lambda _x, i=i, m=m: m.delta_from(**self._quantized(i))
        try:
            yield
        finally:
            for m in self.adapters:
                m.delta_fn = None

    # -- training ------------------------------------------------------------
    def _prefix(self) -> tuple[int, Tensor]:
        """Run the blocks before the first open adapter once, keep the output."""
        split = first_adapted_block(self.model, [self.names[i] for i in self.open])
        with torch.no_grad():
            return split, self.model.g_s[:split](self.refined.extra["y_hat"])

    def _loss(self, split: int, feat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x, t = self.target.x, self.target
        x_hat = crop_to(self.model.g_s[split:](feat), x, t.offset).clamp(0, 1)
        bits = sum(
            tensor_bits(_ste_round(v / self.step))
            for i in self.open
            for v in self.factors[i].values()
        )
        bpp = bits / t.pixels
        return t.lmbda * distortion(x_hat, x, self.cfg.metric) + bpp, bpp, x_hat

    def decide(self) -> Optional[Candidate]:
        """Keep the layers whose update pays, by the real coded cost.

        Backward elimination in layer order: a layer is closed if the update
        without it costs less (real J) than with it; ``dJ`` is what removing
        it would have cost (> 0: it stays open).
        """
        current = self.real(self.open)
        record = {}
        for i in list(self.open):
            rest = [j for j in self.open if j != i]
            without = self.real(rest) if rest else None
            j_with = self.refined.J if current is None else current.J
            j_without = self.refined.J if without is None else without.J
            dj = j_without - j_with
            record[self.names[i]] = {"open": dj > 0, "dJ": dj}
            if dj <= 0:
                self.open, current = rest, without
        self.stats["gates"] = record
        self.stats["gates_J"] = None if current is None else current.J
        return current

    def run(
        self, deadline: Optional[Deadline] = None
    ) -> tuple[Optional[Candidate], dict[str, Any]]:
        """Train; returns the best real candidate (None: no update pays).

        At the ``deadline`` the current update gets a last real check and the
        phase ends.
        """
        cfg = self.cfg
        deadline = deadline or Deadline(None)
        warmup = min(cfg.gate_steps, cfg.adapt_steps)
        best: Optional[Candidate] = None
        since, t = 0, -1
        split, feat = self._prefix()
        for t in range(cfg.adapt_steps):
            if deadline.due() and t > 0:
                self.stats["stopped"] = {
                    "phase": "adapt",
                    "step": t,
                    "reason": "budget",
                }
                if "gates" not in self.stats:  # no time for the per-layer checks
                    best = self._undecided()
                elif self.open:
                    best = self._better(best)
                t -= 1
                break
            if t == warmup:
                best, since = self.decide(), 0  # the decision's coded update
                if not self.open:
                    break
                split, feat = self._prefix()
            if t >= warmup:  # the warm-up trains at the full rate
                done = (t - warmup) / max(cfg.adapt_steps - warmup - 1, 1)
                done = max(done, deadline.fraction())
                set_lr(self.opt, cfg.adapt_lr * lr_factor(cfg.lr_schedule, done))
            with self.installed():
                loss, bpp, x_hat = self._loss(split, feat)
            if not finite(loss):
                self.stats["diverged"] = diverged("adapt", t, "non-finite loss")
                break
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            if not sane(
                *(v for f in self.factors for v in f.values()), limit=self.limit
            ):
                self.stats["diverged"] = diverged("adapt", t, "factors out of range")
                break
            since += 1
            last = t == cfg.adapt_steps - 1
            if t >= warmup and ((t + 1 - warmup) % EVAL_EVERY == 0 or last):
                before, best = best, self._better(best)
                since = 0 if best is not before else since
            if self.callback:
                self.callback(
                    progress(
                        "adapt",
                        t,
                        cfg.adapt_steps,
                        loss,
                        bpp,
                        x_hat,
                        self.target.x,
                        len(self.open),
                    )
                )
            deadline.tick()
            if t >= warmup and cfg.patience and since >= cfg.patience:
                break
        if "gates" not in self.stats and "diverged" not in self.stats:
            best = self.decide()  # the phase ended before the decision
        self.stats.update(adapt_iters=t + 1, gates_open=len(self.open), split=split)
        if best is None or "stopped" in self.stats:
            return best, self.stats  # out of time: no pruning pass
        final = prune_by_real_cost(
            self.model, self.refined, best, cfg.step_code, self.target
        )
        return final, self.stats

    def _undecided(self) -> Optional[Candidate]:
        """The warm update of every layer, coded once: the budget ended the
        warm-up, and the per-layer checks would code it once per layer more."""
        self.stats["gates"] = {
            self.names[i]: {"open": True, "dJ": None, "by": "budget"} for i in self.open
        }
        current = self.real(self.open)
        self.stats["gates_J"] = None if current is None else current.J
        return current

    def _better(self, best: Optional[Candidate]) -> Optional[Candidate]:
        """The open layers' current update, coded for real, if it beats ``best``."""
        c = self.real(self.open)
        return c if c is not None and (best is None or c.J < best.J) else best
