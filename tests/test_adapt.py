"""Instance adaptation inside compress() (issue: latent refinement + update)."""

from __future__ import annotations

import pytest
import torch
from compressai.zoo.image import model_architectures as host_archs

import compressai_lora  # noqa: F401
from compressai_lora.adapt import AdaptConfig
from compressai_lora.zoo import cheng2020_attn_lora, model_architectures

FAST = dict(
    refine_steps=8,
    adapt_steps=8,
    gate_steps=3,
    lmbda=0.0067,
    refine_lr=0.05,
    adapt_lr=0.02,
    threads=1,
)


def small_pair(name: str, n: int = 16):
    host = model_architectures[name].host_arch
    args = (n,) if host.startswith("cheng2020") else (n, n)
    torch.manual_seed(0)
    base = host_archs[host](*args).eval()
    if hasattr(base, "context_prediction"):  # as trained: masked taps are zero
        base.context_prediction.weight.data *= base.context_prediction.mask
    base.update(force=True)
    lora = model_architectures[name].from_state_dict(base.state_dict()).eval()
    lora.update(force=True)
    return base, lora


def pixel_art(h: int = 64, w: int = 64, block: int = 8, seed: int = 0) -> torch.Tensor:
    """Flat-colour blocks: a synthetic out-of-domain image."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(3, -(-h // block), -(-w // block), generator=g)
    img = colours.repeat_interleave(block, 1).repeat_interleave(block, 2)
    return (img[:, :h, :w].unsqueeze(0) * 255).round() / 255  # an 8-bit image


def roundtrip(model, x):
    with torch.no_grad():
        out = model.compress(x)
        x_hat = model.decompress(out["strings"], out["shape"])["x_hat"]
    return out, x_hat


def fresh_decode(name: str, base, out):
    """``out`` decoded by a new ``name`` model built from ``base``'s weights."""
    fresh = model_architectures[name].from_state_dict(base.state_dict())
    fresh.update(force=True)
    with torch.no_grad():
        return fresh.eval().decompress(out["strings"], out["shape"])["x_hat"]


def real_J(strings, x_hat, x, lmbda):
    """RD cost of what was sent, from the bitstream alone: bpp over the bytes of
    all strings and the image's pixels, 255^2 * MSE of the 8-bit decoded image
    (independent of the adaptation's own bookkeeping)."""
    h, w = x.shape[-2:]
    bpp = 8 * sum(len(s[0]) for s in strings) / (h * w)
    decoded = (x_hat[..., :h, :w].clamp(0, 1) * 255).round()
    mse = (decoded - (x * 255).round()).pow(2).mean().item()
    return bpp + lmbda * mse


def host_J(host, x, lmbda):
    """Real RD cost of the host codec (no adaptation) on the same image."""
    out, x_hat = roundtrip(host, x)
    return real_J(out["strings"], x_hat, x, lmbda)


def check_sent_cost(out, x_hat, x, lmbda, stats, host):
    """The reported cost of the choice is that of the real bitstream, and the
    reported base cost that of the host codec; returns (sent J, host J)."""
    sent = real_J(out["strings"], x_hat, x, lmbda)
    ref = host_J(host, x, lmbda)
    assert stats["J"][stats["choice"]] == pytest.approx(sent, rel=1e-5)
    assert stats["J"]["base"] == pytest.approx(ref, rel=1e-5)
    return sent, ref


def test_zero_steps_is_the_host_codec():
    base, lora = small_pair("mbt2018-mean-lora")
    lora.adapt_config = AdaptConfig(refine_steps=0, adapt_steps=0, lmbda=0.01)
    x = pixel_art()
    out, x_hat = roundtrip(lora, x)
    ref, ref_hat = roundtrip(base, x)
    assert out["strings"][:-1] == ref["strings"]
    assert out["strings"][-1] == [b""]
    assert torch.equal(x_hat, ref_hat)


@pytest.mark.parametrize("name", ["cheng2020-attn-lora", "mbt2018-mean-lora"])
def test_adaptation_lowers_real_rd_cost(name):
    base, lora = small_pair(name)
    lora.adapt_config = AdaptConfig().replace(
        **{**FAST, "refine_steps": 20, "adapt_steps": 20}
    )
    x = pixel_art()
    out, x_hat = roundtrip(lora, x)
    stats = lora.last_adaptation
    sent, ref = check_sent_cost(out, x_hat, x, FAST["lmbda"], stats, base)
    assert sent < ref  # the bitstream sent beats the host codec's
    # the reported cost is the real one: bytes of the strings, decoded image
    n_bytes = sum(len(s[0]) for s in out["strings"])
    assert stats["bpp"][stats["choice"]] == pytest.approx(8 * n_bytes / 64**2)
    mse = ((x_hat * 255).round() - x * 255).pow(2).mean().item()
    assert stats["dist"][stats["choice"]] == pytest.approx(mse, rel=1e-5)


