"""Phase 2's further starts (issue 10): past twice its annealing span, the
refinement's best latents of its first half (quarter, ...) get the update the
schedule of half (a quarter, ...) the steps trains on them; the update of the
lowest real J competes with the one trained on the final latents, so a
schedule has every candidate of its half.

A longer refinement can take the gain the update would have had (dodge at
``paper``: latents 1.05% cheaper than at 1000 steps, the update's gain 0.0045
instead of 0.0075), and a longer update training can end costlier than a
shorter one (1536016414 at ``paper``: +0.84% over 1000 + 1000 when the 1000
steps' latents only got a warm-up).
"""

from __future__ import annotations

import pytest
import torch
from conftest import build_host, build_lora
from test_adapt import FAST, check_sent_cost, pixel_art, real_J, roundtrip
from test_batched import _alone, _assert_same_result, _compress

from compressai_lora.adapt import AdaptConfig
from compressai_lora.adapt.update import ImageUpdate
from compressai_lora.zoo import model_architectures

NAMES = sorted(model_architectures)
#: 40 refinement steps annealed over 10: further starts at steps 20 and 10,
#: their updates trained 8 and 4 steps (the schedules 20 + 8 and 10 + 4)
LONG = {
    **FAST,
    "lmbda": 0.05,
    "refine_steps": 40,
    "refine_anneal": 10,
    "adapt_steps": 16,
    "gate_steps": 4,
}
HALF = {"refine_steps": 20, "adapt_steps": 8}


def _only(monkeypatch, start: str) -> None:
    """Every update but the one on the latents named ``start`` pays nothing."""
    real = ImageUpdate.result

    def result(self, iters):
        update, stats = real(self, iters)
        return (update if self.refined.name == start else None), stats

    monkeypatch.setattr(ImageUpdate, "result", result)


def _pair(name: str):
    """A small random host (latents not all zero) and its ``-lora`` model."""
    base = build_host(model_architectures[name].host_arch)
    lora = build_lora(name, base.state_dict())
    lora.update(force=True)
    return base, lora


def _fresh_decode(name: str, base, out):
    fresh = build_lora(name, base.state_dict())
    fresh.update(force=True)
    with torch.no_grad():
        return fresh.decompress(out["strings"], out["shape"])["x_hat"]


def _run(name: str, **changes):
    base, lora = _pair(name)
    lora.adapt_config = AdaptConfig(**{**LONG, **changes})
    x = pixel_art()
    out, x_hat = roundtrip(lora, x)
    return base, lora, x, out, x_hat, lora.last_adaptation


def test_early_steps_are_the_halvings_past_the_annealing_span():
    assert AdaptConfig().early_steps() == []  # default: 400 steps, annealed over 400
    assert AdaptConfig.preset("fast").early_steps() == []  # anneals over its phase
    assert AdaptConfig.preset("paper").early_steps() == [1000, 500]
    assert AdaptConfig(refine_steps=1000).early_steps() == [500]
    assert AdaptConfig(refine_steps=799).early_steps() == []
    assert AdaptConfig.preset("paper", early_start=False).early_steps() == []
    assert AdaptConfig(refine_steps=1000, refine_anneal=None).early_steps() == []
    no_room = AdaptConfig(refine_steps=1000, adapt_steps=100, gate_steps=100)
    assert no_room.early_steps() == []  # phase 2 ends at its decision


def test_each_start_trains_the_shorter_schedules_update_steps():
    paper = AdaptConfig.preset("paper")  # 2000 + 2000
    assert [paper.early_adapt_steps(s) for s in paper.early_steps()] == [1000, 500]
    odd = AdaptConfig(refine_steps=1000, adapt_steps=351)
    assert [odd.early_adapt_steps(s) for s in odd.early_steps()] == [175]
    assert AdaptConfig(**LONG).early_adapt_steps(10) == 4
    with pytest.raises(ValueError, match="not a halving"):
        paper.early_adapt_steps(700)


