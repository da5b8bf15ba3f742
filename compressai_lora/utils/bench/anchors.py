"""Classical anchors: the bench's crops coded by Pillow's JPEG, WebP and AVIF.

Each crop is encoded in memory at every quality of the sweep (Pillow's 0-100
scale); bpp counts the bytes of the encoded file, and PSNR is measured on the
file decoded back, over the three 8-bit RGB channels with peak 255, as
CompressAI's eval_model computes it.  A lossless result (MSE 0, infinite
PSNR) is kept per image but left out of the curves.  Results are cached per
image and codec (``anchors/<domain>/<stem>-<codec>.json`` in the output
directory), so a rerun codes only what is missing.

JPEG XL is used where the ``pillow-jxl-plugin`` package is installed (GPL-3.0,
so not a dependency of this package); ``imagecodecs`` would need numpy >= 2.
A codec this Pillow lacks is skipped with a one-line note.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import io
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..files import write_json
from .errors import BenchError

__all__ = [
    "CODECS",
    "Codec",
    "code_image",
    "codec_settings",
    "decode",
    "encode",
    "image_points",
    "psnr_rgb",
    "run_anchors",
    "select_codecs",
    "unavailable",
]


@dataclasses.dataclass(frozen=True)
class Codec:
    """One anchor: Pillow ``format`` saved with ``quality`` and ``options``.

    ``feature`` is the ``PIL.features`` name that must be present; ``plugin``
    a module whose import registers the format (with its PyPI ``package``).
    """

    name: str
    label: str
    format: str
    options: dict[str, Any]
    feature: Optional[str] = None
    plugin: Optional[str] = None
    package: Optional[str] = None


#: The anchors, in report order.  Options: WebP's slowest, best method; AVIF
#: at speed 4; one encoder thread (AVIF's bytes depend on the thread count,
#: and Pillow's default is the machine's CPU count).
CODECS: dict[str, Codec] = {
    c.name: c
    for c in (
        Codec("jpeg", "JPEG", "JPEG", {}, feature="jpg"),
        Codec("webp", "WebP", "WEBP", {"method": 6}, feature="webp"),
        Codec("avif", "AVIF", "AVIF", {"speed": 4, "max_threads": 1}, "avif"),
        Codec(
            "jxl",
            "JPEG XL",
            "JXL",
            {"effort": 7, "num_threads": 1},
            plugin="pillow_jxl",
            package="pillow-jxl-plugin",
        ),
    )
}


def unavailable(codec: Codec) -> Optional[str]:
    """Why ``codec`` cannot run here (one line), or None."""
    import PIL
    from PIL import features

    if codec.feature is not None:
        with warnings.catch_warnings():  # older Pillow: "Unknown feature"
            warnings.simplefilter("ignore")
            ok = features.check(codec.feature)
        if not ok:
            return f"{codec.label}: Pillow {PIL.__version__} has no {codec.feature}"
    if codec.plugin is not None:
        try:
            importlib.import_module(codec.plugin)
        except ImportError:
            return f"{codec.label}: needs `pip install {codec.package}`"
    return None


def codec_settings(codec: Codec) -> dict[str, Any]:
    """What the bytes depend on: Pillow, the codec library's version, options."""
    import PIL
    from PIL import features

    if codec.package is not None:
        version = importlib.metadata.version(codec.package)
    else:
        version = features.version(codec.feature) if codec.feature else None
    return {
        "codec": codec.name,
        "format": codec.format,
        "options": dict(codec.options),
        "pillow": PIL.__version__,
        "library": version,
    }


def encode(rgb: np.ndarray, codec: Codec, quality: int) -> bytes:
    """The file ``codec`` writes for the ``(H, W, 3)`` uint8 image at ``quality``."""
    from PIL import Image

    options = dict(codec.options)
    if codec.name == "jxl" and quality >= 100:  # libjxl: distance 0 is lossless
        options["lossless"] = True
    buffer = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(
        buffer, format=codec.format, quality=quality, **options
    )
    return buffer.getvalue()


