"""Settings of the per-image adaptation run inside ``compress()``.

This module imports nothing of the package (benchmarks load it alone).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

__all__ = ["AdaptConfig", "LR_SCHEDULES", "PRESETS", "TUNING_FIELDS", "Tuning"]

#: learning rate over a phase: "constant", or "cosine" (held for the first
#: half of the phase's annealing span, then decayed to a tenth)
LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class Tuning:
    """The method's constants; the presets set them (measured effects:
    docs/RESULTS.md, "What we tried").

    Args:
        refine_lr: Adam learning rate of the latents
        adapt_lr: Adam learning rate of the low-rank factors
        lr_schedule: learning rate over each phase, one of ``LR_SCHEDULES``
        refine_anneal: steps over which the SGA temperature and the
            refinement's rate anneal; later steps keep the end values, so a
            longer phase (or budget) continues the shorter one step for step
            (None: over the phase's steps, or its budget)
        adapt_anneal: the same for the update's rate, counted from the gate
            decision
        gate_steps: update steps with every layer open before the gates
            decide on real coded costs (the refinement's steps, which train
            it too, count; if the update phase ends first, the gates decide
            at its end)
        step_code: finest quantization step of the factors tried,
            ``2 ** (-step_code / 4)``
        step_search: coarser steps (each twice the last) the gate decision
            also codes the update at; the cheapest stands
        step_tie: a finer step stands while its real ``J`` is at most this
            share of the refined latents' ``J`` above the cheapest
        form: update form of the adapters ("separable" or "full", see
            :mod:`compressai_lora.layers`)
        update_window: side in pixels of the random window of the image
            each update step trains on (None: the whole image); an image no
            larger trains whole.  Opt-in: 256 holds the time per pixel of
            larger images but costs gain at ``fast`` (docs/RESULTS.md)
    """

    refine_lr: float = 2e-2
    adapt_lr: float = 2e-2
    lr_schedule: str = "cosine"
    refine_anneal: Optional[int] = 100
    adapt_anneal: Optional[int] = 25
    gate_steps: int = 40
    step_code: int = 24
    step_search: int = 3
    step_tie: float = 1e-3
    form: str = "separable"
    update_window: Optional[int] = None

    def __post_init__(self) -> None:
        _check(self.refine_lr > 0, "refine_lr", self.refine_lr, "> 0")
        _check(self.adapt_lr > 0, "adapt_lr", self.adapt_lr, "> 0")
        _check(self.lr_schedule in LR_SCHEDULES, "lr_schedule", self.lr_schedule,
               f"one of {LR_SCHEDULES}")  # fmt: skip
        for name in ("refine_anneal", "adapt_anneal"):
            value = getattr(self, name)
            _check(value is None or value >= 1, name, value, ">= 1 or None")
        _check(self.gate_steps >= 0, "gate_steps", self.gate_steps, ">= 0")
        _check(0 <= self.step_code <= 255, "step_code", self.step_code, "in [0, 255]")
        _check(self.step_search >= 0, "step_search", self.step_search, ">= 0")
        _check(self.step_tie >= 0, "step_tie", self.step_tie, ">= 0")
        _check(self.form in ("separable", "full"), "form", self.form,
               '"separable" or "full"')  # fmt: skip
        window = self.update_window
        _check(window is None or window >= 1, "update_window", window, ">= 1 or None")


def _check(ok: bool, name: str, value: Any, want: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {want}, got {value!r}")


TUNING_FIELDS = tuple(f.name for f in dataclasses.fields(Tuning))


@dataclass
class AdaptConfig:
    """How ``compress()`` adapts a ``-lora`` model to an image.

    Args:
        enabled: adapt in ``compress()``/eval ``forward()`` (False: host codec)
        refine_steps: latent-refinement steps (0 skips phase 1)
        adapt_steps: decoder-update steps (0 skips phase 2)
        rank: rank of the decoder update
        lmbda: RD trade-off; None takes CompressAI's table for quality/metric
        metric: distortion, "mse" or "ms-ssim"
        seed: seed of every random choice (same seed, same bytes)
        threads: torch threads while optimizing (None: leave torch's setting);
            the bytes depend on it
        batch_size: most images adapted together; each image's result is its
            unbatched one up to float rounding
        time_budget: seconds for both phases together (None: no limit): a
            plan, not a cut: the phases split it in proportion to their
            steps (the refinement's share less its result's real coding),
            each one's schedules (rate, SGA temperature, the gate decision
            at its share of the update) end by its deadline, a phase stops
            before a step that would overrun it, the gate decision codes no
            more once past it; machine-dependent, so no promise of the same
            bytes
        callback: called with a dict (phase, step, loss, bpp, psnr, gates)
            after every step, e.g. to drive a progress bar
        tuning: the method's constants (:class:`Tuning`)

    ``replace()`` and ``preset()`` also take :class:`Tuning`'s names
    (``cfg.replace(refine_lr=0.05)``).
    """

    enabled: bool = True
    refine_steps: int = 100
    adapt_steps: int = 25
    rank: int = 2
    lmbda: Optional[float] = None
    metric: str = "mse"
    seed: int = 0
    threads: Optional[int] = None
    batch_size: int = 1
    time_budget: Optional[float] = None
    callback: Optional[Callable[[dict[str, Any]], None]] = field(
        default=None, compare=False, repr=False
    )
    tuning: Tuning = field(default_factory=Tuning)

    def __post_init__(self) -> None:
        for name in ("refine_steps", "adapt_steps"):
            _check(getattr(self, name) >= 0, name, getattr(self, name), ">= 0")
        _check(1 <= self.rank <= 255, "rank", self.rank, "in [1, 255]")
        _check(self.metric in ("mse", "ms-ssim"), "metric", self.metric,
               '"mse" or "ms-ssim"')  # fmt: skip
        _check(self.lmbda is None or self.lmbda > 0, "lmbda", self.lmbda, "> 0")
        budget = self.time_budget
        _check(budget is None or budget > 0, "time_budget", budget, "> 0 or None")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        threads = self.threads
        _check(threads is None or threads >= 1, "threads", threads, ">= 1 or None")
        _check(isinstance(self.tuning, Tuning), "tuning", self.tuning, "a Tuning")

    @property
    def form(self) -> str:
        """The adapters' update form (``tuning.form``)."""
        return self.tuning.form

    def replace(self, **changes: Any) -> "AdaptConfig":
        """A copy with ``changes``: AdaptConfig's or :class:`Tuning`'s names."""
        tuned = {k: changes.pop(k) for k in list(changes) if k in TUNING_FIELDS}
        if tuned:
            base = changes.get("tuning", self.tuning)
            changes["tuning"] = dataclasses.replace(base, **tuned)
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str, **changes: Any) -> "AdaptConfig":
        """A named preset (see ``PRESETS``), with optional overrides."""
        if name not in PRESETS:
            raise ValueError(f'Unknown preset "{name}", choose from {sorted(PRESETS)}')
        return cls().replace(**{**PRESETS[name], **changes})


