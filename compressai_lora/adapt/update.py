"""Phase 2: the low-rank decoder update, trained on the ``y_hat`` the real
decoder sees (the refined candidate's), with its bits in the loss.

1. Warm-up: every adapted layer's factors train for ``gate_steps`` steps
   (straight-through quantized, from zero: an update has to earn its bits),
   the steps they trained with the latents in the refinement included.
2. The gates decide on real coded costs: the warm update is coded at
   ``step_code`` and ``step_search`` coarser steps, the finest step within
   ``step_tie`` of the cheapest stands; then a layer stays open only if
   removing it raises the real ``J`` (backward elimination, each ``dJ`` in
   ``last_adaptation["gates"]``).  No gate network; if no layer pays, the
   image's update ends there.  Past a budget's deadline the decision codes no
   more: the layers not yet looked at stay open (``"by": "budget"``; the
   images of a batch are decided in turn).
3. The open layers train on, the lowest real ``J`` of the checkpoints is
   kept, and a greedy pass on real costs closes the layers that no longer pay.

Only ``g_s`` runs, from the first block an image adapts.  With
``Tuning.update_window`` set (opt-in), each step on a larger image trains on
a random window of it (the factors are shared by every pixel), so a step's
cost does not grow with the image; every checkpoint and decision still costs
the whole image for real.
The factors reach the adapters through ``torch.func.functional_call``,
stacked per image (one image too): each adapter adds its rank-``r`` branch to
the frozen convolution, whose gradient costs a fraction of the merged
kernel's (an update step in 0.87x the time, docs/RESULTS.md).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor
from torch.func import functional_call

from .. import update_stream
from ..priors import tensor_bits
from .candidates import Candidate, Target, prune_by_real_cost, update_candidate
from .loop import Deadline, ImageState, lr_factor, schedule_done, set_lr
from .objective import sane

__all__ = [
    "ImageUpdate",
    "UpdatePhase",
    "adapted",
    "first_adapted_block",
    "g_s_adapters",
    "stacked_factors",
]


def g_s_adapters(model) -> list:
    """(name in ``g_s``, adapter) of each adapted layer (a slice of ``g_s``
    keeps the names)."""
    return [(p[4:], m) for p, m in model.adapters().items()]


def first_adapted_block(model, paths=None) -> int:
    """Index of the first ``g_s`` block that holds one of the adapters ``paths``."""
    paths = model.lora_layers if paths is None else paths
    for i in range(len(model.g_s)):
        if any(p == f"g_s.{i}" or p.startswith(f"g_s.{i}.") for p in paths):
            return i
    return len(model.g_s)


#: latents on each side of a training window that give its output context
#: but are left out of its loss (where the window does not meet the border)
WINDOW_MARGIN = 1


def _symbol_limit(step: float) -> float:
    """The largest factor value trained or sent at ``step`` (a quarter of the
    stream's symbol range: room for the update to grow)."""
    return step * update_stream.MAX_SYMBOL / 4


def _ste_round(t: Tensor) -> Tensor:
    """Rounding with a straight-through gradient."""
    return t + (torch.round(t) - t).detach()


class ImageUpdate(ImageState):
    """One image's trainable update: factors (from ``initial``, None: zero),
    open layers, real-cost choices (``ready`` once the gates have decided, at
    step ``start``); ``refined`` None while it trains with the latents."""

    def __init__(
        self, model, refined: Optional[Candidate], target: Target, cfg, index=0,
        initial=None,
    ):  # fmt: skip
        tn = cfg.tuning
        super().__init__(index, start=min(tn.gate_steps, cfg.adapt_steps), ready=False)
        self.model, self.refined, self.target, self.tuning = model, refined, target, tn
        self.names = list(model.lora_layers)
        self.set_step(tn.step_code)
        initial = initial or [m.initial_factors() for m in model.adapters().values()]
        self.factors = [
            {k: v.detach().clone().to(target.x.device).requires_grad_(True)
             for k, v in f.items()}
            for f in initial
        ]  # fmt: skip
        self.open = list(range(len(self.factors)))
        self.split = self.first_block()
        self.best: Optional[Candidate] = None
        self.gates: dict[str, dict[str, Any]] = {}  # each layer's decision
        self.step_J: dict[int, float] = {}  # the decision's J per step code
        self.gates_J: Optional[float] = None
        self.gates_step: Optional[int] = None
        self.gen = torch.Generator().manual_seed(cfg.seed)  # the windows' places

    def set_step(self, code: int) -> None:
        """Quantize (and train) the factors on the grid of step ``code``."""
        self.step_code = code
        self.step = update_stream.step_from_code(code)
        self.limit = _symbol_limit(self.step)

    def step_codes(self) -> list[int]:
        """The step codes a decision tries, finest first."""
        tn = self.tuning
        codes = [tn.step_code - 4 * k for k in range(tn.step_search + 1)]
        return [c for c in codes if c >= 0]

    def leaves(self) -> list[Tensor]:
        return [t for f in self.factors for t in f.values()]

    def bad(self) -> Optional[str]:
        ok = sane(*self.leaves(), limit=self.limit)
        return None if ok else "factors out of range"

    def open_layers(self) -> int:
        return len(self.open)

    def first_block(self) -> int:
        """The first ``g_s`` block with an open adapter."""
        return first_adapted_block(self.model, [self.names[i] for i in self.open])

    # -- the update --------------------------------------------------------
    def quantized(self, i: int) -> dict[str, Tensor]:
        """Layer ``i``'s factors, straight-through quantized."""
        s = self.step
        return {k: _ste_round(v / s) * s for k, v in self.factors[i].items()}

    def bpp(self) -> Tensor:
        """Differentiable bits of the open layers' factors, per pixel."""
        bits = sum(
            tensor_bits(_ste_round(v / self.step))
            for i in self.open
            for v in self.factors[i].values()
        )
        return bits / self.target.pixels

    def real(self, layers, code=None) -> Optional[Candidate]:
        """``layers``' current update at step ``code`` (None: the current
        step), coded and decoded for real (None: empty)."""
        code = self.step_code if code is None else code
        step = update_stream.step_from_code(code)
        updates = {}
        for i in layers:
            f = {k: v.detach() for k, v in self.factors[i].items()}
            if sane(*f.values(), limit=_symbol_limit(step)) and any(
                torch.round(v / step).abs().sum() > 0 for v in f.values()
            ):
                updates[i] = update_stream.quantize(f, code)
        if not updates:
            return None
        return update_candidate(self.model, self.refined, updates, code, self.target)

    def window(self, size: tuple[int, int], grid: tuple[int, int], px: int):
        """A random window of ``size`` latents of the ``grid``: its first latent
        row and column and the target of its output (the margin of
        ``WINDOW_MARGIN`` latents inside the image left out)."""
        place, spans = [], []
        for n, full in zip(size, grid):
            at = int(torch.randint(full - n + 1, (1,), generator=self.gen))
            lo = at + (WINDOW_MARGIN if at > 0 else 0)
            hi = at + n - (WINDOW_MARGIN if at + n < full else 0)
            place.append(at)
            spans.append(range(lo * px, hi * px))
        origin = (place[0] * px, place[1] * px)
        return place, self.target.window(*spans, origin)

    def cost(self, c: Optional[Candidate]) -> float:
        """Real ``J`` of an update candidate (None: the refined latents')."""
        return self.refined.J if c is None else c.J

    # -- decisions ---------------------------------------------------------
    def choose_step(self, deadline: Optional[Deadline] = None) -> Optional[Candidate]:
        """Set the finest step whose update of the open layers costs at most
        ``step_tie`` of the refined ``J`` more than the cheapest (among the
        steps whose update pays, if any does); return that update.  Past the
        ``deadline``, only the steps coded so far compete."""
        trials = {}
        for c in self.step_codes():  # finest first
            if trials and deadline is not None and deadline.due():
                break
            trials[c] = self.real(self.open, c)
        costs = {c: self.cost(t) for c, t in trials.items()}
        pool = {c: j for c, j in costs.items() if j < self.refined.J} or costs
        tie = min(pool.values()) + self.tuning.step_tie * abs(self.refined.J)
        code = next(c for c, j in pool.items() if j <= tie)  # finest first
        self.set_step(code)
        self.step_J = costs
        return trials[code]

    def decide(self, t: int, deadline: Optional[Deadline] = None) -> None:
        """The gate decision at step ``t``: the step, then backward
        elimination in layer order on the real coded cost; past the
        ``deadline`` the layers not yet looked at stay open."""
        current = self.choose_step(deadline)
        self.gates = {}
        for i in list(self.open):
            if deadline is not None and deadline.due():
                self.gates[self.names[i]] = {"open": True, "dJ": None, "by": "budget"}
                continue
            rest = [j for j in self.open if j != i]
            without = self.real(rest) if rest else None
            dj = self.cost(without) - self.cost(current)
            self.gates[self.names[i]] = {"open": dj > 0, "dJ": dj}
            if dj <= 0:
                self.open, current = rest, without
        self.best, self.gates_step = current, t
        self.gates_J = None if current is None else current.J
        self.ready, self.start = True, t
        self.split = self.first_block()

    def checkpoint(self) -> None:
        """Code the open layers' update; keep it if it beats the best."""
        c = self.real(self.open)
        if c is not None and (self.best is None or c.J < self.best.J):
            self.best = c

    def last_look(self) -> None:
        """At the deadline: the current update checked, or if the gates have
        not decided, every layer's warm update coded once (no per-layer checks)."""
        if not self.ready:
            self.gates = {
                self.names[i]: {"open": True, "dJ": None, "by": "budget"}
                for i in self.open
            }
            self.best, self.ready = self.real(self.open), True
            self.gates_J = None if self.best is None else self.best.J
        elif self.open:
            self.checkpoint()

    def result(self) -> Optional[Candidate]:
        """The image's final candidate (None: no update pays); the greedy
        pruning pass unless the budget stopped it."""
        if not self.ready and self.diverged is None:
            self.decide(self.iters)  # the phase ended before the decision
        if self.best is None or self.stopped is not None:
            return self.best  # out of time: no pruning pass
        return prune_by_real_cost(
            self.model, self.refined, self.best, self.step_code, self.target
        )

    def report(self) -> dict[str, Any]:
        """What ``last_adaptation`` shows of this phase."""
        names = ("split", "gates", "gates_J", "gates_step", "step_code", "step_J")
        shown = {k: getattr(self, k) for k in names}
        return {"adapt_iters": self.iters, "gates_open": len(self.open), **shown}


def stacked_factors(adapters, states) -> dict[str, Tensor]:
    """The open layers' factors of ``states`` by buffer name in ``g_s``,
    stacked per image, zero for an image whose layer is closed."""
    out = {}
    for i, (path, _) in enumerate(adapters):
        rows = [s.quantized(i) if i in s.open else None for s in states]
        like = next((r for r in rows if r is not None), None)
        if like is None:
            continue
        zero = {k: torch.zeros_like(v) for k, v in like.items()}
        like = {k: torch.stack([(r or zero)[k] for r in rows]) for k in like}
        out.update({f"{path}.{k}": v for k, v in like.items()})
    return out


def adapted(blocks, adapters, factors: dict[str, Tensor], feat: Tensor) -> Tensor:
    """``blocks`` (of ``g_s``) on ``feat`` with the layers of ``factors`` open."""
    opened = [m for p, m in adapters if f"{p}.B" in factors]
    for m in opened:  # the layers with trainable factors compute with them
        m.gate = True
    try:
        return functional_call(blocks, factors, (feat,))
    finally:
        for m in opened:
            m.gate = False


class UpdatePhase:
    """Trains the updates of a batch of images (one image: a batch of one),
    each for its ``refined`` candidate's latents, on a frozen model whose
    adapters are reset; from ``starts`` (per image, None: zero), which
    trained ``warm`` steps with the latents."""

    name = "adapt"

    def __init__(
        self, model, refined: Sequence[Candidate], targets, cfg, starts=None,
        warm: int = 0,
    ):  # fmt: skip
        self.model, self.steps, self.tuning = model, cfg.adapt_steps, cfg.tuning
        self.adapters = g_s_adapters(model)
        starts = starts or [None] * len(refined)
        self.states = [
            ImageUpdate(model, r, t, cfg, n, f)
            for n, (r, t, f) in enumerate(zip(refined, targets, starts))
        ]
        self.y_hat = torch.cat([r.extra["y_hat"] for r in refined])
        leaves = [t for s in self.states for t in s.leaves()]
        self.opt = torch.optim.Adam(leaves, lr=self.tuning.adapt_lr)
        # ``warm`` steps trained the ``starts`` with the latents already
        self.warmup = min(max(self.tuning.gate_steps - warm, 0), self.steps)
        self._prefix: Optional[tuple[int, Tensor]] = None
        self.decided: Optional[tuple[int, float]] = None  # step, budget share
        # output pixels per latent; the window each step trains on (latents)
        grid = self.y_hat.shape[-2:]
        self.px = refined[0].x_hat.size(-1) // grid[-1]
        side = self.tuning.update_window
        size = tuple(grid if side is None else (min(side // self.px, n) for n in grid))
        self.window = None if size == tuple(grid) else size

    def _features(self, active: list[ImageUpdate]) -> tuple[int, Tensor]:
        """``split``, the first block ``active`` adapt, and the input of
        ``g_s[split:]`` (the blocks before it run once per split)."""
        split = min(s.split for s in active)
        if self._prefix is None or self._prefix[0] != split:
            with torch.no_grad():
                self._prefix = split, self.model.g_s[:split](self.y_hat)
        feat = self._prefix[1]
        if len(active) < len(self.states):
            feat = feat[[s.index for s in active]]
        return split, feat

    def losses(self, active: list[ImageUpdate]) -> list[tuple[Tensor, ...]]:
        """Each active image's (loss, bpp, x_hat, x) from one batched pass."""
        split, feat = self._features(active)
        targets = [s.target for s in active]
        if self.window is not None:  # a random window per image
            feat, targets = self._windows(active, feat)
        factors = stacked_factors(self.adapters, active)
        out = adapted(self.model.g_s[split:], self.adapters, factors, feat)
        return [
            t.loss(out[n : n + 1], s.bpp())
            for n, (s, t) in enumerate(zip(active, targets))
        ]

    def _windows(self, active, feat: Tensor) -> tuple[Tensor, list[Target]]:
        """Each image's features in a random window and the window's target:
        the factors are shared by every pixel, so a window's loss is a
        stochastic estimate of the image's whose cost does not grow with it."""
        grid = self.y_hat.shape[-2:]
        cell = feat.size(-1) // grid[-1]  # feature cells per latent
        h, w = (n * cell for n in self.window)
        crops, targets = [], []
        for n, s in enumerate(active):
            (r, c), target = s.window(self.window, grid, self.px)
            crops.append(
                feat[n : n + 1, :, r * cell : r * cell + h, c * cell : c * cell + w]
            )
            targets.append(target)
        return torch.cat(crops), targets

    # -- what run_phase asks ------------------------------------------------
    def prepare(self, t: int, deadline: Deadline) -> None:
        # the warm-up ends after its steps or, with a budget, its share of it
        if self.decided is None and (
            t >= self.warmup or deadline.fraction() >= self.warmup / self.steps
        ):
            self.decided = t, deadline.fraction()
            for s in self.states:
                if s.running and not s.ready:
                    why = s.bad()  # the warm-up's factors are looked at here
                    if why:
                        s.end(self.name, t, why)
                        continue
                    s.decide(t, deadline)  # the gates, on real coded costs
                    if not s.open:
                        s.stop(t + 1)
        if self.decided is not None:  # the warm-up trains at the full rate
            (t0, f0), tn = self.decided, self.tuning
            done = schedule_done(t - t0, self.steps - t0, tn.adapt_anneal, deadline, f0)
            set_lr(self.opt, lr_factor(tn.lr_schedule, done))

    def checkpoint(self, s: ImageUpdate) -> None:
        s.checkpoint()

    def finish(self, s: ImageUpdate, t: int) -> None:
        s.last_look()
