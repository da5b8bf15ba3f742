"""Rate-distortion points from the adaptation statistics, averaged per domain.

Per image and rate point: ``base`` (the base latents), ``refine`` (the better
of base and refined latents by RD cost J) and ``full`` (the candidate the
encoder sent).  Per domain: bpp and PSNR averaged over the images, BD-rate and
BD-PSNR vs the base codec, and the mean over the out-of-domain domains.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Optional, Sequence

__all__ = [
    "METHODS",
    "METHOD_LABELS",
    "aggregate_domain",
    "aggregate_rate_point",
    "bd_metrics",
    "image_points",
    "psnr_from_dist",
    "summarize",
]

#: The three curves compared, in report order.
METHODS = ("base", "refine", "full")
METHOD_LABELS = {
    "base": "base codec",
    "refine": "latent refinement only",
    "full": "full method (refinement + update)",
}


def psnr_from_dist(dist: float) -> float:
    """PSNR (dB) from ``255^2 * MSE`` of 8-bit images in [0, 1]."""
    return 10 * math.log10(255**2 / max(float(dist), 1e-10))


def image_points(stats: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The three RD points of one image at one rate point.

    ``stats`` is the model's ``last_adaptation``: ``J``, ``bpp`` and ``dist``
    per candidate (``"base"``, ``"refined"``, ``"refined@STEP"`` for earlier
    refined latents, ``"update"``) and ``choice``.  Refinement only = the best
    latent candidate by J (ties: base, then the later latents), as a
    refinement-only encoder with the never-worse check would send.
    """
    J = stats["J"]
    latent = [k for k in J if k == "base" or k.startswith("refined")]
    picks = {
        "base": "base",
        "refine": min(latent, key=lambda k: J[k]),
        "full": stats["choice"],
    }
    return {
        m: {
            "candidate": k,
            "bpp": float(stats["bpp"][k]),
            "psnr-rgb": psnr_from_dist(stats["dist"][k]),
            "J": float(J[k]),
        }
        for m, k in picks.items()
    }


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def aggregate_rate_point(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Average one domain's images at one rate point.

    Each record holds ``stats`` (adaptation statistics), ``results`` (the
    -lora run's per-image results from eval_model), optionally
    ``base_results`` (the host base codec on the same image) and ``pixels``.
    """
    points = [image_points(r["stats"]) for r in records]
    out: dict[str, Any] = {"images": len(records)}
    lmbdas = {r["stats"].get("lmbda") for r in records} - {None}
    out["lmbda"] = lmbdas.pop() if len(lmbdas) == 1 else None
    for m in METHODS:
        out[m] = {
            "bpp": _mean([p[m]["bpp"] for p in points]),
            "psnr-rgb": _mean([p[m]["psnr-rgb"] for p in points]),
            "J": _mean([p[m]["J"] for p in points]),
        }
    # update bits of what was sent (an empty update frame when none was)
    update_bpp = []
    for r in records:
        bits = r["stats"].get("update_bits")
        if isinstance(bits, (int, float)) and r.get("pixels"):
            update_bpp.append(bits / r["pixels"])
        else:
            update_bpp.append(r.get("results", {}).get("update_bpp"))
    out["update_bpp"] = _mean(update_bpp)
    full_bpp = out["full"]["bpp"]
    out["update_share"] = (
        out["update_bpp"] / full_bpp
        if out["update_bpp"] is not None and full_bpp
        else None
    )
    out["choices"] = dict(Counter(str(r["stats"]["choice"]) for r in records))
    gates: Counter = Counter()
    for r in records:
        gates.update(str(g) for g in r["stats"].get("open_gates") or [])
    out["open_gates"] = dict(gates)
    res = [r.get("results") or {} for r in records]
    base_res = [r.get("base_results") or {} for r in records]
    out["time"] = {
        "encode": _mean([x.get("encoding_time") for x in res]),
        "decode": _mean([x.get("decoding_time") for x in res]),
        "base_encode": _mean([x.get("encoding_time") for x in base_res]),
        "base_decode": _mean([x.get("decoding_time") for x in base_res]),
        "refine": _mean([r["stats"].get("refine_time") for r in records]),
        "adapt": _mean([r["stats"].get("adapt_time") for r in records]),
    }
    # eval_model's own measurement of what was sent (real decompress), and the
    # host base codec on the same image: cross-checks of the statistics
    out["measured"] = {
        "bpp": _mean([x.get("bpp") for x in res]),
        "psnr-rgb": _mean([x.get("psnr-rgb") for x in res]),
    }
    out["host_base"] = {
        "bpp": _mean([x.get("bpp") for x in base_res]),
        "psnr-rgb": _mean([x.get("psnr-rgb") for x in base_res]),
    }
    dev_bpp = [
        abs(p["full"]["bpp"] - x["bpp"]) for p, x in zip(points, res) if "bpp" in x
    ]
    dev_psnr = [
        abs(p["full"]["psnr-rgb"] - x["psnr-rgb"])
        for p, x in zip(points, res)
        if x.get("psnr-rgb") is not None and math.isfinite(x["psnr-rgb"])
    ]
    out["check"] = {
        "max_abs_bpp_stats_vs_bitstream": max(dev_bpp) if dev_bpp else None,
        "max_abs_psnr_stats_vs_bitstream": max(dev_psnr) if dev_psnr else None,
    }
    return out


def bd_metrics(anchor: dict[str, list], test: dict[str, list]) -> dict[str, Any]:
    """BD-rate (%, ``value``) and BD-PSNR (dB, ``psnr``) of ``test`` vs ``anchor``;
    None with ``why`` where undefined (e.g. no shared PSNR range)."""
    from ..bd import bd_psnr, bd_rate

    out: dict[str, Any] = {}
    for key, fn in (("value", bd_rate), ("psnr", bd_psnr)):
        try:
            value = fn(anchor["bpp"], anchor["psnr-rgb"], test["bpp"], test["psnr-rgb"])
        except (ValueError, ZeroDivisionError) as err:
            out[key], out.setdefault("why", {})[key] = None, str(err)
            continue
        if value is None or not math.isfinite(value):
            out[key], out.setdefault("why", {})[key] = None, "not finite"
        else:
            out[key] = float(value)
    return out


def aggregate_domain(rate_points: Sequence[Sequence[dict[str, Any]]]) -> dict[str, Any]:
    """Rate points of one domain, BD-rates vs base, gate and time totals."""
    rows = [aggregate_rate_point(r) for r in rate_points if r]
    curves = {
        m: {k: [row[m][k] for row in rows] for k in ("bpp", "psnr-rgb")}
        for m in METHODS
    }
    out: dict[str, Any] = {"rate_points": rows, "curves": curves}
    settings = [
        r["settings"] for recs in rate_points for r in recs if r.get("settings")
    ]
    if settings:  # as eval_model stored them (lmbda differs per rate point)
        out["adaptation_settings"] = {
            k: v for k, v in settings[0].items() if k != "lmbda"
        }
    bd: dict[str, Any] = {}
    for m in ("refine", "full"):
        if len(rows) >= 4:
            bd[m] = bd_metrics(curves["base"], curves[m])
        else:
            why = f"{len(rows)} rate points (< 4)"
            bd[m] = {"value": None, "psnr": None, "why": why}
    host = {k: [row["host_base"][k] for row in rows] for k in ("bpp", "psnr-rgb")}
    if len(rows) >= 4 and None not in host["bpp"] + host["psnr-rgb"]:
        bd["base_vs_host_base"] = bd_metrics(host, curves["base"])
    out["bd_rate"] = bd
    gates: Counter = Counter()
    choices: Counter = Counter()
    for row in rows:
        gates.update(row["open_gates"])
        choices.update(row["choices"])
    out["open_gates"] = dict(gates)
    out["choices"] = dict(choices)
    out["coded"] = sum(row["images"] for row in rows)
    out["time"] = (
        {k: _mean([row["time"][k] for row in rows]) for k in rows[0]["time"]}
        if rows
        else {}
    )
    shares = [row["update_share"] for row in rows]
    out["update_share"] = _mean(shares)
    # the process's peak after each image bounds that image's peak
    peaks = [r.get("peak_rss_bytes") for recs in rate_points for r in recs]
    peaks = [p for p in peaks if isinstance(p, (int, float))]
    out["peak_rss_bytes"] = max(peaks) if peaks else None
    out["max_pixels"] = max(
        (r.get("pixels") or 0 for recs in rate_points for r in recs), default=0
    )
    return out


def summarize(domains: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean BD-rate / BD-PSNR over the out-of-domain domains; Kodak's.

    ``ood_mean_*`` average each method over the domains where its value is
    defined; ``paired_*`` over the domains where both methods' values are, so
    refinement only and the full method are compared on the same domains.
    """
    ood = {n: d["bd_rate"] for n, d in domains.items() if n != "kodak"}
    out: dict[str, Any] = {}
    for key, label in (("value", "bd_rate"), ("psnr", "bd_psnr")):
        both = [
            n
            for n, bd in ood.items()
            if all(bd[m].get(key) is not None for m in ("refine", "full"))
        ]
        out[f"paired_domains_{label}"] = both
        for m in ("refine", "full"):
            vals = [bd[m][key] for bd in ood.values() if bd[m].get(key) is not None]
            out[f"ood_mean_{label}_{m}"] = _mean(vals)
            out[f"ood_domains_{label}_{m}"] = len(vals)
            out[f"paired_mean_{label}_{m}"] = _mean([ood[n][m][key] for n in both])
            if "kodak" in domains:
                out[f"kodak_{label}_{m}"] = domains["kodak"]["bd_rate"][m].get(key)
    return out