def test_the_early_latents_are_the_shorter_refinements():
    *_, long = _run("cheng2020-attn-lora")
    for steps in (20, 10):
        *_, short = _run("cheng2020-attn-lora", refine_steps=steps, early_start=False)
        assert long["J"][f"refined@{steps}"] == short["J"]["refined"]
    assert long["J"]["refined"] < long["J"]["refined@20"]  # it went on improving
    costs = long["start_J"]  # the real J of each start's update
    assert list(costs) == ["refined", "refined@20", "refined@10"]
    paid = {k: j for k, j in costs.items() if j is not None}
    assert long["update_start"] == min(paid, key=paid.get)
    assert long["J"]["update"] == min(paid.values())


def test_a_schedule_has_every_candidate_of_its_half():
    """Each start's update is the one the shorter schedule trains (to the
    last digit), so doubling both step counts never sends a costlier file."""
    name = "cheng2020-attn-lora"
    *_, long = _run(name)
    *_, half = _run(name, **HALF)  # 20 + 8: its own start at step 10 (4 steps)
    assert half["start_J"]["refined"] == long["start_J"]["refined@20"]
    assert half["start_J"]["refined@10"] == long["start_J"]["refined@10"]
    assert half["J"]["refined"] == long["J"]["refined@20"]
    assert long["start_J"]["refined@20"] is not None  # an update paid there
    assert min(long["J"].values()) <= min(half["J"].values())
    assert long["start_J"]["refined"] != long["start_J"]["refined@20"]


def test_a_start_with_the_final_latents_still_trains_its_half():
    # the refinement finds nothing after its first steps: the earlier latents
    # are the final ones, and each still gets its shorter schedule's update
    *_, stats = _run("bmshj2018-factorized-lora", refine_lr=1e-9)
    assert stats["J"]["refined@20"] == stats["J"]["refined"]
    assert stats["J"]["refined@10"] == stats["J"]["refined"]
    assert list(stats["start_J"]) == ["refined", "refined@20", "refined@10"]


@pytest.mark.parametrize("name", NAMES)
def test_an_update_from_the_early_start_round_trips(name, monkeypatch):
    _only(monkeypatch, "refined@20")
    base, lora, x, out, x_hat, stats = _run(name)
    assert stats["update_start"] == "refined@20"
    assert stats["choice"] == "update"
    check_sent_cost(out, x_hat, x, LONG["lmbda"], stats, base)
    assert torch.equal(_fresh_decode(name, base, out), x_hat)
    bare = out["strings"][:-1] + [[b""]]  # the sent latents without the update
    with torch.no_grad():
        latents_only = lora.decompress(bare, out["shape"])["x_hat"]
    sent_latents = real_J(bare, latents_only, x, LONG["lmbda"])
    assert sent_latents == pytest.approx(stats["J"]["refined@20"], rel=1e-5)
    assert sent_latents != pytest.approx(stats["J"]["refined"], rel=1e-6)


def test_the_refined_start_gives_the_single_start_bytes(monkeypatch):
    _only(monkeypatch, "refined")  # the final latents' update trains as alone
    name = "cheng2020-attn-lora"
    *_, out, _, stats = _run(name)
    *_, single_out, _, single = _run(name, early_start=False)
    assert stats["update_start"] == "refined"
    assert stats["start_J"]["refined@20"] is None
    assert out["strings"] == single_out["strings"]
    assert stats["J"]["update"] == single["J"]["update"]


def test_a_batch_keeps_each_images_start():
    _, model = _pair("bmshj2018-factorized-lora")
    model.adapt_config = AdaptConfig(**LONG)
    x = torch.cat([pixel_art(seed=0), pixel_art(seed=1)])
    alone = _alone(model, x)
    assert all("update_start" in st for _, st, _ in alone)
    _, stats, _ = _compress(model, x, batch_size=2)
    for n, (_, st, _) in enumerate(alone):
        _assert_same_result(stats[n], st)
        assert stats[n].get("update_start") == st.get("update_start")
