"""Our curves beside the classical anchors, and the architectures side by side.

Anchor curves are averaged per domain and quality as CompressAI averages its
rate points (mean bpp, mean PSNR over the images).  BD-rate of ours vs an
anchor is ``bd_rate(anchor, ours)``: negative means we need fewer bits.
Where the curves share no PSNR range it is undefined, and BD-PSNR (shared
rate range) stands in for it, marked ``*`` in the tables.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from .aggregate import bd_metrics

__all__ = ["anchor_curve", "bd_cell", "bd_vs_anchors", "cross_summary"]

#: our curves compared with each anchor
VS_ANCHORS = ("base", "full")


def _mean(values: Sequence[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def anchor_curve(
    per_image: Sequence[dict[int, dict[str, Any]]], qualities: Sequence[int]
) -> dict[str, Any]:
    """One codec's domain curve from the points of each image (per quality).

    A quality is on the curve when every image has a finite point there;
    the others are listed under ``lossless`` (some image coded exactly),
    ``missing`` (not coded) or ``errors``.  A point whose mean bpp or PSNR
    repeats an earlier one is dropped (``repeated``): BD needs distinct values.
    """
    out: dict[str, Any] = {"images": len(per_image), "qualities": []}
    curves: dict[str, list[float]] = {"bpp": [], "psnr-rgb": []}
    lossless, missing, repeated, errors = [], [], [], []
    times: dict[str, list] = {"encode": [], "decode": []}
    for q in qualities:
        points = [img.get(q) for img in per_image]
        if any(p is None for p in points):
            missing.append(q)
            continue
        bad = [p["error"] for p in points if "error" in p]
        if bad:
            errors.append(f"q{q}: {bad[0]}")
            continue
        if any(p["psnr-rgb"] is None for p in points):
            lossless.append(q)
            continue
        bpp = _mean([p["bpp"] for p in points])
        psnr = _mean([p["psnr-rgb"] for p in points])
        if bpp in curves["bpp"] or psnr in curves["psnr-rgb"]:
            repeated.append(q)
            continue
        out["qualities"].append(q)
        curves["bpp"].append(bpp)
        curves["psnr-rgb"].append(psnr)
        times["encode"].append(_mean([p["encoding_time"] for p in points]))
        times["decode"].append(_mean([p["decoding_time"] for p in points]))
    out["curves"] = curves
    out["time"] = {k: _mean(v) for k, v in times.items()}
    for key, values in (
        ("lossless", lossless),
        ("missing", missing),
        ("repeated", repeated),
        ("errors", errors),
    ):
        if values:
            out[key] = values
    return out


def bd_vs_anchors(
    curves: dict[str, dict[str, list]], anchors: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per anchor codec: BD-rate / BD-PSNR of our ``base`` and ``full`` curves
    (``curves``: one domain's, as in ``aggregate_domain``) vs its curve."""
    return {
        codec: {m: bd_metrics(a["curves"], curves[m]) for m in VS_ANCHORS}
        for codec, a in anchors.items()
    }


def bd_cell(bd: Optional[dict[str, Any]]) -> str:
    """``-12.3%``, or ``-0.45 dB*`` (BD-PSNR where BD-rate is undefined), or n/a."""
    if not bd:
        return "n/a"
    if bd.get("value") is not None:
        return f"{bd['value']:+.1f}%"
    if bd.get("psnr") is not None:
        return f"{bd['psnr']:+.2f} dB*"
    return "n/a"


def cross_summary(architectures: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """BD vs base of refine-only and full, per domain (rows) and architecture.

    ``domains[domain][arch][method]`` is the arch's ``bd_rate[method]``;
    ``ood_mean[arch][method]`` the paired mean over the out-of-domain domains
    (BD-rate ``value`` and BD-PSNR ``psnr``, from the arch's summary).
    """
    domains: dict[str, dict[str, Any]] = {}
    ood_mean: dict[str, Any] = {}
    for arch, r in architectures.items():
        for name, d in r["domains"].items():
            domains.setdefault(name, {})[arch] = {
                m: d["bd_rate"][m] for m in ("refine", "full")
            }
        s = r["summary"]
        ood_mean[arch] = {
            m: {
                "value": s.get(f"paired_mean_bd_rate_{m}"),
                "psnr": s.get(f"paired_mean_bd_psnr_{m}"),
            }
            for m in ("refine", "full")
        }
    return {"domains": domains, "ood_mean": ood_mean}