def test_update_decodes_exactly_in_a_fresh_model():
    base, lora = small_pair("bmshj2018-hyperprior-lora")
    cfg = AdaptConfig().replace(
        **{**FAST, "lmbda": 1.0, "refine_steps": 0, "adapt_steps": 15}
    )
    lora.adapt_config = cfg
    x = pixel_art()
    out, x_hat = roundtrip(lora, x)
    assert lora.last_adaptation["choice"] == "update"
    assert len(out["strings"][-1][0]) > 1
    assert torch.equal(fresh_decode("bmshj2018-hyperprior-lora", base, out), x_hat)


def test_same_seed_same_bytes_and_the_seed_drives_the_optimization():
    _, lora = small_pair("bmshj2018-factorized-lora")
    x = pixel_art()

    def run(seed):
        losses = []
        cfg = AdaptConfig().replace(**{**FAST, "lmbda": 1.0, "seed": seed})
        lora.adapt_config = cfg.replace(callback=lambda i: losses.append(i["loss"]))
        return roundtrip(lora, x)[0]["strings"], losses

    a, loss_a = run(0)
    b, loss_b = run(0)
    _, loss_c = run(1)
    assert a == b and loss_a == loss_b
    assert loss_a != loss_c  # SGA noise and gate initialization follow the seed


def test_never_worse_sends_no_update_when_it_does_not_pay():
    base, lora = small_pair("bmshj2018-hyperprior-lora")
    # lambda ~ 0: distortion is worthless, so no update can pay for its bits
    lora.adapt_config = AdaptConfig().replace(**{**FAST, "lmbda": 1e-9})
    x = pixel_art()
    out, x_hat = roundtrip(lora, x)
    stats = lora.last_adaptation
    assert stats["choice"] != "update"
    assert out["strings"][-1] == [b""]
    sent, ref = check_sent_cost(out, x_hat, x, 1e-9, stats, base)
    assert sent <= ref * (1 + 1e-6)


def test_non_finite_optimization_falls_back():
    base, lora = small_pair("mbt2018-mean-lora")
    # the update warms up past the refinement's steps: both phases diverge
    huge = {"refine_lr": 1e30, "adapt_lr": 1e30, "gate_steps": 12}
    cfg = AdaptConfig().replace(**{**FAST, **huge})
    lora.adapt_config = cfg
    x = pixel_art()
    out, x_hat = roundtrip(lora, x)
    stats = lora.last_adaptation
    assert torch.isfinite(x_hat).all()
    sent, ref = check_sent_cost(out, x_hat, x, FAST["lmbda"], stats, base)
    assert sent <= ref * (1 + 1e-6)
    # where and why each phase stopped is recorded
    assert [d["phase"] for d in stats["diverged"]] == ["refine", "adapt"]
    assert all(d["step"] >= 1 and d["reason"] for d in stats["diverged"])


def test_caller_padding_is_left_out_of_the_cost():
    """With ``input_padding``, bpp and distortion are the image's own pixels."""
    from compressai.ops import compute_padding
    from torch.nn.functional import pad

    _, lora = small_pair("mbt2018-mean-lora", n=8)
    lora.adapt_config = AdaptConfig().replace(
        **{**FAST, "refine_steps": 3, "adapt_steps": 3}
    )
    x = pixel_art(40, 50, block=5)
    p, _ = compute_padding(40, 50, min_div=64)
    xp = pad(x, p, mode="constant", value=0)
    with torch.no_grad(), lora.input_padding(p):
        out = lora.compress(xp)
        x_hat = lora.decompress(out["strings"], out["shape"])["x_hat"]
    stats = lora.last_adaptation
    n_bytes = sum(len(s[0]) for s in out["strings"])
    assert stats["bpp"][stats["choice"]] == pytest.approx(8 * n_bytes / (40 * 50))
    left, _, top, _ = p
    crop = x_hat[..., top : top + 40, left : left + 50]
    mse = ((crop * 255).round() - x * 255).pow(2).mean().item()
    assert stats["dist"][stats["choice"]] == pytest.approx(mse, rel=1e-5, abs=1e-6)
    assert lora._input_padding == (0, 0, 0, 0)  # only inside the block


