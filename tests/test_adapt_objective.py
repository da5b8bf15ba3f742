"""The adaptation's objective against the real coder, its gates, its budget."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_determinism import _image, _model  # noqa: E402  (same directory)

from compressai_lora import host
from compressai_lora.adapt import AdaptConfig
from compressai_lora.adapt.candidates import Target, latent_candidate
from compressai_lora.adapt.objective import distortion, rate_bpp
from compressai_lora.checkpoint import load_state_dict
from compressai_lora.latents import (
    analyse,
    decoder_context,
    is_autoregressive,
    latent_terms,
)
from compressai_lora.zoo import model_architectures

ROOT = Path(__file__).resolve().parents[1]
AR = [n for n in sorted(model_architectures) if n.startswith(("mbt2018-l", "cheng"))]


@pytest.mark.parametrize("name", AR)
def test_decoder_context_is_the_serial_decoders_y_hat(name):
    model, x = _model(name), _image(0)
    assert is_autoregressive(model)
    with torch.no_grad():
        y, z = analyse(model, x)
        seen = []  # the y_hat the host's decoder feeds g_s
        hook = model.g_s.register_forward_pre_hook(lambda _, a: seen.append(a[0]))
        out = model.host_compress(x)
        model.host_decompress(out["strings"], out["shape"])
        hook.remove()
        anchored = decoder_context(model, y, z)
    assert torch.equal(anchored, seen[-1])


def _surrogate(model, x, y, z, context):
    with torch.no_grad():
        y_hat, liks = latent_terms(model, y, z, torch.round, context=context)
        bpp = float(rate_bpp(liks, x.size(-2) * x.size(-1)))
        x_hat = model.g_s(y_hat).clamp(0, 1)  # as the decoder clamps
        return bpp + 0.0067 * float(distortion(x_hat, x, "mse"))


@pytest.mark.parametrize(
    "sample", ["pyxel_10_platformer_f050", "colored-circles_72dpi"]
)
def test_anchored_objective_is_within_2_percent_of_the_real_cost(sample):
    """On the repository's q3 checkpoint, the refinement's checkpoint objective
    (context anchored on the decoder's y_hat) is the real J within 2%: the rest
    is the coder's discretized tables and the 8-bit rounding of the output.
    The bound is what docs/RESULTS.md measured (at most 1.3%) with a margin."""
    ckpt = ROOT / "weights" / "cheng2020-attn-N64-q3.pth.tar"
    model = model_architectures["cheng2020-attn-lora"].from_state_dict(
        load_state_dict(ckpt)
    )
    model.eval().update(force=True)
    with Image.open(ROOT / "samples" / f"{sample}.png") as im:
        rgb = np.asarray(im.convert("RGB"))[:128, :128]
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        y, z = analyse(model, x)
    real = latent_candidate(model, "base", Target(x, (0, 0), 0.0067, "mse"), x, y, z)
    anchored = _surrogate(model, x, y, z, decoder_context(model, y, z))
    assert abs(anchored / real.J - 1) < 0.02, (anchored, real.J)


def test_a_latent_candidate_is_what_the_decoder_gives(lora_model):
    """Its y_hat and x_hat (an autoregressive model's without decoding) are the
    real decoder's, bit for bit, and its strings are the host's."""
    image = torch.rand(1, 3, 64, 128, generator=torch.Generator().manual_seed(0))
    hooked = []
    hook = lora_model.g_s.register_forward_pre_hook(lambda _, a: hooked.append(a[0]))
    with torch.no_grad():
        y, z = analyse(lora_model, image)
        c = latent_candidate(
            lora_model, "base", Target(image, (0, 0), 0.01, "mse"), image, y, z
        )
        hooked.clear()
        out = lora_model.host_compress(image)
        x_hat = lora_model.host_decompress(c.strings, c.shape)["x_hat"]
    hook.remove()
    assert c.strings == out["strings"]
    assert torch.equal(c.extra["y_hat"], hooked[-1])
    assert torch.equal(c.x_hat, x_hat)


@pytest.mark.parametrize("name", AR)
def test_the_serial_coder_leaves_each_images_decoder_y_hat(name):
    model = _model(name)
    x = torch.rand(2, 3, 64, 128, generator=torch.Generator().manual_seed(1))
    hooked = []
    hook = model.g_s.register_forward_pre_hook(lambda _, a: hooked.append(a[0]))
    with torch.no_grad():
        with host.coded_y_hat(model) as seen, host.coded_y_hat(model) as inner:
            out = model.host_compress(x)
        model.host_decompress(out["strings"], out["shape"])
    hook.remove()
    assert len(seen) == len(inner) == 2  # nested: both see each image
    assert torch.equal(torch.cat(seen), hooked[-1])
    assert "_compress_ar" not in vars(model)  # unpatched


def test_gate_decisions_are_recorded_and_repeat():
    runs = []
    for _ in range(2):
        model = _model("cheng2020-anchor-lora")
        with torch.no_grad():
            model.compress(_image(0))
        runs.append(model.last_adaptation)
    gates = runs[0]["gates"]
    assert set(gates) == set(model.lora_layers)
    for decision in gates.values():
        assert decision["open"] == (decision["dJ"] > 0)
    assert runs[0]["gates"] == runs[1]["gates"]
    if runs[0]["choice"] == "update":  # what was sent was decided open
        assert set(runs[0]["open_gates"]) <= {n for n, d in gates.items() if d["open"]}


@pytest.mark.parametrize("budget", [1.0, 2.5])
def test_budget_is_respected_within_one_step(budget):
    model, x = _model("cheng2020-attn-lora"), _image(0)
    stamps: list[float] = []
    cfg = model.adapt_config.replace(
        refine_steps=100_000,
        adapt_steps=100_000,
        time_budget=budget,
        callback=lambda info: stamps.append(time.perf_counter()),
    )
    model.adapt_config = cfg
    with torch.no_grad():
        model.compress(x)
    stats = model.last_adaptation
    step = max(b - a for a, b in zip(stamps, stamps[1:]))
    spent = stats["refine_time"] + stats["adapt_time"]
    # the last checks code the best state for real: one more step's worth
    assert spent <= budget + 2 * step + 0.25, (spent, step)
    assert spent >= 0.8 * budget
    assert [s["reason"] for s in stats["stopped"]] == ["budget", "budget"]


def test_a_budget_cuts_the_gate_decision_short(monkeypatch):
    """With little of the budget for the update, the decision is cut short
    (the layers not looked at stay open) and the run keeps to its budget
    within a step and a coding or two."""
    from compressai_lora.adapt import update

    real, pause = update.update_candidate, 0.05
    monkeypatch.setattr(  # every real coding of the update takes a while
        update, "update_candidate", lambda *a, **k: time.sleep(pause) or real(*a, **k)
    )
    model, x = _model("cheng2020-attn-lora"), _image(0)
    budget, stamps = 2.0, []
    model.adapt_config = model.adapt_config.replace(
        refine_steps=100_000, adapt_steps=25_000, gate_steps=0, step_search=0,
        time_budget=budget,
        callback=lambda info: stamps.append((info["phase"], time.perf_counter())),
    )  # fmt: skip
    with torch.no_grad():
        model.compress(x)
    stats = model.last_adaptation
    # the update's share (0.4 s) is less than its 12 codings: some stay open
    assert any(g.get("by") == "budget" for g in stats["gates"].values())
    step = max(  # the longest step inside a phase
        b - a for (p, a), (q, b) in zip(stamps, stamps[1:]) if p == q
    )
    spent = stats["refine_time"] + stats["adapt_time"]
    assert spent <= budget + 2 * step + 0.25 + 2 * pause, (spent, step)


def test_budget_is_a_config_field_and_a_flag():
    import argparse

    from compressai_lora.utils.adapt_args import (
        adapt_config_from_args,
        add_adaptation_args,
    )

    parser = argparse.ArgumentParser()
    add_adaptation_args(parser)
    cfg = adapt_config_from_args(parser.parse_args(["--budget", "30"]))
    assert cfg.time_budget == 30.0
    with pytest.raises(ValueError, match="time_budget"):
        AdaptConfig(time_budget=0)


def test_budget_that_ends_the_warm_up_codes_the_update_once(monkeypatch):
    from compressai_lora.adapt import update

    codings = []
    real = update.update_candidate
    monkeypatch.setattr(
        update, "update_candidate", lambda *a, **k: codings.append(1) or real(*a, **k)
    )
    model, x = _model("bmshj2018-hyperprior-lora"), _image(0)
    model.adapt_config = model.adapt_config.replace(
        refine_steps=5, adapt_steps=100_000, gate_steps=100_000, time_budget=1.0
    )
    with torch.no_grad():
        model.compress(x)
    stats = model.last_adaptation
    assert stats["stopped"][-1]["phase"] == "adapt"
    gates = stats["gates"]
    assert gates and all(
        g == {"open": True, "dJ": None, "by": "budget"} for g in gates.values()
    )
    assert len(codings) == 1  # not once per layer


def test_a_decision_that_closes_every_layer_ends_the_update(monkeypatch):
    from compressai_lora.adapt.update import ImageUpdate

    real = ImageUpdate.decide

    def decide(self, t, deadline=None):
        real(self, t, deadline)
        self.open, self.best = [], None  # nothing pays

    monkeypatch.setattr(ImageUpdate, "decide", decide)
    model, x = _model("bmshj2018-hyperprior-lora"), _image(0)
    model.adapt_config = model.adapt_config.replace(
        refine_steps=2, adapt_steps=12, gate_steps=4
    )
    with torch.no_grad():
        model.compress(x)
    stats = model.last_adaptation
    # the refinement's 2 steps trained the update: 2 more before the decision
    assert (stats["gates_step"], stats["adapt_iters"]) == (2, 3)
    assert stats["choice"] != "update" and stats["update_bits"] == 0


def test_the_update_phase_starts_from_the_update_trained_with_the_latents(monkeypatch):
    from compressai_lora.adapt import update

    seen = []
    real = update.UpdatePhase.__init__

    def init(self, model, refined, targets, cfg, starts=None, warm=0):
        seen.append((starts, warm))
        real(self, model, refined, targets, cfg, starts, warm)
        first = self.states[0].factors  # trained in place later: copied now
        seen.append([{k: v.detach().clone() for k, v in f.items()} for f in first])

    monkeypatch.setattr(update.UpdatePhase, "__init__", init)
    model, x = _model("bmshj2018-hyperprior-lora"), _image(0)
    model.adapt_config = model.adapt_config.replace(
        refine_steps=6, adapt_steps=4, gate_steps=2, lmbda=0.05
    )
    with torch.no_grad():
        model.compress(x)
    (starts, warm), factors = seen
    assert warm == 6  # the refinement's steps trained it
    trained = [v for f in starts[0] for v in f.values()]
    assert any(bool(v.abs().sum() > 0) for v in trained)  # not the zero start
    assert all(
        torch.equal(a, b)
        for f, g in zip(starts[0], factors)
        for a, b in zip(f.values(), g.values())
    )
    assert model.last_adaptation["gates_step"] == 0  # warm: the gates decide at once
