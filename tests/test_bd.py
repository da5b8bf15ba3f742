"""Bjontegaard metrics (compressai_lora.utils.bd)."""

import math

import numpy as np
import pytest

from compressai_lora.utils.bd import _pchip_integral, bd_psnr, bd_rate

RATES = [0.1, 0.2, 0.4, 0.8]
PSNRS = [30.0, 32.0, 34.0, 36.0]


@pytest.mark.parametrize("method", ["pchip", "cubic"])
@pytest.mark.parametrize("factor", [0.9, 1.0, 1.25])
def test_constant_rate_factor(method, factor):
    # The same qualities at k times the rate: exactly (k - 1) * 100 percent.
    rates = [r * factor for r in RATES]
    assert bd_rate(RATES, PSNRS, rates, PSNRS, method) == pytest.approx(
        (factor - 1) * 100, abs=1e-9
    )


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_hand_computed_linear(method):
    # Anchor: ln R linear in PSNR (rate doubles every 2 dB).  Test: points at
    # 31, 33, 35, 37 dB with ln R_t(p) = ln R_a(p) + c (p - 30).  Both curves
    # are linear, so either interpolation is exact; the shared range is
    # [31, 36], where the mean of c (p - 30) is 3.5 c.  With c = ln(1.1) / 3.5
    # the BD-rate is exp(ln 1.1) - 1 = +10 %.
    c = math.log(1.1) / 3.5

    def log_rate_anchor(p):
        return math.log(0.1) + (p - 30) * math.log(2) / 2

    psnr_t = [31.0, 33.0, 35.0, 37.0]
    rate_t = [math.exp(log_rate_anchor(p) + c * (p - 30)) for p in psnr_t]
    assert bd_rate(RATES, PSNRS, rate_t, psnr_t, method) == pytest.approx(
        10.0, abs=1e-9
    )


def test_bd_psnr_shift():
    # +0.5 dB at every rate.
    assert bd_psnr(RATES, PSNRS, RATES, [p + 0.5 for p in PSNRS]) == pytest.approx(
        0.5, abs=1e-12
    )


def test_order_of_points_does_not_matter():
    rates = [0.85, 0.19, 0.41, 0.1]
    psnrs = [36.1, 31.9, 34.2, 30.2]
    a = bd_rate(RATES, PSNRS, rates, psnrs)
    b = bd_rate(RATES, PSNRS, sorted(rates), sorted(psnrs))
    assert a == pytest.approx(b, abs=1e-12)


def test_pchip_values_of_the_hand_written_implementation():
    # Pinned from the Fritsch-Carlson PCHIP this module implemented by hand
    # before it moved to scipy: uneven points, curves that cross in slope.
    anchor = ([0.08, 0.17, 0.33, 0.61, 1.02], [27.9, 30.4, 33.1, 35.6, 37.8])
    test = ([0.07, 0.16, 0.29, 0.58, 0.93], [28.3, 30.9, 33.2, 36.1, 38.0])
    assert bd_rate(*anchor, *test) == pytest.approx(-16.55754571450573, abs=1e-9)
    assert bd_psnr(*anchor, *test) == pytest.approx(0.6953147203479074, abs=1e-9)


def test_pchip_integral_of_a_line_is_exact():
    rng = np.random.RandomState(0)
    for _ in range(10):
        x = np.sort(rng.rand(6) * 10)
        a, b = rng.randn(2)
        lo, hi = x[0] + 0.1, x[-1] - 0.2
        exact = a / 2 * (hi**2 - lo**2) + b * (hi - lo)
        assert _pchip_integral(x, a * x + b, lo, hi) == pytest.approx(exact, abs=1e-10)


@pytest.mark.parametrize(
    "rates,psnrs,match",
    [
        (RATES[:3], PSNRS[:3], "at least 4 points"),
        (RATES, [30.0, 30.0, 34.0, 36.0], "repeated"),
        ([0.0, 0.2, 0.4, 0.8], PSNRS, "> 0"),
        (RATES, [40.0, 41.0, 42.0, 43.0], "do not overlap"),
    ],
)
def test_errors(rates, psnrs, match):
    with pytest.raises(ValueError, match=match):
        bd_rate(RATES, PSNRS, rates, psnrs)
    with pytest.raises(ValueError, match="method"):
        bd_rate(RATES, PSNRS, RATES, PSNRS, method="akima")
