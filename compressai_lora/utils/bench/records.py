"""Reading eval_model's per-image JSON files of one domain."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

from .weights import base_arch, checkpoint_name

__all__ = ["find_per_image", "load_records"]


def _read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def find_per_image(
    folder: Path, stem: str, checkpoint: str, arch: str
) -> Optional[dict[str, Any]]:
    """The per-image JSON of image ``stem``, checkpoint and architecture.

    eval_model names them ``<stem>-<checkpoint>-<coder>.json`` (the -lora run)
    and ``<stem>-<checkpoint>-<base arch>-<coder>.json`` (base); the file's own
    ``source`` and ``name`` fields decide, so other name schemes still match.
    """
    if not folder.is_dir():
        return None
    prefix = f"{stem}-{checkpoint}-"
    for path in sorted(folder.glob("*.json")):
        if not path.name.startswith(prefix):
            continue
        data = _read_json(path)
        if data is None or data.get("source", stem) != stem:
            continue
        name = str(data.get("name", ""))
        if name in (arch, f"{arch}-mse", f"{arch}-ms-ssim"):
            return data
    return None


def load_records(
    folder: Path,
    entries: Sequence[dict[str, Any]],
    weights: Sequence[Path],
    arch: str,
) -> tuple[list[list[dict[str, Any]]], list[str]]:
    """Per rate point, per image: ``{"stats", "results", "base_results",
    "pixels", "peak_rss_bytes"}``; plus a list of problems (missing files or
    statistics)."""
    rate_points: list[list[dict[str, Any]]] = []
    problems: list[str] = []
    for w in weights:
        cpt = checkpoint_name(w)
        records = []
        for entry in entries:
            stem = Path(entry["image"]).stem
            ours = find_per_image(folder, stem, cpt, arch)
            base = find_per_image(folder, stem, cpt, base_arch(arch))
            if ours is None:
                problems.append(f"{stem} ({cpt}): no per-image result")
                continue
            stats = ours.get("adaptation") or {}
            missing = [k for k in ("choice", "J", "bpp", "dist") if k not in stats]
            if missing:
                problems.append(
                    f"{stem} ({cpt}): adaptation statistics lack {', '.join(missing)}"
                )
                continue
            h, w_ = entry["size"]
            records.append(
                {
                    "image": stem,
                    "settings": ours.get("settings"),
                    "stats": stats,
                    "results": ours.get("results", {}),
                    "base_results": (base or {}).get("results"),
                    "pixels": h * w_,
                    "peak_rss_bytes": ours.get("peak_rss_bytes"),
                }
            )
        rate_points.append(records)
    return rate_points, problems