#: default: AdaptConfig's own settings (100 + 25 steps: about 45 s of a 256x256
#: crop on one core, most of it for the refinement, docs/RESULTS.md); fast:
#: 20 + 30 steps, for previews and tests; medium: 100 + 150 steps (about 1 point
#: more for 1.8 times the time); slow: 400 + 350 steps (the default before issue 33);
#: paper: the paper's 2000 + 2000 steps as ``slow`` continued (same rates and
#: spans, so its first 400 + 350 steps are slow's).  fast and medium run their
#: schedules over their own steps.
_SLOW_SPANS = {"refine_anneal": 400, "adapt_anneal": 250, "gate_steps": 100}
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "slow": {"refine_steps": 400, "adapt_steps": 350, **_SLOW_SPANS},
    "paper": {"refine_steps": 2000, "adapt_steps": 2000, **_SLOW_SPANS},
    "medium": {
        "refine_steps": 100,
        "adapt_steps": 150,
        "refine_anneal": None,
        "adapt_anneal": None,
        "gate_steps": 40,
    },
    "fast": {
        "refine_steps": 20,
        "adapt_steps": 30,
        "adapt_lr": 1e-2,
        "lr_schedule": "constant",
        "refine_anneal": None,
        "adapt_anneal": None,
        "gate_steps": 10,
    },
}
