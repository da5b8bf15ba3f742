"""The learning-rate schedule of each adaptation phase."""

from __future__ import annotations

import time

import pytest
import torch
from test_determinism import _image, _model  # noqa: E402  (same directory)

from compressai_lora.adapt import AdaptConfig, loop, refine, update
from compressai_lora.adapt.loop import LR_FLOOR, LR_HOLD, Deadline, lr_factor


def test_cosine_holds_then_runs_to_the_floor_and_never_rises():
    values = [lr_factor("cosine", t / 99) for t in range(100)]
    assert values[0] == 1.0 and values[-1] == pytest.approx(LR_FLOOR)
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert lr_factor("cosine", LR_HOLD) == 1.0 > lr_factor("cosine", LR_HOLD + 0.01)
    half_way = LR_HOLD + (1 - LR_HOLD) / 2
    assert lr_factor("cosine", half_way) == pytest.approx((1 + LR_FLOOR) / 2)
    assert lr_factor("cosine", 2.0) == pytest.approx(LR_FLOOR)  # clamped
    assert {lr_factor("constant", t / 9) for t in range(10)} == {1.0}


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="lr_schedule"):
        AdaptConfig().replace(lr_schedule="linear")


def test_budget_fraction_grows_with_time():
    assert Deadline(None).fraction() == 0.0
    d = Deadline(0.2)
    first = d.fraction()
    time.sleep(0.05)
    assert 0.0 <= first < d.fraction() < 1.0
    time.sleep(0.2)
    assert d.fraction() == 1.0


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_each_phase_follows_its_schedule(monkeypatch, schedule):
    seen: list[tuple[str, float]] = []

    def recording(module):
        def set_lr(opt, factor):
            loop.set_lr(opt, factor)
            seen.append((module, [g["lr"] for g in opt.param_groups]))

        return set_lr

    monkeypatch.setattr(refine, "set_lr", recording("refine"))
    monkeypatch.setattr(update, "set_lr", recording("adapt"))
    model = _model("bmshj2018-hyperprior-lora")
    cfg = AdaptConfig().replace(
        refine_steps=12, adapt_steps=14, gate_steps=4,
        refine_lr=0.02, adapt_lr=0.01, lmbda=0.01, lr_schedule=schedule,
        refine_anneal=None, adapt_anneal=None,  # over each phase's steps
    )  # fmt: skip
    model.adapt_config = cfg
    with torch.no_grad():
        model.compress(_image(3))
    # the refinement's second group: the update training with the latents
    phases = (("refine", 0, 0.02, 12), ("refine", 1, 0.01, 12), ("adapt", 0, 0.01, 14))
    for phase, group, lr, steps in phases:
        rates = [r[group] for p, r in seen if p == phase]
        assert len(rates) == steps
        assert rates[0] == pytest.approx(lr)
        if schedule == "constant":
            assert rates == pytest.approx([lr] * steps)
        else:
            assert rates[-1] == pytest.approx(lr * LR_FLOOR)
            assert all(a >= b for a, b in zip(rates, rates[1:]))


def _rates(monkeypatch, **settings) -> dict[str, list[float]]:
    """The learning rate of each step of each phase."""
    seen: dict[str, list[float]] = {"refine": [], "adapt": []}

    def recording(phase):
        def set_lr(opt, factor):
            loop.set_lr(opt, factor)
            seen[phase].append(opt.param_groups[0]["lr"])

        return set_lr

    monkeypatch.setattr(refine, "set_lr", recording("refine"))
    monkeypatch.setattr(update, "set_lr", recording("adapt"))
    model = _model("bmshj2018-hyperprior-lora")
    model.adapt_config = AdaptConfig().replace(
        gate_steps=4, refine_lr=0.02, adapt_lr=0.01, lmbda=0.01,
        refine_anneal=10, adapt_anneal=8, **settings,
    )  # fmt: skip
    with torch.no_grad():
        model.compress(_image(3))
    return seen


def test_annealed_schedules_run_over_their_own_steps_then_stay_at_the_floor(
    monkeypatch,
):
    short = _rates(monkeypatch, refine_steps=10, adapt_steps=12)
    long = _rates(monkeypatch, refine_steps=25, adapt_steps=30)
    # the longer phase continues the shorter one's schedule step for step
    assert long["refine"][:10] == short["refine"]
    assert long["adapt"][:12] == short["adapt"]
    assert short["refine"][-1] == pytest.approx(0.02 * LR_FLOOR)
    assert long["refine"][10:] == pytest.approx([0.02 * LR_FLOOR] * 15)
    assert long["adapt"][8:] == pytest.approx([0.01 * LR_FLOOR] * (30 - 8))


def test_annealed_temperature_stays_at_its_end_value():
    from compressai_lora.adapt.sga import TAU_MIN, temperature

    span, never = 10, Deadline(None)
    taus = [temperature(loop.schedule_done(t, 30, span, never)) for t in range(30)]
    assert taus[span - 1] == pytest.approx(TAU_MIN)
    assert taus[span:] == [taus[span - 1]] * (30 - span)
    assert all(a > b for a, b in zip(taus[: span - 1], taus[1:span]))