@pytest.mark.parametrize("name", ["bmshj2018-factorized-lora", "mbt2018-lora"])
@pytest.mark.parametrize("size", [(8, 8), (33, 47), (1, 1)])
def test_small_and_odd_sizes(name, size):
    _, lora = small_pair(name, n=8)
    lora.adapt_config = AdaptConfig().replace(
        **{**FAST, "refine_steps": 3, "adapt_steps": 3}
    )
    x = pixel_art(*size, block=3)
    out, x_hat = roundtrip(lora, x)
    h, w = size
    assert x_hat.shape[-2] >= h and x_hat.shape[-1] >= w
    stats = lora.last_adaptation
    mse = ((x_hat[..., :h, :w] * 255).round() - x * 255).pow(2).mean().item()
    assert stats["dist"][stats["choice"]] == pytest.approx(mse, rel=1e-5, abs=1e-6)


def test_model_left_as_found_and_threads_restored():
    _, lora = small_pair("cheng2020-anchor-lora", n=8)
    # 2 + 2 steps: two threads on a loaded 2-core machine are slow
    steps = {"refine_steps": 2, "adapt_steps": 2, "gate_steps": 1}
    lora.adapt_config = AdaptConfig().replace(**{**FAST, **steps})
    before = {k: v.clone() for k, v in lora.state_dict().items()}
    flags = [p.requires_grad for p in lora.parameters()]
    torch.set_num_threads(1)
    seen = []
    lora.adapt_config = lora.adapt_config.replace(
        threads=2, callback=lambda info: seen.append((info, torch.get_num_threads()))
    )
    roundtrip(lora, pixel_art())
    assert torch.get_num_threads() == 1  # the host's setting is restored
    assert {info["phase"] for info, _ in seen} == {"refine", "adapt"}
    assert {n for _, n in seen} == {2}  # the optimization used the threads asked
    assert set(seen[0][0]) >= {"phase", "step", "steps", "loss", "bpp", "psnr"}
    after = lora.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert flags == [p.requires_grad for p in lora.parameters()]
    assert all(not m.gate for m in lora.adapters().values())
    # the trainer passes the factors in: nothing is assigned into the layers
    public = [
        v for m in lora.adapters().values() for k, v in vars(m).items() if k[0] != "_"
    ]
    assert public and not any(callable(v) for v in public)
    assert all(p.grad is None for p in lora.parameters())


def test_forward_eval_includes_update_likelihoods_train_is_host():
    base, lora = small_pair("bmshj2018-hyperprior-lora")
    lora.adapt_config = AdaptConfig().replace(**{**FAST, "lmbda": 1.0})
    x = pixel_art()
    with torch.no_grad():
        out = lora(x)
    n_update = len(lora.last_adaptation["J"]) and lora.last_adaptation["update_bits"]
    assert "update" in out["likelihoods"]
    lik = out["likelihoods"]["update"]
    assert -torch.log2(lik).sum().item() == pytest.approx(n_update)
    lora.train()
    base.train()
    torch.manual_seed(0)
    a = lora(x)
    torch.manual_seed(0)
    b = base(x)
    assert torch.equal(a["x_hat"], b["x_hat"])


def test_config_from_factory_kwargs_and_presets():
    m = cheng2020_attn_lora(quality=3, adapt=AdaptConfig(rank=3), refine_steps=7)
    assert m.adapt_config.rank == 3 and m.adapt_config.refine_steps == 7
    assert m.lora_rank == 3
    assert m.default_lmbda == 0.0067
    paper = AdaptConfig.preset("paper")
    assert (paper.refine_steps, paper.adapt_steps, paper.rank) == (2000, 2000, 2)
    with pytest.raises(ValueError, match="refine_steps"):
        AdaptConfig(refine_steps=-1)
    with pytest.raises(ValueError, match="Unknown preset"):
        AdaptConfig.preset("nope")


def test_checkpoint_model_without_lambda_raises_clearly():
    _, lora = small_pair("bmshj2018-factorized-lora", n=8)
    lora.adapt_config = AdaptConfig(refine_steps=1, adapt_steps=0)
    with pytest.raises(ValueError, match="lambda"):
        lora.compress(pixel_art())
