"""Bjontegaard delta rate and PSNR between two rate-distortion curves.

G. Bjontegaard, "Calculation of average PSNR differences between RD-curves",
VCEG-M33, 2001.  Each curve is a set of (rate, quality) points, quality in dB
(PSNR, or MS-SSIM as ``-10 * log10(1 - ms_ssim)``).

``bd_rate`` interpolates the natural log of the rate as a function of the
quality, for each curve, integrates both interpolants over the quality range
the curves share, and turns the mean log-rate difference into a percentage:
``(exp(mean(log R_test - log R_anchor)) - 1) * 100``.  Negative means the test
codec needs fewer bits for the same quality.  ``bd_psnr`` swaps the roles
(quality as a function of log-rate, mean difference in dB).

Interpolation (``method``):

* ``"pchip"`` (default): piecewise cubic Hermite interpolation with
  Fritsch-Carlson slopes, ``scipy.interpolate.PchipInterpolator``, integrated
  exactly (``.integrate``).  It passes through every point, never overshoots
  between them, and is what the widely used ``bjontegaard`` Python package
  and the JVET common-test-conditions spreadsheet use.
* ``"cubic"``: the original VCEG-M33 method, one least-squares cubic
  polynomial per curve (exact for 4 points).

A curve whose rate is a constant factor ``k`` times the anchor's at every
quality gives exactly ``(k - 1) * 100`` percent with either method.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy.interpolate import PchipInterpolator

__all__ = ["bd_rate", "bd_psnr", "METHODS"]

METHODS = ("pchip", "cubic")


def _points(xs: Sequence[float], ys: Sequence[float], what: str):
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"{what}: rates and qualities must be 1-D of equal length")
    if len(x) < 4:
        raise ValueError(f"{what}: BD metrics need at least 4 points, got {len(x)}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError(f"{what}: rates and qualities must be finite")
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    if np.any(np.diff(x) <= 0):
        raise ValueError(f"{what}: the interpolation variable has repeated values")
    return x, y


def _log_rates(*rates: Sequence[float]) -> list[np.ndarray]:
    """Natural logs of each curve's rates (which must be > 0)."""
    out = []
    for r in rates:
        r = np.asarray(r, dtype=np.float64)
        if np.any(r <= 0):
            raise ValueError("rates must be > 0")
        out.append(np.log(r))
    return out


def _pchip_integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    """Integral over [lo, hi] of scipy's PCHIP interpolant through (x, y)."""
    return float(PchipInterpolator(x, y).integrate(lo, hi))


def _cubic_integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    p = np.polyint(np.polyfit(x, y, 3))
    return float(np.polyval(p, hi) - np.polyval(p, lo))


def _mean_difference(xa, ya, xt, yt, method: str) -> float:
    if method not in METHODS:
        raise ValueError(f'Unknown method "{method}", choose from {METHODS}')
    lo = max(xa[0], xt[0])
    hi = min(xa[-1], xt[-1])
    if not hi > lo:
        raise ValueError("the two curves do not overlap")
    integral = _pchip_integral if method == "pchip" else _cubic_integral
    return (integral(xt, yt, lo, hi) - integral(xa, ya, lo, hi)) / (hi - lo)


def _bd_function(delta: str, doc: str) -> Callable[..., float]:
    """``bd_rate`` (``delta="rate"``) or ``bd_psnr`` (``"psnr"``), one signature."""

    def bd(
        rate_anchor: Sequence[float],
        quality_anchor: Sequence[float],
        rate_test: Sequence[float],
        quality_test: Sequence[float],
        method: str = "pchip",
    ) -> float:
        la, lt = _log_rates(rate_anchor, rate_test)
        if delta == "psnr":  # quality as a function of log-rate
            la, qa = _points(la, quality_anchor, "anchor")
            lt, qt = _points(lt, quality_test, "test")
            return float(_mean_difference(la, qa, lt, qt, method))
        qa, la = _points(quality_anchor, la, "anchor")
        qt, lt = _points(quality_test, lt, "test")
        return float((np.exp(_mean_difference(qa, la, qt, lt, method)) - 1) * 100)

    bd.__name__ = bd.__qualname__ = f"bd_{delta}"
    bd.__doc__ = doc
    return bd


bd_rate = _bd_function(
    "rate",
    """Average rate difference of the test curve vs the anchor, in percent.

    Args:
        rate_anchor: rates (e.g. bpp) of the anchor, at least 4 points
        quality_anchor: qualities in dB of the anchor (distinct values)
        rate_test: rates of the tested codec, at least 4 points
        quality_test: qualities in dB of the tested codec
        method: ``"pchip"`` (default) or ``"cubic"`` (see the module docstring)

    Raises:
        ValueError: fewer than 4 points, non-positive rates, repeated
            qualities, or curves whose quality ranges do not overlap.
    """,
)
bd_psnr = _bd_function(
    "psnr",
    """Average quality difference (dB) of the test curve vs the anchor.

    Same arguments as :func:`bd_rate`; rates must be distinct per curve.
    """,
)
