"""The bench's RD plots (PSNR vs bpp) per domain, with the classical anchors.

The anchors' sweeps reach far higher rates than our codecs: they are drawn up
to ``ANCHOR_SPAN`` times the highest bpp of our curves (their BD-rates use
the whole sweep).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..plot import Curve, plot_rd
from .aggregate import METHOD_LABELS, METHODS

__all__ = ["ANCHOR_SPAN", "plot_combined", "plot_domain"]

#: matplotlib styles of the three curves, in the order of ``METHODS``
_STYLES = ("o-", "s--", "^-")
#: the anchors' styles, in the order of ``anchors.CODECS``
_ANCHOR_STYLES = ("C7x:", "C8d:", "C9v:", "C6+:")
ANCHOR_SPAN = 1.5


def _anchor_curves(
    anchors: Optional[dict[str, Any]], domain: str, top: Optional[float]
) -> list[Curve]:
    """The anchors of ``domain`` up to ``ANCHOR_SPAN * top`` bpp (at least two
    points each)."""
    if not anchors:
        return []
    curves = []
    labels = anchors.get("codecs", {})
    for i, (codec, a) in enumerate(anchors.get("domains", {}).get(domain, {}).items()):
        pts = list(zip(a["curves"]["bpp"], a["curves"]["psnr-rgb"]))
        if top is not None:
            inside = [p for p in pts if p[0] <= ANCHOR_SPAN * top]
            pts = inside if len(inside) >= 2 else sorted(pts)[:2]
        if not pts:
            continue
        label = labels.get(codec, {}).get("label", codec)
        style = _ANCHOR_STYLES[i % len(_ANCHOR_STYLES)]
        curves.append((label, [p[0] for p in pts], [p[1] for p in pts], style))
    return curves


def _top(values: list[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return max(vals) if vals else None


def plot_domain(
    path: Path,
    name: str,
    d: dict[str, Any],
    anchors: Optional[dict[str, Any]] = None,
    title: Optional[str] = None,
) -> None:
    """One architecture's three curves, labelled with their BD-rates vs base,
    and the anchors of the domain."""
    curves = []
    for m, style in zip(METHODS, _STYLES):
        label = METHOD_LABELS[m]
        bd = d["bd_rate"].get(m, {}).get("value")
        if bd is not None:
            label += f" (BD-rate {bd:+.2f}%)"
        curves.append((label, d["curves"][m]["bpp"], d["curves"][m]["psnr-rgb"], style))
    top = _top([b for m in METHODS for b in d["curves"][m]["bpp"]])
    curves += _anchor_curves(anchors, name, top)
    title = title or f"{name} ({d['images']} image(s))"
    plot_rd(path, curves, title, size=(6, 4.5), dpi=100, legend_size=8)


def plot_combined(
    path: Path,
    name: str,
    domains: dict[str, dict[str, Any]],
    anchors: Optional[dict[str, Any]] = None,
) -> None:
    """Base (dashed) and full method (solid) of each architecture on ``name``
    (``domains``: arch -> that arch's domain result), and the anchors."""
    curves = []
    for i, (arch, d) in enumerate(domains.items()):
        for m, line in (("base", "--"), ("full", "-")):
            c = d["curves"][m]
            curves.append((f"{arch} {m}", c["bpp"], c["psnr-rgb"], f"C{i % 6}o{line}"))
    bpp = [d["curves"][m]["bpp"] for d in domains.values() for m in ("base", "full")]
    top = _top([b for c in bpp for b in c])
    curves += _anchor_curves(anchors, name, top)
    images = max((d["images"] for d in domains.values()), default=0)
    title = f"{name} ({images} image(s))"
    plot_rd(path, curves, title, size=(7, 5), dpi=100, legend_size=7)
