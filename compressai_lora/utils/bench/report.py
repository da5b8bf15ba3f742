"""The bench's report: markdown tables of ``results.json`` and RD plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..plot import plot_rd
from .aggregate import METHOD_LABELS, METHODS

__all__ = ["markdown", "plot_domain"]

#: matplotlib styles of the three curves, in the order of ``METHODS``
_STYLES = ("o-", "s--", "^-")


def _f(value: Optional[float], fmt: str, unit: str = "") -> str:
    return "n/a" if value is None else format(value, fmt) + unit


def markdown(results: dict[str, Any], plots_prefix: str = "") -> str:
    """Tables of ``results.json`` as markdown."""
    domains = results["domains"]
    lines = [
        "| domain | images | BD-rate refine-only | BD-rate full "
        "| BD-PSNR refine-only / full | update share "
        "| sent (base/refined/update) | encode s/img (base / ours) "
        "| decode s/img (base / ours) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, d in domains.items():
        bd = d["bd_rate"]
        ch = d["choices"]
        t = d["time"]
        lines.append(
            f"| {name} | {d['images']} "
            f"| {_f(bd['refine']['value'], '+.2f', '%')} "
            f"| {_f(bd['full']['value'], '+.2f', '%')} "
            f"| {_f(bd['refine'].get('psnr'), '+.3f')} / "
            f"{_f(bd['full'].get('psnr'), '+.3f')} dB "
            f"| {_f(None if d['update_share'] is None else 100 * d['update_share'], '.1f')}% "  # noqa: E501
            f"| {ch.get('base', 0)}/{ch.get('refined', 0)}/{ch.get('update', 0)} "
            f"| {_f(t.get('base_encode'), '.2f')} / {_f(t.get('encode'), '.2f')} "
            f"| {_f(t.get('base_decode'), '.2f')} / {_f(t.get('decode'), '.2f')} |"
        )
    s = results["summary"]
    undefined = [
        f"{name} {m}: {', '.join(sorted(set(why.values())))}"
        if isinstance(why, dict)
        else f"{name} {m}: {why}"
        for name, d in domains.items()
        for m in ("refine", "full")
        for why in [d["bd_rate"][m].get("why")]
        if why
    ]
    if undefined:
        lines += ["", "n/a: " + "; ".join(undefined) + "."]
    lines += [
        "",
        "BD-rate: Bjontegaard delta rate vs the base codec (PSNR vs bpp, PCHIP on "
        "log-rate), negative = fewer bits for the same PSNR; it integrates over "
        "the PSNR range both curves share. BD-PSNR: mean PSNR gain over the shared "
        "rate range. Update share: bits "
        "of the transmitted update (an empty update frame when none is sent) over "
        "all bits, averaged over rate points. Sent: candidate chosen, counted over "
        "images x rate points. J = bpp + lambda * 255^2 * MSE, averaged over "
        "images (the cost the encoder minimizes; never-worse means J full <= J "
        "refine <= J base per image).",
        "",
        "Mean over the out-of-domain domains where both methods have a value "
        f"(BD-rate: {len(s.get('paired_domains_bd_rate', []))} domains, "
        f"{', '.join(s.get('paired_domains_bd_rate', [])) or 'none'}): "
        f"refine-only {_f(s.get('paired_mean_bd_rate_refine'), '+.2f', '%')}, "
        f"full {_f(s.get('paired_mean_bd_rate_full'), '+.2f', '%')}. "
        f"BD-PSNR ({len(s.get('paired_domains_bd_psnr', []))} domains): "
        f"refine-only {_f(s.get('paired_mean_bd_psnr_refine'), '+.3f')} dB, "
        f"full {_f(s.get('paired_mean_bd_psnr_full'), '+.3f')} dB. Each method over "
        f"every domain where it has a BD-rate: refine-only "
        f"{_f(s.get('ood_mean_bd_rate_refine'), '+.2f', '%')} "
        f"({s.get('ood_domains_bd_rate_refine', 0)} domains), full "
        f"{_f(s.get('ood_mean_bd_rate_full'), '+.2f', '%')} "
        f"({s.get('ood_domains_bd_rate_full', 0)} domains).",
        "",
        "### Rate points (bpp / PSNR dB, averaged over images)",
        "",
        "| domain | rate | lambda | base | refine-only | full | update share "
        "| J base / refine / full |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, d in domains.items():
        for i, row in enumerate(d["rate_points"]):
            cells = [
                f"{_f(row[m]['bpp'], '.4f')} / {_f(row[m]['psnr-rgb'], '.2f')}"
                for m in METHODS
            ]
            share = row["update_share"]
            lines.append(
                f"| {name} | {results['rate_points'][i]} "
                f"| {_f(row['lmbda'], 'g')} | {' | '.join(cells)} "
                f"| {_f(None if share is None else 100 * share, '.1f')}% "
                f"| {' / '.join(_f(row[m]['J'], '.4f') for m in METHODS)} |"
            )
    layers = sorted({g for d in domains.values() for g in d["open_gates"]})
    lines += ["", "### Gates opened per layer (counts over images x rate points)", ""]
    if layers:
        names = list(domains)
        lines.append("| layer | " + " | ".join(names) + " |")
        lines.append("|---|" + "---|" * len(names))
        for layer in layers:
            counts = [str(domains[n]["open_gates"].get(layer, 0)) for n in names]
            lines.append(f"| {layer} | " + " | ".join(counts) + " |")
    else:
        lines.append("No update was sent: no gate opened.")
    lines += ["", "### Time per image (s, averaged over images x rate points)", ""]
    lines.append(
        "| domain | base encode | base decode | ours encode | of which refine "
        "| of which update | ours decode |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    for name, d in domains.items():
        t = d["time"]
        lines.append(
            f"| {name} | {_f(t.get('base_encode'), '.2f')} "
            f"| {_f(t.get('base_decode'), '.2f')} | {_f(t.get('encode'), '.2f')} "
            f"| {_f(t.get('refine'), '.2f')} | {_f(t.get('adapt'), '.2f')} "
            f"| {_f(t.get('decode'), '.2f')} |"
        )
    if plots_prefix is not None:
        lines += ["", "### RD plots", ""]
        for name, d in domains.items():
            if d.get("plot"):
                lines.append(f"![{name}]({plots_prefix}{d['plot']})")
    return "\n".join(lines) + "\n"


def plot_domain(path: Path, name: str, d: dict[str, Any]) -> None:
    """PSNR-vs-bpp plot of the three curves, labelled with their BD-rates."""
    curves = []
    for m, style in zip(METHODS, _STYLES):
        label = METHOD_LABELS[m]
        bd = d["bd_rate"].get(m, {}).get("value")
        if bd is not None:
            label += f" (BD-rate {bd:+.2f}%)"
        curves.append((label, d["curves"][m]["bpp"], d["curves"][m]["psnr-rgb"], style))
    title = f"{name} ({d['images']} image(s))"
    plot_rd(path, curves, title, size=(6, 4.5), dpi=100, legend_size=8)