def decode(data: bytes) -> np.ndarray:
    """An encoded file decoded back to ``(H, W, 3)`` uint8 RGB."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def psnr_rgb(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two 8-bit RGB images over all channels, peak 255; inf if equal."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 20 * math.log10(255) - 10 * math.log10(mse)


def code_image(rgb: np.ndarray, codec: Codec, quality: int) -> dict[str, Any]:
    """One RD point: ``bytes``, ``bpp``, ``psnr-rgb`` (None if lossless, with
    ``lossless``), encode and decode times; ``error`` if the codec failed."""
    h, w = rgb.shape[:2]
    t0 = time.perf_counter()
    try:
        data = encode(rgb, codec, quality)
        t1 = time.perf_counter()
        rec = decode(data)
    except (OSError, ValueError, RuntimeError) as err:
        return {"error": " ".join(str(err).split()) or type(err).__name__}
    t2 = time.perf_counter()
    if rec.shape != rgb.shape:
        return {"error": f"decoded {rec.shape[1]}x{rec.shape[0]}, not {w}x{h}"}
    psnr = psnr_rgb(rgb, rec)
    point: dict[str, Any] = {
        "bytes": len(data),
        "bpp": 8 * len(data) / (h * w),
        "psnr-rgb": psnr if math.isfinite(psnr) else None,
        "encoding_time": t1 - t0,
        "decoding_time": t2 - t1,
    }
    if not math.isfinite(psnr):
        point["lossless"] = True
    return point


def _read_cache(path: Path, key: dict[str, Any]) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("key") != key:
        return {}
    points = data.get("points")
    return points if isinstance(points, dict) else {}


def image_points(
    image: Path,
    cache: Path,
    codec: Codec,
    qualities: Sequence[int],
    size: Sequence[int],
    compute: bool = True,
    overwrite: bool = False,
) -> dict[int, dict[str, Any]]:
    """RD points of one crop per quality, from ``cache`` where it has them.

    The cache is used when it was made for the same codec settings and image
    size; the missing qualities are coded (if ``compute``) and the cache
    rewritten.  Without ``compute`` only cached points are returned.

    Raises:
        BenchError: the crop cannot be read or has another size (only when
            something is coded).
    """
    from ..images import ImageError, read_image

    key = {**codec_settings(codec), "size": list(size)}
    cached = {} if overwrite else _read_cache(cache, key)
    points = {q: cached[str(q)] for q in qualities if str(q) in cached}
    todo = [q for q in qualities if q not in points]
    if todo and compute:
        try:
            rgb = read_image(image, orient=False)
        except ImageError as err:
            raise BenchError(str(err)) from None
        if list(rgb.shape[:2]) != list(size):
            h, w = size
            raise BenchError(f"{image} is not {w}x{h}: rerun with --overwrite")
        for q in todo:
            points[q] = code_image(rgb, codec, q)
        # failures are not cached: a rerun tries them again
        done = {str(q): p for q, p in points.items() if "error" not in p}
        merged = {**cached, **done}
        order = sorted(merged, key=int)
        write_json(cache, {"key": key, "points": {q: merged[q] for q in order}})
    return {q: points[q] for q in qualities if q in points}


def select_codecs(names: Optional[Sequence[str]]) -> tuple[list[Codec], dict[str, str]]:
    """The codecs of ``--anchors`` that run here, and why the others do not.

    ``None``: every codec of ``CODECS``; ``["none"]``: no anchors.

    Raises:
        BenchError: ``none`` given with codecs.
    """
    if names is not None and "none" in names:
        if len(set(names)) > 1:
            raise BenchError("--anchors none cannot be combined with codecs")
        return [], {}
    chosen = [CODECS[n] for n in dict.fromkeys(names or CODECS)]
    codecs, skipped = [], {}
    for codec in chosen:
        why = unavailable(codec)
        if why is None:
            codecs.append(codec)
        else:
            skipped[codec.name] = why
    return codecs, skipped


def run_anchors(
    output: Path,
    subset: dict[str, list[dict[str, Any]]],
    codecs: Sequence[Codec],
    qualities: Sequence[int],
    compute: bool = True,
    overwrite: bool = False,
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Per domain and codec, the anchor curve (``compare.anchor_curve``) of the
    crops in ``output/images``; and the domains that failed, with why."""
    from .compare import anchor_curve

    domains: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    for domain, entries in subset.items():
        t0 = time.perf_counter()
        by_codec = {}
        try:
            for codec in codecs:
                per_image = [
                    image_points(
                        output / "images" / domain / e["image"],
                        output / "anchors" / domain / f"{Path(e['image']).stem}"
                        f"-{codec.name}.json",
                        codec,
                        qualities,
                        e["size"],
                        compute,
                        overwrite,
                    )
                    for e in entries
                ]
                if any(per_image):  # (report-only: nothing cached, nothing shown)
                    by_codec[codec.name] = anchor_curve(per_image, qualities)
        except BenchError as err:
            failed[domain] = str(err)
            continue
        if by_codec:
            domains[domain] = by_codec
        if compute and codecs:
            took = time.perf_counter() - t0
            print(f"== anchors {domain}: {took:.1f} s", file=sys.stderr)
    return domains, failed
