"""Phase 2: one image's low-rank decoder update, trained on the ``y_hat`` the
real decoder sees (the refined candidate's), with its bits in the loss.

1. Warm-up: the factors of every adapted layer train together for
   ``cfg.gate_steps`` steps (straight-through quantized; they start at zero,
   so an update has to earn its bits).
2. The gates decide on measured figures: the warm update is coded for real
   at ``cfg.step_code`` and at each of ``cfg.step_search`` coarser steps
   (each twice the last); the finest step within ``cfg.step_tie`` of the
   lowest real ``J`` stands (``stats["step_code"]``, every step's figure in
   ``stats["step_J"]``) and the update trains on at it.  A finer step
   resolves the update better, a coarser one costs fewer bits: which pays
   depends on the image and on how far refinement went.  Then, layer by
   layer, the real ``J`` without that layer's update is compared with the
   real ``J`` with it (backward elimination).  A layer stays open if
   removing it costs (``dJ > 0``); ``stats["gates"]`` records each decision
   and its ``dJ``.  Deterministic: no gate network, no random draw.  When no
   layer pays yet, every layer trains on (at ``cfg.step_code``) and the
   decision is taken again ``cfg.gate_steps`` steps later, while the phase
   has room for it
   (``stats["gates_step"]``: the step of the decision that stood).  When the
   time budget ends the warm-up, the warm update of every layer is coded once
   instead (``dJ`` None, ``"by": "budget"``).
3. The open layers train on, the learning rate following
   ``cfg.lr_schedule`` from the end of the warm-up over ``cfg.adapt_anneal``
   steps (None: the rest of the phase), then at its floor; every
   ``EVAL_EVERY`` steps the update is coded for real and the lowest real
   ``J`` is kept (``cfg.patience`` steps without a better one end the phase).
   A greedy pass on real costs then closes the layers that no longer pay.

:class:`ImageUpdate` holds one image's factors and makes its decisions (all
on the image alone); :mod:`.update_loop` trains a batch of them together.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from .. import update_stream
from ..priors import tensor_bits
from .candidates import Candidate, Target, prune_by_real_cost, update_candidate
from .objective import sane

__all__ = ["EVAL_EVERY", "ImageUpdate", "first_adapted_block"]

EVAL_EVERY = 10


def first_adapted_block(model, paths=None) -> int:
    """Index of the first ``g_s`` block that holds one of the adapters ``paths``."""
    paths = model.lora_layers if paths is None else paths
    for i in range(len(model.g_s)):
        if any(p == f"g_s.{i}" or p.startswith(f"g_s.{i}.") for p in paths):
            return i
    return len(model.g_s)


def _symbol_limit(step: float) -> float:
    """The largest factor value trained or sent at ``step`` (a quarter of the
    stream's symbol range: room for the update to grow)."""
    return step * update_stream.MAX_SYMBOL / 4


def _ste_round(t: Tensor) -> Tensor:
    """Rounding with a straight-through gradient."""
    return t + (torch.round(t) - t).detach()


class ImageUpdate:
    """One image's trainable update: factors, open layers, real-cost choices.

    Args:
        model: a ``-lora`` model (frozen, adapters reset)
        refined: the candidate whose latents the update is trained for
        target: the image and RD trade-off (see :class:`Target`)
        cfg: the AdaptConfig
        index: the image's place in its batch
    """

    def __init__(self, model, refined: Candidate, target: Target, cfg, index=0):
        self.model, self.refined, self.target = model, refined, target
        self.cfg, self.index = cfg, index
        self.names = list(model.lora_layers)
        self.step_code, self.step, self.limit = cfg.step_code, 0.0, 0.0
        self.set_step(cfg.step_code)
        device = target.x.device
        self.factors = [
            {
                k: v.to(device).requires_grad_(True)
                for k, v in m.initial_factors().items()
            }
            for m in model.adapters().values()
        ]
        self.open = list(range(len(self.factors)))
        self.split = self.first_block()
        self.best: Optional[Candidate] = None
        self.decided = False  # the open layers are settled
        self.decide_at = min(cfg.gate_steps, cfg.adapt_steps)  # next decision
        self.since = 0
        self.iters: Optional[int] = None  # steps done, once it has stopped
        self.stats: dict[str, Any] = {}

    def set_step(self, code: int) -> None:
        """Quantize (and train) the factors on the grid of step ``code``."""
        self.step_code = code
        self.step = update_stream.step_from_code(code)
        self.limit = _symbol_limit(self.step)

    def step_codes(self) -> list[int]:
        """The step codes a decision tries, finest first."""
        codes = [self.cfg.step_code - 4 * k for k in range(self.cfg.step_search + 1)]
        return [c for c in codes if c >= 0]

    def leaves(self) -> list[Tensor]:
        return [t for f in self.factors for t in f.values()]

    def first_block(self) -> int:
        """The first ``g_s`` block with an open adapter (blocks before it are
        the same with or without the update)."""
        return first_adapted_block(self.model, [self.names[i] for i in self.open])

    # -- the update --------------------------------------------------------
    def quantized(self, i: int) -> dict[str, Tensor]:
        """Layer ``i``'s factors, straight-through quantized."""
        return {
            k: _ste_round(v / self.step) * self.step for k, v in self.factors[i].items()
        }

    def bpp(self) -> Tensor:
        """Differentiable bits of the open layers' factors, per pixel."""
        bits = sum(
            tensor_bits(_ste_round(v / self.step))
            for i in self.open
            for v in self.factors[i].values()
        )
        return bits / self.target.pixels

    def updates(self, layers, code=None) -> dict[int, update_stream.LayerUpdate]:
        """The updates of ``layers`` quantized at step ``code`` (None: the
        current step) that are not all zero."""
        code = self.step_code if code is None else code
        step = update_stream.step_from_code(code)
        out = {}
        for i in layers:
            f = {k: v.detach() for k, v in self.factors[i].items()}
            if sane(*f.values(), limit=_symbol_limit(step)) and any(
                torch.round(v / step).abs().sum() > 0 for v in f.values()
            ):
                out[i] = update_stream.quantize(f, code)
        return out

    def real(self, layers, code=None) -> Optional[Candidate]:
        """``layers``' current update at step ``code`` (None: the current
        step), coded and decoded for real (None: empty)."""
        code = self.step_code if code is None else code
        updates = self.updates(layers, code)
        if not updates:
            return None
        return update_candidate(self.model, self.refined, updates, code, self.target)

    def choose_step(self) -> Optional[Candidate]:
        """Set the finest step whose update of the open layers costs at most
        ``cfg.step_tie`` of the refined ``J`` more than the cheapest (real J;
        only steps whose update pays, if any does) and return that update.

        A near tie goes to the finer step: on line-10 at ``paper`` 2^-5 won
        the decision by 0.03% of ``J`` and trained to a ``J`` 1.3% above
        2^-6's (docs/RESULTS.md).
        """
        trials = {c: self.real(self.open, c) for c in self.step_codes()}
        costs = {c: self.refined.J if t is None else t.J for c, t in trials.items()}
        pool = {c: j for c, j in costs.items() if j < self.refined.J} or costs
        tie = min(pool.values()) + self.cfg.step_tie * abs(self.refined.J)
        code = next(c for c, j in pool.items() if j <= tie)  # finest first
        self.set_step(code)
        self.stats["step_code"], self.stats["step_J"] = code, costs
        return trials[code]

    # -- decisions ---------------------------------------------------------
    def decide(self) -> Optional[Candidate]:
        """Keep the layers whose update pays, by the real coded cost.

        First the step (:meth:`choose_step`), then backward elimination in
        layer order at it: a layer is closed if the update without it costs
        less (real J) than with it; ``dJ`` is what removing it would have
        cost (> 0: it stays open).
        """
        current = self.choose_step()
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
        self.decided = True
        return current

    def decide_or_retry(self, step: int) -> None:
        """The decision at ``step``; if no layer pays and the phase has room
        for another warm-up, every layer trains on until the next one."""
        self.best, self.since = self.decide(), 0
        self.stats["gates_step"] = step
        if not self.open and step + self.cfg.gate_steps < self.cfg.adapt_steps:
            self.open, self.decided = list(range(len(self.factors))), False
            self.set_step(self.cfg.step_code)
            self.decide_at = step + self.cfg.gate_steps
            self.stats["gates_retries"] = self.stats.get("gates_retries", 0) + 1
        self.split = self.first_block()

    def undecided(self) -> Optional[Candidate]:
        """The warm update of every layer, coded once: the budget ended the
        warm-up, and the per-layer checks would code it once per layer more."""
        self.stats["gates"] = {
            self.names[i]: {"open": True, "dJ": None, "by": "budget"} for i in self.open
        }
        current = self.real(self.open)
        self.stats["gates_J"] = None if current is None else current.J
        self.decided = True
        return current

    def better(self) -> Optional[Candidate]:
        """The open layers' current update, coded for real, if it beats the best."""
        c = self.real(self.open)
        best = self.best
        return c if c is not None and (best is None or c.J < best.J) else best

    def result(self, iters: int) -> tuple[Optional[Candidate], dict[str, Any]]:
        """The image's final candidate after ``iters`` steps (None: no update
        pays); the greedy pruning pass unless the budget stopped it."""
        if not self.decided and "diverged" not in self.stats:
            self.best = self.decide()  # the phase ended before the decision
        self.stats.update(
            adapt_iters=iters, gates_open=len(self.open), split=self.split
        )
        if self.best is None or "stopped" in self.stats:
            return self.best, self.stats  # out of time: no pruning pass
        final = prune_by_real_cost(
            self.model, self.refined, self.best, self.step_code, self.target
        )
        return final, self.stats
