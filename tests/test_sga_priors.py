"""SGA rounding, the update priors, and padding used by the adaptation."""

import math

import pytest
import torch

from compressai_lora.adapt.sga import (
    SCALE,
    TAU_MAX,
    TAU_MIN,
    sga_round,
    temperature,
)
from compressai_lora.padding import pad_to_multiple
from compressai_lora.priors import (
    SCALES,
    best_scale,
    bits,
    cdf_tables,
    table_bits,
    tensor_bits,
)


def test_temperature_anneals_from_max_to_min():
    assert temperature(0.0) == pytest.approx(TAU_MAX)
    assert temperature(1.0) == temperature(2.0) == pytest.approx(TAU_MIN)
    taus = [temperature(t / 9) for t in range(10)]
    assert taus == sorted(taus, reverse=True)


def test_sga_picks_floor_or_ceil_and_is_seeded():
    x = torch.linspace(-3, 3, 1001)
    g = torch.Generator().manual_seed(0)
    out = sga_round(x, 1e-3, g)  # cold: one-hot mix of floor / ceil
    assert torch.all((out >= torch.floor(x) - 1e-6) & (out <= torch.ceil(x) + 1e-6))
    near = (x - x.round()).abs() < 0.05
    assert torch.allclose(out[near], x.round()[near], atol=1e-3)
    a = sga_round(x, 0.5, torch.Generator().manual_seed(1))
    b = sga_round(x, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_sga_draws_floor_or_ceil_with_the_sigmoid_scaled_logit():
    # at temperature 1 the hard choice follows sigmoid(SCALE * logit(d)) at
    # distance d from the floor (SGA+); SGA's atanh gives 0.36 at d = 0.3
    x = torch.full((20000,), 2.3)
    out = sga_round(x, 1.0, torch.Generator().manual_seed(0))
    ceil_share = float(((out - 2.0) > 0.5).float().mean())
    want = 1 / (1 + math.exp(-SCALE * math.log(0.3 / 0.7)))
    assert ceil_share == pytest.approx(want, abs=0.01)


def test_sga_has_gradients():
    x = torch.tensor([0.3, 1.7, -2.2], requires_grad=True)
    sga_round(x, 0.5, torch.Generator().manual_seed(0)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("j", [0, 5, 15])
def test_differentiable_bits_match_the_coder_tables(j):
    g = torch.Generator().manual_seed(j)
    u = torch.rand(2000, generator=g) - 0.5  # Laplace samples at the table's scale
    q = torch.round(-SCALES[j] * torch.sign(u) * torch.log1p(-2 * u.abs()))
    est = bits(q, j).item()
    real = table_bits(q, j)
    assert est == pytest.approx(real, rel=0.05, abs=2.0)


def test_small_scales_make_zeros_nearly_free_and_best_scale_fits():
    zeros = torch.zeros(1000)
    assert table_bits(zeros, 0) < 0.01 * 1000
    wide = torch.round(
        torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 20
    )
    j = best_scale(wide)
    assert 11 <= j <= 15  # a scale near 20 steps
    assert table_bits(wide, j) <= min(table_bits(wide, k) for k in range(16)) + 1e-9


def test_cdf_tables_cover_every_scale():
    cdfs, lengths, offsets = cdf_tables()
    assert len(cdfs) == len(lengths) == len(offsets) == len(SCALES)
    assert all(o < 0 for o in offsets)
    assert all(c[length - 1] == 2**16 for c, length in zip(cdfs, lengths))


@pytest.mark.parametrize("size", [(1, 1), (5, 64), (64, 64), (65, 3)])
def test_pad_to_multiple(size):
    x = torch.rand(1, 3, *size)
    p = pad_to_multiple(x, 64)
    assert p.shape[-2] % 64 == 0 and p.shape[-1] % 64 == 0
    assert torch.equal(p[..., : size[0], : size[1]], x)
    assert p.shape[-2] - size[0] < 64 and math.isfinite(float(p.sum()))


def test_tensor_bits_follow_the_best_scale():
    g = torch.Generator().manual_seed(0)
    for q in (torch.zeros(100), torch.round(torch.randn(300, generator=g) * 5)):
        real = table_bits(q, best_scale(q)) + 4
        assert tensor_bits(q).item() == pytest.approx(real, abs=4.5, rel=0.02)
    x = torch.zeros(50, requires_grad=True)
    tensor_bits(x + torch.tensor([1.0] + [0.0] * 49)).backward()
    assert torch.isfinite(x.grad).all() and x.grad[0] > 0


def test_rate_gradients_are_finite_far_in_the_tails():
    x = torch.tensor([0.0, 0.4, 3.0, 40.0, 900.0], requires_grad=True)
    tensor_bits(x).backward()
    assert torch.isfinite(x.grad).all()
    y = torch.tensor([0.0, 40.0], requires_grad=True)
    bits(y, 0).backward()
    assert torch.isfinite(y.grad).all()
