"""``--compare-base``: the base codec's keys, deltas, BD-rate and RD plot."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Optional

from ..bd import bd_rate
from ..files import write_json
from ..plot import plot_rd
from .results import HOST_KEYS, average

__all__ = ["DELTA_KEYS", "add_base", "bd_rates", "rd_cost", "write_base_outputs"]

#: Keys compared with the base codec (``delta_<key>`` = ours - base).
DELTA_KEYS = ("psnr-rgb", "ms-ssim-rgb", "bpp", "rd_cost")


def rd_cost(rv: dict[str, Any], lmbda: Optional[float], metric: str):
    """bpp + lambda * 255^2 * MSE (or lambda * (1 - MS-SSIM)), as in training."""
    if lmbda is None:
        return None
    if metric == "ms-ssim":
        if rv.get("ms-ssim-rgb") is None:
            return None
        return rv["bpp"] + lmbda * (1 - rv["ms-ssim-rgb"])
    return rv["bpp"] + lmbda * 255**2 * 10 ** (-rv["psnr-rgb"] / 10)


def _mean_rd_cost(rvs: list[dict[str, Any]], lmbda: Optional[float], metric: str):
    return average([{"j": rd_cost(rv, lmbda, metric)} for rv in rvs])["j"]


def add_base(
    row: dict[str, Any],
    ours: list[dict[str, Any]],
    base: list[dict[str, Any]],
    lmbda: Optional[float],
    metric: str,
) -> dict[str, Any]:
    """Add ``base_*``, ``rd_cost`` and ``delta_*`` keys to ``row`` (the average
    of ``ours``) from the base codec's per-image results; return their average.
    """
    base_row = average(base)
    for key in HOST_KEYS:
        row[f"base_{key}"] = base_row[key]
    row["rd_cost"] = _mean_rd_cost(ours, lmbda, metric)
    row["base_rd_cost"] = _mean_rd_cost(base, lmbda, metric)
    for key in DELTA_KEYS:
        a, b = row.get(key), row.get(f"base_{key}")
        row[f"delta_{key}"] = a - b if None not in (a, b) else None
    return base_row


def bd_rates(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """BD-rate (%) of ours vs the base per quality metric, PCHIP on log-rate."""
    out: dict[str, Any] = {}
    for key, to_db in (
        ("psnr-rgb", lambda v: v),
        ("ms-ssim-rgb", lambda v: -10 * math.log10(1 - v)),
    ):
        ours = [(r["bpp"], r[key]) for r in rows]
        base = [(r["base_bpp"], r[f"base_{key}"]) for r in rows]
        if any(q is None for _, q in ours + base):
            continue
        try:
            out[key] = bd_rate(
                [b for b, _ in base],
                [to_db(q) for _, q in base],
                [b for b, _ in ours],
                [to_db(q) for _, q in ours],
            )
        except (ValueError, ZeroDivisionError) as err:
            print(f"Warning: no BD-rate on {key}: {err}", file=sys.stderr)
    if out:
        out["method"] = "pchip on log-rate (Bjontegaard); negative: fewer bits"
    return out


def write_base_outputs(
    json_path: Path,
    base_path: Path,
    output: dict[str, Any],
    base_rows: list[dict[str, Any]],
) -> None:
    """The base curve as a host JSON at ``base_path``, and the RD plot of both
    curves beside ``json_path`` (``.png``)."""
    base_results = {k: [r[k] for r in base_rows] for k in HOST_KEYS}
    write_json(
        base_path,
        {
            "name": output["base"],
            "description": output["description"],
            "results": base_results,
        },
    )
    title = output["name"] + " vs base"
    if "psnr-rgb" in output.get("bd-rate", {}):
        title += f" (BD-rate {output['bd-rate']['psnr-rgb']:+.2f}%)"
    results = output["results"]
    plot_rd(
        json_path.with_suffix(".png"),
        [
            (output["base"], base_results["bpp"], base_results["psnr-rgb"], None),
            (output["name"], results["bpp"], results["psnr-rgb"], None),
        ],
        title,
    )
