"""The bench's report: markdown tables of ``results.json``.

One architecture: its tables (as before the bench took several), then the
classical anchors.  Several: a summary across architectures, then each
architecture's tables under its own heading.
"""

from __future__ import annotations

from typing import Any, Optional

from .aggregate import METHODS
from .compare import VS_ANCHORS, bd_cell
from .plots import ANCHOR_SPAN

__all__ = ["markdown"]

_METHOD_NAMES = {"base": "base", "refine": "refine-only", "full": "full"}


def _f(value: Optional[float], fmt: str, unit: str = "") -> str:
    return "n/a" if value is None else format(value, fmt) + unit


def markdown(results: dict[str, Any], plots_prefix: str = "") -> str:
    """Tables of ``results.json`` as markdown (plots linked as
    ``plots_prefix + path``; none if ``plots_prefix`` is None)."""
    archs = results.get("architectures")
    anchors = results.get("anchors")
    if not archs or len(archs) == 1:
        r = next(iter(archs.values())) if archs else results
        return _arch_markdown(r, anchors, plots_prefix)
    lines = _cross_table(results["cross"], list(archs))
    if plots_prefix is not None and results.get("plots"):
        lines += ["", "### RD plots, all architectures (base dashed, full solid)", ""]
        for name, plot in results["plots"].items():
            lines.append(f"![{name}]({plots_prefix}{plot})")
    for arch, r in archs.items():
        lines += ["", f"## {arch}", "", _arch_markdown(r, anchors, plots_prefix)]
    return "\n".join(lines).rstrip("\n") + "\n"


def _cross_table(cross: dict[str, Any], archs: list[str]) -> list[str]:
    pairs = [(a, m) for a in archs for m in ("refine", "full")]
    head = " | ".join(f"{a} {_METHOD_NAMES[m]}" for a, m in pairs)
    lines = [
        "## Across architectures: BD-rate vs each one's base codec",
        "",
        f"| domain | {head} |",
        "|---|" + "---|" * (2 * len(archs)),
    ]
    rows = list(cross["domains"].items()) + [("OOD mean (paired)", cross["ood_mean"])]
    for name, by_arch in rows:
        cells = [bd_cell(by_arch.get(a, {}).get(m)) for a, m in pairs]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Negative = fewer bits than the architecture's own base codec for the same "
        "PSNR; dB* = BD-PSNR where BD-rate is undefined (no shared PSNR range). "
        "OOD mean: over the out-of-domain domains where both methods have a "
        "BD-rate (BD-PSNR for the dB* means); per-domain counts in each "
        "architecture's section.",
    ]
    return lines


def _anchor_table(
    domains: dict[str, dict[str, Any]], anchors: Optional[dict[str, Any]]
) -> list[str]:
    """BD of our base and full method vs each anchor, per domain."""
    if not anchors:
        return []
    lines = ["", "### Classical anchors (Pillow)", ""]
    codecs = anchors.get("codecs", {})
    skipped = anchors.get("skipped", {})
    if codecs and not anchors.get("domains"):
        lines.append("No anchor results here: they are coded unless --report-only.")
    elif codecs:
        labels = {c: codecs[c]["label"] for c in codecs}
        head = " | ".join(
            f"{_METHOD_NAMES[m]} vs {labels[c]}" for c in codecs for m in VS_ANCHORS
        )
        lines += [f"| domain | {head} |", "|---|" + "---|" * (2 * len(codecs))]
        for name, d in domains.items():
            bd = d.get("bd_vs_anchors", {})
            cells = [bd_cell(bd.get(c, {}).get(m)) for c in codecs for m in VS_ANCHORS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        settings = "; ".join(
            f"{labels[c]} {_options(codecs[c])}".rstrip() for c in codecs
        )
        lines += [
            "",
            "BD-rate of our curve vs the anchor's (negative = we need fewer bits for "
            "the same PSNR); dB* = BD-PSNR (ours - anchor at equal rate) where the "
            "PSNR ranges do not overlap. Anchors: Pillow "
            f"{next(iter(codecs.values()))['pillow']}, {settings}; qualities "
            f"{','.join(str(q) for q in anchors['qualities'])}, bytes of the "
            "encoded file, PSNR of the file decoded back, averaged per domain and "
            f"quality; plotted up to {ANCHOR_SPAN:g}x our highest bpp.",
        ]
        undefined = sorted(
            {
                f"{name} {_METHOD_NAMES[m]} vs {labels[c]}: {why}"
                for name, d in domains.items()
                for c, by_method in d.get("bd_vs_anchors", {}).items()
                for m, bd in by_method.items()
                if bd.get("value") is None and bd.get("psnr") is None
                for why in [", ".join(sorted(set(bd.get("why", {}).values())))]
            }
        )
        if undefined:
            lines += ["", "n/a: " + "; ".join(undefined) + "."]
        notes = _anchor_notes(anchors)
        if notes:
            lines += ["", "Anchor points left out: " + "; ".join(notes) + "."]
    for reason in skipped.values():
        lines += ["", f"Skipped: {reason}."]
    return lines


def _options(codec: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in codec["options"].items())


def _anchor_notes(anchors: dict[str, Any]) -> list[str]:
    notes = []
    for domain, by_codec in anchors.get("domains", {}).items():
        for codec, a in by_codec.items():
            for key in ("lossless", "missing", "repeated"):
                if a.get(key):
                    qs = ",".join(str(q) for q in a[key])
                    notes.append(f"{domain} {codec} q{qs} ({key})")
            for err in a.get("errors", []):
                notes.append(f"{domain} {codec} {err}")
    return notes


def _peak(d: dict[str, Any]) -> str:
    """Peak resident memory (MB) and the domain's largest image (MP)."""
    peak, pixels = d.get("peak_rss_bytes"), d.get("max_pixels")
    if not peak or not pixels:
        return "-"
    return f"{peak / 2**20:.0f} MB ({pixels / 1e6:.2f} MP)"


def _arch_markdown(
    results: dict[str, Any],
    anchors: Optional[dict[str, Any]],
    plots_prefix: Optional[str],
) -> str:
    """One architecture's tables: BD vs base, rate points, gates, times, anchors."""
    domains = results["domains"]
    lines = [
        "| domain | images | BD-rate refine-only | BD-rate full "
        "| BD-PSNR refine-only / full | update share "
        "| sent (base/refined/update) | encode s/img (base / ours) "
        "| decode s/img (base / ours) | peak memory |",
        "|---|---|---|---|---|---|---|---|---|---|",
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
            f"| {_f(t.get('base_decode'), '.2f')} / {_f(t.get('decode'), '.2f')} "
            f"| {_peak(d)} |"
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
        "refine <= J base per image). Peak memory: the largest resident size of "
        "an encoding process after this domain's images (its models, the runtime "
        "and earlier images included), beside the domain's largest image.",
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
    lines += _anchor_table(domains, anchors)
    if plots_prefix is not None:
        lines += ["", "### RD plots", ""]
        for name, d in domains.items():
            if d.get("plot"):
                lines.append(f"![{name}]({plots_prefix}{d['plot']})")
    return "\n".join(lines) + "\n"
