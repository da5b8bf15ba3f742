"""CompressAI's training lambdas and the lambda of a run."""

from __future__ import annotations

from typing import Any, Mapping, Optional

__all__ = ["LAMBDAS", "lmbda_for", "resolve_lmbda"]

#: CompressAI's training lambdas per quality level (mse / ms-ssim).
LAMBDAS = {
    "mse": (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800),
    "ms-ssim": (2.40, 4.58, 8.73, 16.64, 31.73, 60.50, 115.37, 220.0),
}


def lmbda_for(quality: int, metric: str = "mse") -> float:
    """Lambda of CompressAI's training table for ``quality`` and ``metric``."""
    if metric not in LAMBDAS:
        raise ValueError(f'Invalid metric "{metric}"')
    if not 1 <= quality <= len(LAMBDAS[metric]):
        raise ValueError(f'Invalid quality "{quality}", should be between (1, 8)')
    return LAMBDAS[metric][quality - 1]


def resolve_lmbda(
    given: Optional[float] = None,
    *,
    meta: Optional[Mapping[str, Any]] = None,
    quality: Optional[int] = None,
    metric: str = "mse",
) -> Optional[float]:
    """The lambda of a run: ``given``; else a checkpoint's ``meta["lmbda"]``;
    else the zoo table's for ``quality`` and ``metric``; else None.

    Raises:
        ValueError: ``quality`` or ``metric`` is not in the zoo's table.
    """
    if given is not None:
        return float(given)
    value = (meta or {}).get("lmbda")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None if quality is None else lmbda_for(quality, metric)
