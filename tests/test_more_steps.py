"""More encoder steps continue the shorter run's trajectory (same seed).

With ``refine_anneal`` / ``adapt_anneal`` the schedules of a phase do not
depend on its length, so a longer phase repeats the shorter one step for step
and then goes on; the best checkpoint is kept, so the refined latents of more
steps are never costlier.  A time budget plans the schedules to end by its
deadline instead.  Without them (the ``fast`` preset) the schedules
stretch over the phase, and the trajectories differ from the first step.
"""

from __future__ import annotations

import pytest
import torch
from test_determinism import NAMES, _image, _model  # noqa: E402  (same directory)

from compressai_lora.adapt import AdaptConfig


def _run(name: str, **settings) -> tuple[dict, dict[str, list[float]]]:
    """The adaptation's stats and each phase's per-step losses."""
    losses: dict[str, list[float]] = {"refine": [], "adapt": []}
    model = _model(name)
    model.adapt_config = AdaptConfig().replace(
        lmbda=2.0, refine_lr=0.05, adapt_lr=0.05, gate_steps=10,
        threads=1, seed=3, callback=lambda i: losses[i["phase"]].append(i["loss"]),
        **settings,
    )  # fmt: skip
    with torch.no_grad():
        model.compress(_image(5))
    return dict(model.last_adaptation), losses


@pytest.mark.parametrize("name", NAMES)
def test_more_refinement_steps_never_give_costlier_latents(name):
    anneal = dict(refine_anneal=20, adapt_steps=0)
    short, short_losses = _run(name, refine_steps=20, **anneal)
    long, long_losses = _run(name, refine_steps=50, **anneal)
    assert long_losses["refine"][:20] == short_losses["refine"]
    assert len(long_losses["refine"]) == 50
    # the checkpoint objective of the best iterate (the real coder's cost up
    # to its tables, tests/test_adapt_objective.py) never rises ...
    assert long["refine_loss"] <= short["refine_loss"]
    # ... and the real coded J of the refined latents follows it
    assert long["J"]["refined"] <= short["J"]["refined"] * 1.02


def test_more_update_steps_continue_the_shorter_update():
    anneal = dict(refine_steps=10, refine_anneal=10, adapt_anneal=10)
    short, short_losses = _run("cheng2020-attn-lora", adapt_steps=30, **anneal)
    long, long_losses = _run("cheng2020-attn-lora", adapt_steps=60, **anneal)
    assert long_losses["refine"] == short_losses["refine"]
    n = len(short_losses["adapt"])
    assert n > 10 and long_losses["adapt"][:n] == short_losses["adapt"]
    assert long["gates"] == short["gates"]


def test_without_annealing_spans_a_longer_phase_is_another_trajectory():
    stretched = dict(refine_anneal=None, adapt_steps=0)
    _, short = _run("cheng2020-attn-lora", refine_steps=20, **stretched)
    _, long = _run("cheng2020-attn-lora", refine_steps=50, **stretched)
    assert short["refine"][0] == long["refine"][0]  # same start, same seed
    assert short["refine"][:20] != long["refine"][:20]


def test_a_budget_plans_the_schedules_to_end_by_its_deadline(monkeypatch):
    """A budget is a plan, not a cut: however many steps it allows, the rate
    and the SGA temperature have annealed by the deadline."""
    from compressai_lora.adapt import refine
    from compressai_lora.adapt.sga import TAU_MAX, TAU_MIN

    taus, rates = [], []
    set_lr = refine.set_lr

    def recording(opt, factor):
        set_lr(opt, factor)
        rates.append(opt.param_groups[0]["lr"])

    monkeypatch.setattr(refine, "set_lr", recording)
    prepare = refine.Refinement.prepare
    monkeypatch.setattr(
        refine.Refinement,
        "prepare",
        lambda self, t, d: (prepare(self, t, d), taus.append(self.tau)),
    )
    budget = dict(refine_steps=100_000, adapt_steps=0, refine_anneal=50_000)
    _run("cheng2020-attn-lora", time_budget=1.0, **budget)
    assert 5 < len(rates) < 100_000  # the budget stopped it
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    assert rates[-1] < 0.05 * 0.3 and taus[-1] < 2 * TAU_MIN
    assert taus[0] == pytest.approx(TAU_MAX, rel=0.05)


def test_spans_equal_to_the_phases_are_the_stretched_schedules():
    """Spans as long as the phases (the update's counted from the gate
    decision, here at its start: the refinement's steps warmed it up) are the
    stretched schedules: same losses step for step."""
    steps = dict(refine_steps=20, adapt_steps=30)
    spans, spans_losses = _run(
        "cheng2020-attn-lora", refine_anneal=20, adapt_anneal=30, **steps
    )
    stretched, stretched_losses = _run(
        "cheng2020-attn-lora", refine_anneal=None, adapt_anneal=None, **steps
    )
    assert spans_losses == stretched_losses and spans["J"] == stretched["J"]
