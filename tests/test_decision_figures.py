"""benchmarks/decision_figures.py: every gate decision of a run, recorded."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from test_adapt import FAST, pixel_art, small_pair

from compressai_lora.adapt import AdaptConfig
from compressai_lora.adapt.update import ImageUpdate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import decision_figures  # noqa: E402


def test_each_decision_is_recorded_and_the_class_restored():
    _, lora = small_pair("cheng2020-attn-lora")
    # adapt_steps 8, gate_steps 3: a decision at step 3, and a retry at 6
    # when nothing pays there
    lora.adapt_config = AdaptConfig(**FAST, step_search=2)
    choose, decide = ImageUpdate.choose_step, ImageUpdate.decide
    better = ImageUpdate.better
    out: list[dict] = []
    with decision_figures.record_decisions(out), torch.no_grad():
        lora.compress(pixel_art())
    assert (ImageUpdate.choose_step, ImageUpdate.decide) == (choose, decide)
    assert ImageUpdate.better == better
    stats = lora.last_adaptation
    assert [d["step"] for d in out][-1] == stats["gates_step"]
    assert out[0]["step"] == 3
    last = out[-1]
    assert list(last["step_J"]) == [24, 20, 16]  # the codes tried, finest first
    assert last["step_code"] == stats["step_code"]
    assert set(stats["open_gates"]) <= set(last["open"])  # the pruning pass
    assert last["open"] == [k for k, v in last["dJ"].items() if v > 0]
    assert set(last["dJ"]) == set(lora.lora_layers)
    assert last["refined_J"] == stats["J"]["refined"]
    assert all(v["nonzero"] >= 0 for v in last["layers"].values())
    # the checkpoints after the decision: the sent update is at most the best
    assert stats["choice"] == "update" and last["checkpoints"]
    for j, nbytes in last["checkpoints"]:
        assert j >= stats["J"]["update"] and nbytes > 0
