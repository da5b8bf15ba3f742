"""Rate-distortion plots (PSNR vs bpp) written as PNG, atomically."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional, Sequence

from .files import write_bytes

__all__ = ["Curve", "plot_rd"]

#: ``(label, bpp values, PSNR values, matplotlib format string or None)``
Curve = tuple[str, Sequence[float], Sequence[float], Optional[str]]


def plot_rd(
    path: Path,
    curves: Sequence[Curve],
    title: str,
    size: tuple[float, float] = (7, 5),
    dpi: int = 150,
    legend_size: Optional[float] = None,
) -> None:
    """One PSNR-vs-bpp line per curve, with matplotlib's Agg canvas (no global
    backend change); the PNG is written through a temporary file."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for label, bpp, psnr, style in curves:
        if style is None:
            ax.plot(bpp, psnr, marker="o", linewidth=1, label=label)
        else:
            ax.plot(bpp, psnr, style, linewidth=1, markersize=4, label=label)
    ax.set_xlabel("Bit-rate [bpp]")
    ax.set_ylabel("PSNR [dB]")
    ax.grid(True)
    ax.legend(loc="lower right", fontsize=legend_size)
    ax.set_title(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    write_bytes(path, buffer.getvalue())
