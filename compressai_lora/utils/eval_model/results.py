"""Results: per-image keys, averages, key order, JSON files and resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

from compressai_lora.adapt import AdaptConfig

__all__ = [
    "ADAPT_KEYS",
    "HOST_KEYS",
    "adaptation_results",
    "average",
    "jsonable",
    "load_done",
    "per_image_path",
    "settings_of",
    "table",
]

#: The host's result keys, in the host's order; ours come after them.
HOST_KEYS = ("psnr-rgb", "ms-ssim-rgb", "bpp", "encoding_time", "decoding_time")
#: Per-image adaptation keys, read from ``model.last_adaptation``.
ADAPT_KEYS = ("update_bpp", "open_gates", "adaptation_time")


def settings_of(cfg: AdaptConfig) -> dict[str, Any]:
    """The adaptation settings as stored in the JSON: one flat dict (the
    tuning's fields too), no callback."""
    top = {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(cfg)
        if f.name not in ("callback", "tuning")
        # one image at a time: the key of results stored before batching existed
        and not (f.name == "batch_size" and cfg.batch_size == 1)
    }
    return {**top, **dataclasses.asdict(cfg.tuning)}


def adaptation_results(stats: dict[str, Any], num_pixels: int) -> dict[str, Any]:
    """``update_bpp``, ``open_gates`` (count), ``adaptation_time`` (seconds)
    from ``model.last_adaptation``, where it has them."""
    rv: dict[str, Any] = {}
    if isinstance(stats.get("update_bits"), (int, float)):
        rv["update_bpp"] = stats["update_bits"] / num_pixels
    if isinstance(stats.get("open_gates"), (list, tuple)):
        rv["open_gates"] = len(stats["open_gates"])
    times = [stats[k] for k in ("refine_time", "adapt_time") if k in stats]
    if times:
        rv["adaptation_time"] = float(sum(times))
    return rv


def average(rvs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of each key over the images that report it (the host's sum / n)."""
    keys: list[str] = []
    for rv in rvs:
        keys.extend(k for k in rv if k not in keys)
    out: dict[str, Any] = {}
    for key in keys:
        values = [rv[key] for rv in rvs if rv.get(key) is not None]
        total = 0.0
        for v in values:
            total += v
        out[key] = total / len(values) if values else None
    return out


def _key_rank(key: str) -> int:
    """Order of the result keys: the host's five, ours, base, RD cost, deltas."""
    if key in HOST_KEYS:
        return 0
    if key in ADAPT_KEYS:
        return 1
    if key in ("rd_cost", "base_rd_cost"):
        return 4 if key == "rd_cost" else 5
    if key.startswith("base_"):
        return 3
    if key.startswith("delta_"):
        return 6
    return 2


def table(rows: list[dict[str, Any]]) -> dict[str, list]:
    """``{key: [value per row]}``, the host's five keys first, in its order."""
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    keys.sort(key=_key_rank)  # stable
    return {k: [row.get(k) for row in rows] for k in keys}


def jsonable(stats: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``stats`` that JSON can hold."""
    out = {}
    for key, value in stats.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        out[key] = value
    return out


def per_image_path(outdir: str, dataset: str, filepath: Path, net: str) -> Path:
    """The host's per-image JSON path."""
    subdir = Path(outdir) / Path(filepath).parent.relative_to(dataset)
    return subdir / f"{filepath.stem}-{net}.json"


def load_done(path: Path, settings: Optional[dict]) -> Optional[dict]:
    """Stored per-image results, if complete and made with the same settings."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, dict) or any(k not in results for k in HOST_KEYS):
        return None
    # every setting counts, the thread count too: it changes the float sums of
    # the optimization, hence the bytes
    if data.get("settings") != settings:
        return None
    return data
