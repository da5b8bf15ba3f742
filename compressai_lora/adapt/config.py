"""Settings of the per-image adaptation run inside ``compress()``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

__all__ = [
    "AdaptConfig",
    "LAMBDAS",
    "LR_SCHEDULES",
    "lmbda_for",
    "resolve_lmbda",
    "PRESETS",
]

#: learning-rate schedules of a phase: "constant" keeps the phase's rate (the
#: ``fast`` preset: on the 14 dev crops it did better at 20+30 steps,
#: docs/RESULTS.md); "cosine" (the default) holds it for the first half of its
#: annealing span (``refine_anneal`` / ``adapt_anneal`` steps, else the phase's
#: steps or time budget), then decays it to a tenth along a half cosine
LR_SCHEDULES = ("constant", "cosine")

#: CompressAI's training lambdas per quality level (mse / ms-ssim).
LAMBDAS = {
    "mse": (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800),
    "ms-ssim": (2.40, 4.58, 8.73, 16.64, 31.73, 60.50, 115.37, 220.0),
}


def lmbda_for(quality: int, metric: str = "mse") -> float:
    """Lambda of CompressAI's training table for ``quality`` and ``metric``."""
    if metric not in LAMBDAS:
        raise ValueError(f'Invalid metric "{metric}"')
    if not 1 <= quality <= len(LAMBDAS[metric]):
        raise ValueError(f'Invalid quality "{quality}", should be between (1, 8)')
    return LAMBDAS[metric][quality - 1]


def resolve_lmbda(
    given: Optional[float] = None,
    *,
    meta: Optional[Mapping[str, Any]] = None,
    quality: Optional[int] = None,
    metric: str = "mse",
) -> Optional[float]:
    """The lambda of a run: ``given``; else a checkpoint's ``meta["lmbda"]``;
    else the zoo table's for ``quality`` and ``metric``; else None.

    Raises:
        ValueError: ``quality`` or ``metric`` is not in the zoo's table.
    """
    if given is not None:
        return float(given)
    value = (meta or {}).get("lmbda")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None if quality is None else lmbda_for(quality, metric)


