"""Discretized Laplace priors for the quantized low-rank factors.

The encoder picks, per transmitted tensor, one scale from a fixed table of
``len(SCALES)`` Laplace scales (in units of the quantization step) and sends
its 4-bit index; the decoder rebuilds the same integer CDF tables, so the
factors are range-coded with compressai's rANS coder under a prior that fits
them (small scales make zeros nearly free).  ``bits()`` is the differentiable
rate used while optimizing; ``table_bits()`` the cost under the integer
tables the coder really uses.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from .host import integer_cdf

__all__ = [
    "SCALES",
    "PRECISION",
    "cdf_tables",
    "bits",
    "tensor_bits",
    "table_bits",
    "best_scale",
]

#: Laplace scales, in quantization steps: 0.05 * 2 ** (0.6 * j), j = 0..15
#: (0.05 to 25.6; at the smallest a zero costs under 0.001 bit).
SCALES = tuple(0.05 * 2 ** (0.6 * j) for j in range(16))
PRECISION = 16
_TAIL = 1e-6
_MAX_SUPPORT = 2048


def _support(scale: float) -> int:
    """Half-width L of the coded range [-L, L]; larger values are escaped."""
    return min(int(math.ceil(scale * math.log(1.0 / _TAIL))) + 1, _MAX_SUPPORT)


def _pmf(q: Tensor, scale) -> Tensor:
    """P(q) of the Laplace(0, scale) distribution discretized on integers."""
    a = q.abs()
    d = a - 0.5
    upper = 0.5 * torch.exp(-(a + 0.5) / scale)  # 1 - F(|q| + 0.5)
    # 1 - F(|q| - 0.5), by branch; each exponent is clamped to <= 0 so the
    # branch torch.where discards has no inf (whose 0 * inf gradient is NaN)
    outer = 0.5 * torch.exp(-d.clamp_min(0) / scale)  # |q| >= 0.5
    inner = 1.0 - 0.5 * torch.exp(d.clamp_max(0) / scale)  # |q| < 0.5
    return torch.where(a >= 0.5, outer, inner) - upper


@functools.lru_cache(maxsize=None)
def cdf_tables() -> tuple[list[list[int]], list[int], list[int]]:
    """(cdfs, cdf_lengths, offsets) for compressai's ``encode_with_indexes``."""
    cdfs, lengths, offsets = [], [], []
    for scale in SCALES:
        support = _support(scale)
        q = torch.arange(-support, support + 1, dtype=torch.float64)
        pmf = _pmf(q, scale)
        tail = max(1.0 - float(pmf.sum()), 1e-9)
        cdf = integer_cdf(pmf.tolist() + [tail], PRECISION)
        cdfs.append(cdf)
        lengths.append(len(cdf))
        offsets.append(-support)
    width = max(lengths)
    cdfs = [c + [0] * (width - len(c)) for c in cdfs]
    return cdfs, lengths, offsets


def bits(q: Tensor, scale_index: int) -> Tensor:
    """Differentiable code length (bits) of integer-valued ``q`` (any shape)."""
    p = _pmf(q, SCALES[scale_index]).clamp_min(2.0**-PRECISION)
    return -torch.log2(p).sum()


def tensor_bits(q: Tensor) -> Tensor:
    """Differentiable bits of ``q`` coded under its best table scale.

    A soft minimum over the scales of the tensor's total code length, so the
    rate follows the encoder's per-tensor choice of scale as the values grow
    (a hard choice would price the first nonzero value of an all-zero tensor
    at the narrowest scale, a wall the optimizer cannot see past).  Includes
    the 4 bits of the scale index sent in the stream header.
    """
    scales = q.new_tensor(SCALES).view(-1, 1)
    p = _pmf(q.reshape(1, -1), scales).clamp_min(2.0**-PRECISION)
    per_scale = -torch.log2(p).sum(dim=1)
    softmin = -torch.logsumexp(-per_scale * math.log(2), dim=0) / math.log(2)
    return softmin + math.log2(len(SCALES))  # plus the 4-bit scale index


@functools.lru_cache(maxsize=None)
def _table_costs(scale_index: int) -> Tensor:
    cdfs, lengths, _ = cdf_tables()
    cdf = torch.tensor(cdfs[scale_index][: lengths[scale_index]], dtype=torch.float64)
    freq = (cdf[1:] - cdf[:-1]).clamp_min(1)
    return -torch.log2(freq / 2**PRECISION)


def table_bits(q: Tensor, scale_index: int) -> float:
    """Code length of integer ``q`` under the coder's integer table.

    Values outside the table cost the escape symbol plus compressai's bypass
    code (about ``2 * log2|v| + 4`` bits); the estimate is within a few bits of
    the real stream.
    """
    costs = _table_costs(scale_index)
    support = (costs.numel() - 2) // 2
    idx = q.detach().to(torch.int64).flatten().cpu() + support
    inside = (idx >= 0) & (idx <= 2 * support)
    total = costs[idx[inside]].sum().item()
    n_out = int((~inside).sum())
    if n_out:
        v = (idx[~inside] - support).abs().double()
        total += n_out * costs[-1].item() + (2 * torch.log2(v + 1) + 4).sum().item()
    return total


def best_scale(q: Tensor) -> int:
    """Index of the table scale that codes ``q`` in the fewest bits."""
    return min(range(len(SCALES)), key=lambda j: table_bits(q, j))
