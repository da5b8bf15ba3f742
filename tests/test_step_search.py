"""The gate decision's quantization step, chosen by the real coded cost."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from test_adapt import (
    FAST,
    check_sent_cost,
    fresh_decode,
    pixel_art,
    roundtrip,
    small_pair,
)

from compressai_lora.adapt import AdaptConfig
from compressai_lora.adapt.update import ImageUpdate
from compressai_lora.update_stream import step_from_code
from compressai_lora.zoo import model_architectures

NAMES = sorted(model_architectures)


def _bare(cfg: AdaptConfig, costs: dict, refined_j: float = 1.0) -> ImageUpdate:
    """An ImageUpdate whose real costs per step code are ``costs`` (missing:
    the update quantizes to nothing)."""
    s = object.__new__(ImageUpdate)
    s.tuning, s.refined, s.open = cfg.tuning, SimpleNamespace(J=refined_j), [0]
    s.set_step(cfg.tuning.step_code)
    s.real = lambda layers, code: (
        SimpleNamespace(J=costs[code]) if code in costs else None
    )
    return s


def test_the_lowest_real_cost_wins_ties_to_the_finer_step():
    s = _bare(
        AdaptConfig().replace(step_code=10, step_search=4), {10: 0.9, 6: 0.8, 2: 0.8}
    )
    chosen = s.choose_step()
    assert chosen.J == 0.8
    assert (s.step_code, s.step) == (6, step_from_code(6))
    assert s.limit == step_from_code(6) * 2**26 / 4
    assert s.step_J == {10: 0.9, 6: 0.8, 2: 0.8}  # no code below 0
    assert s.step_code == 6


def test_a_near_tie_goes_to_the_finer_step():
    # line-10 at paper: 2^-5 beat 2^-6 by 0.03% of J at the decision
    cfg = AdaptConfig().replace(step_code=24, step_search=3)
    near = 1.0 - 0.5 * cfg.tuning.step_tie * 2.0
    s = _bare(cfg, {24: 1.0, 20: near}, 2.0)
    assert s.choose_step().J == 1.0 and s.step_code == 24
    clear = 1.0 - 2 * cfg.tuning.step_tie * 2.0  # 24 costlier by more than the tie
    s = _bare(cfg, {24: 1.0, 20: clear}, 2.0)
    assert s.choose_step().J == clear and s.step_code == 20
    s = _bare(cfg.replace(step_tie=0.0), {24: 1.0, 20: near}, 2.0)
    assert s.choose_step().J == near and s.step_code == 20
    with pytest.raises(ValueError, match="step_tie"):
        AdaptConfig().replace(step_tie=-0.1)


def test_the_tie_passes_over_a_finer_step_that_does_not_pay():
    cfg = AdaptConfig().replace(step_code=24, step_search=3, step_tie=0.01)
    s = _bare(cfg, {24: 1.001, 20: 0.999}, 1.0)  # 24 within the tie, no gain
    assert s.choose_step().J == 0.999 and s.step_code == 20
    s = _bare(cfg, {24: 1.002, 20: 1.001}, 1.0)  # nothing pays: the tie holds
    assert s.choose_step().J == 1.002 and s.step_code == 24


def test_no_update_at_any_step_keeps_the_finest():
    s = _bare(AdaptConfig().replace(step_code=24, step_search=2), {})
    assert s.choose_step() is None
    assert s.step_code == 24
    assert s.step_J == {24: 1.0, 20: 1.0, 16: 1.0}


def test_step_search_zero_tries_only_the_step_code():
    s = _bare(AdaptConfig().replace(step_code=24, step_search=0), {24: 2.0, 20: 0.1})
    assert s.choose_step().J == 2.0
    assert list(s.step_J) == [24]
    with pytest.raises(ValueError, match="step_search"):
        AdaptConfig().replace(step_search=-1)


@pytest.mark.parametrize("name", NAMES)
def test_the_update_is_sent_at_the_chosen_step(name):
    base, lora = small_pair(name, n=8)
    lora.adapt_config = AdaptConfig().replace(
        **{**FAST, "lmbda": 1.0, "adapt_steps": 12}
    )
    x = pixel_art()
    out, x_hat = roundtrip(lora, x)
    stats = lora.last_adaptation
    costs = stats["step_J"]
    assert list(costs) == [24, 20, 16, 12]
    refined = stats["J"]["refined"]
    pool = {c: j for c, j in costs.items() if j < refined} or costs
    tie = min(pool.values()) + lora.adapt_config.tuning.step_tie * abs(refined)
    assert stats["step_code"] == next(c for c, j in pool.items() if j <= tie)
    check_sent_cost(out, x_hat, x, 1.0, stats, base)
    if stats["choice"] == "update":
        sent = lora.decode_update(out["strings"][-1][0])
        assert {u.step for u in sent.values()} == {step_from_code(stats["step_code"])}


def test_a_coarse_update_decodes_exactly_in_a_fresh_model(monkeypatch):
    monkeypatch.setattr(ImageUpdate, "step_codes", lambda self: [12])
    base, lora = small_pair("bmshj2018-hyperprior-lora")
    cfg = AdaptConfig().replace(
        **{**FAST, "lmbda": 1.0, "refine_steps": 0, "adapt_steps": 15, "gate_steps": 6}
    )
    lora.adapt_config = cfg
    x = pixel_art()
    out, x_hat = roundtrip(lora, x)
    assert lora.last_adaptation["choice"] == "update"
    sent = lora.decode_update(out["strings"][-1][0])
    assert {u.step for u in sent.values()} == {step_from_code(12)}
    assert torch.equal(fresh_decode("bmshj2018-hyperprior-lora", base, out), x_hat)


class _Due:
    """A deadline that is due from its ``n``-th look on."""

    def __init__(self, n: int):
        self.looks, self.n = 0, n

    def due(self) -> bool:
        self.looks += 1
        return self.looks > self.n


@pytest.mark.parametrize("looks, codings", [(0, 1), (4, 5), (None, 7)])
def test_past_the_deadline_the_decision_codes_no_more(looks, codings):
    s = _bare(AdaptConfig().replace(step_code=24, step_search=3), {})
    s.open, s.names, s.first_block = [0, 1, 2], ["a", "b", "c"], lambda: 0
    coded = []
    # every layer pays 0.1 of J: the more open, the cheaper
    s.real = lambda layers, code=None: (
        coded.append(code) or SimpleNamespace(J=0.5 - 0.1 * len(layers))
    )
    s.decide(0, None if looks is None else _Due(looks))
    assert len(coded) == codings
    assert s.open == [0, 1, 2] and s.best.J == pytest.approx(0.2)
    cut = [n for n, g in s.gates.items() if g.get("by") == "budget"]
    assert cut == {1: ["a", "b", "c"], 5: ["b", "c"], 7: []}[codings]
    assert all(g["open"] for g in s.gates.values())