@dataclass
class AdaptConfig:
    """How ``compress()`` adapts a ``-lora`` model to one image.

    Phase 1 refines the latents (SGA), phase 2 learns the gated low-rank
    decoder update; a final check on real coded costs sends the best of base,
    refined-only and refined + update.

    Args:
        enabled: adapt in ``compress()``/eval ``forward()`` (False: host codec)
        refine_steps: latent-refinement steps (0 skips phase 1)
        adapt_steps: decoder-update steps (0 skips phase 2)
        refine_lr: Adam learning rate of the latents
        adapt_lr: Adam learning rate of the low-rank factors
        gate_steps: phase-2 warm-up steps with every layer open; then each
            layer stays open only if its coded update lowers the real RD cost
            (none does: every layer trains on, and it is decided again
            ``gate_steps`` later while the phase has room)
        rank: rank of the decoder update
        form: update form of the adapters ("separable" or "full")
        step_code: quantization step of the factors, ``2 ** (-step_code / 4)``
            (the finest tried; the update trains at it until the gates decide)
        step_search: coarser steps the gate decision also codes the update at
            (``step_code - 4``, ``- 8``, ...: each doubles the step); the one
            of the lowest real RD cost is sent and trained on (0: only
            ``step_code``)
        step_tie: a finer step stands if its real RD cost is at most this
            share of the refined latents' ``J`` above the lowest (among the
            steps whose update pays): the warm update favours fewer bits, a
            finer step's update gains more from training
        early_start: when the refinement runs on past twice its annealing
            span, the best latents after half its steps (a quarter, ...
            while past the span) get the update the schedule of half the
            steps (a quarter, ...) would train on them (refinement and update
            steps halved together); the cheapest of these and the final
            latents' update is the candidate: a schedule has every candidate
            of its half, so doubling both step counts never gives a higher
            real ``J`` (a longer refinement can take the gain the update had
            on shorter latents)
        lmbda: RD trade-off; None takes CompressAI's table for quality/metric
        metric: distortion, "mse" or "ms-ssim"
        seed: seed of every random choice (same seed, same bytes)
        threads: torch threads while optimizing (None: leave torch's setting)
        batch_size: most images adapted together: ``compress()`` of a larger
            batch adapts it in batches of this size; each image's result is
            its unbatched one up to float rounding (same choice and gates)
        patience: stop a phase after this many steps without a better loss
            (0: never stop early)
        lr_schedule: learning rate over each phase, one of ``LR_SCHEDULES``
        refine_anneal: steps over which the refinement's SGA temperature and
            learning rate anneal; later steps keep their end values, so a
            longer phase (or budget) continues the shorter one's trajectory
            step for step (None: over the phase's steps, or its budget)
        adapt_anneal: the same for the update's learning rate, counted from
            the end of the warm-up (``gate_steps``)
        time_budget: seconds for both phases together (None: no limit); the
            phases split it in proportion to their steps, stop before a step
            that would overrun it, and send the best found so far.  Unlike
            the step counts it depends on the machine's speed, so the same
            seed with a budget does not promise the same bytes
        callback: called with a dict (phase, step, loss, bpp, psnr, gates)
            after every step, e.g. to drive a progress bar
    """

    enabled: bool = True
    refine_steps: int = 400
    adapt_steps: int = 350
    refine_lr: float = 2e-2
    adapt_lr: float = 2e-2
    gate_steps: int = 100
    rank: int = 2
    form: str = "separable"
    step_code: int = 24
    step_search: int = 3
    step_tie: float = 1e-3
    early_start: bool = True
    lmbda: Optional[float] = None
    metric: str = "mse"
    seed: int = 0
    threads: Optional[int] = None
    batch_size: int = 1
    patience: int = 0
    lr_schedule: str = "cosine"
    refine_anneal: Optional[int] = 400
    adapt_anneal: Optional[int] = 250
    time_budget: Optional[float] = None
    callback: Optional[Callable[[dict[str, Any]], None]] = field(
        default=None, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        for name in (
            "refine_steps",
            "adapt_steps",
            "gate_steps",
            "patience",
            "step_search",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("refine_anneal", "adapt_anneal"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        for name in ("refine_lr", "adapt_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.step_tie >= 0:
            raise ValueError(f"step_tie must be >= 0, got {self.step_tie}")
        if not 1 <= self.rank <= 255:
            raise ValueError(f"rank must be in [1, 255], got {self.rank}")
        if not 0 <= self.step_code <= 255:
            raise ValueError(f"step_code must be in [0, 255], got {self.step_code}")
        if self.metric not in LAMBDAS:
            raise ValueError(f'Invalid metric "{self.metric}"')
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f'Unknown lr_schedule "{self.lr_schedule}", choose from {LR_SCHEDULES}'
            )
        if self.lmbda is not None and not self.lmbda > 0:
            raise ValueError(f"lmbda must be > 0, got {self.lmbda}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ValueError(f"time_budget must be > 0, got {self.time_budget}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")

    def early_steps(self) -> list[int]:
        """The refinement steps whose best latents are the update's further
        starts, latest first: the halvings of ``refine_steps`` not below
        ``refine_anneal`` (see ``early_start``; none without a phase 2 past
        its gate decision)."""
        span, steps = self.refine_anneal, []
        if not self.early_start or span is None or self.adapt_steps <= self.gate_steps:
            return steps
        half = self.refine_steps // 2
        while half >= span:
            steps.append(half)
            half //= 2
        return steps

    def early_adapt_steps(self, step: int) -> int:
        """The update steps of the further start at refinement step ``step``
        (one of :meth:`early_steps`): what the schedule of ``step`` refinement
        steps trains, halving ``adapt_steps`` with ``refine_steps``.  So each
        start's update is the one a shorter schedule computes, and a schedule
        has every candidate of its half: it never sends a costlier file."""
        refine, adapt = self.refine_steps, self.adapt_steps
        while refine > step:
            refine, adapt = refine // 2, adapt // 2
        if refine != step:
            raise ValueError(f"{step} is not a halving of {self.refine_steps}")
        return adapt

    def replace(self, **changes: Any) -> "AdaptConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str, **changes: Any) -> "AdaptConfig":
        """A named preset (see ``PRESETS``), with optional overrides."""
        if name not in PRESETS:
            raise ValueError(f'Unknown preset "{name}", choose from {sorted(PRESETS)}')
        return cls(**{**PRESETS[name], **changes})


PRESETS: dict[str, dict[str, Any]] = {
    # Our CPU default: 400 + 350 steps, the update at twice the paper's rate,
    # cosine decay over 400 refinement and 250 update steps after the 100
    # warm-up steps (chosen on 5 dev crops against the paper schedule;
    # figures in docs/RESULTS.md).  These are AdaptConfig's own defaults.
    "default": {},
    # The paper's step counts, 2000 refinement + 2000 adaptation steps, r = 2,
    # as a continuation of the default: the same rates and annealing, so its
    # first 400 + 350 steps are the default's and the steps after them
    # continue at the annealed rate and temperature (more steps never make
    # the latents costlier).  The paper's constant rates gave costlier files
    # than the default at 1000 + 1000 steps on 5 of the 14 dev crops and at
    # 2000 + 2000 on 2 (docs/RESULTS.md, 2026-12-03).
    "paper": {"refine_steps": 2000, "adapt_steps": 2000},
    # Quick and cheap, for previews and tests (the first release's rates; its
    # schedules run over its own 20 + 30 steps).
    "fast": {
        "refine_steps": 20,
        "adapt_steps": 30,
        "refine_lr": 2e-2,
        "adapt_lr": 1e-2,
        "lr_schedule": "constant",
        "refine_anneal": None,
        "adapt_anneal": None,
        "gate_steps": 10,
        "patience": 15,
    },
}
