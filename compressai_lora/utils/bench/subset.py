"""The benchmark's images: the first files of each domain (after ``--skip``),
centre-cropped.

The crops are written as 8-bit RGB PNG to a work directory (16-bit sources
are scaled, not clipped), and ``subset.json`` records which sources, boxes and
sizes the per-image results of an output directory belong to.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from ..files import write_atomic, write_json
from ..images import ImageError, image_files, png_writer, read_image
from .errors import BenchError

__all__ = [
    "DOMAINS",
    "Subset",
    "check_manifest",
    "counts",
    "crop_box",
    "domain_dir",
    "plan_subset",
    "prepare_subset",
    "select_images",
    "write_subset",
]

#: Benchmark domains, in report order; ``kodak`` is the in-domain set.
DOMAINS = ("kodak", "pixel", "screen", "line", "vector", "painting", "comic")

#: Per domain, one entry per image: ``source``, ``image``, ``box``, ``size``.
Subset = dict[str, list[dict[str, Any]]]


def domain_dir(root: Path, domain: str) -> Path:
    """The folder of ``domain`` under the data root."""
    return root / domain if domain == "kodak" else root / "ood" / domain


def select_images(folder: Path, n: Optional[int], skip: int = 0) -> list[Path]:
    """Image files of ``folder`` in sorted order: the ``n`` after the first
    ``skip`` (all after them if ``n`` is None)."""
    if not folder.is_dir():
        raise BenchError(f"domain folder not found: {folder}")
    files = image_files(folder, recursive=False)[skip:]
    if not files:
        raise BenchError(
            f"no images in {folder}" + (f" after the first {skip}" if skip else "")
        )
    return files if n is None else files[:n]


def counts(spec: Union[int, Sequence[str]], domains: Sequence[str]) -> dict[str, int]:
    """Images per domain from ``--images-per-domain``: ``N`` for every domain,
    then ``DOMAIN=N`` items for single ones (``["2", "kodak=4"]``).

    Raises:
        BenchError: an item is not ``N`` or ``DOMAIN=N`` with a known domain
            and N >= 1.
    """
    items = [str(spec)] if isinstance(spec, int) else list(spec)
    out = {d: 1 for d in domains}
    for item in items:
        name, _, value = item.rpartition("=")
        if name and name not in DOMAINS:
            raise BenchError(
                f"--images-per-domain {item}: unknown domain {name!r}, choose "
                f"from {', '.join(DOMAINS)}"
            )
        if not value.isdigit() or int(value) < 1:
            raise BenchError(
                f"--images-per-domain {item}: give N or DOMAIN=N with N >= 1"
            )
        for d in [name] if name else domains:
            if d in out:
                out[d] = int(value)
    return out


def crop_box(w: int, h: int, size: int) -> tuple[int, int, int, int]:
    """Centre ``size`` x ``size`` box (sides smaller than ``size`` are kept)."""
    if size <= 0:
        return 0, 0, w, h
    cw, ch = min(w, size), min(h, size)
    left, top = (w - cw) // 2, (h - ch) // 2
    return left, top, left + cw, top + ch


def plan_subset(args: argparse.Namespace, domains: Sequence[str]) -> Subset:
    """Per domain: source file, crop file name, crop box and size (h, w).

    Only the images' headers are read (for their size).
    """
    from PIL import Image

    n = None if args.full else counts(args.images_per_domain, domains)
    crop = 0 if args.full else args.crop
    skip = getattr(args, "skip", 0)
    if crop < 0:
        raise BenchError("--crop must be >= 0")
    if skip < 0:
        raise BenchError("--skip must be >= 0")
    subset: Subset = {}
    for domain in domains:
        entries = []
        folder = domain_dir(args.data, domain)
        for src in select_images(folder, None if n is None else n[domain], skip):
            with Image.open(src) as img:
                box = crop_box(*img.size, crop)
            entries.append(
                {
                    "source": src.name,
                    "image": f"{src.stem}.png",
                    "box": list(box),
                    "size": [box[3] - box[1], box[2] - box[0]],
                }
            )
        subset[domain] = entries
    return subset


def write_subset(data: Path, out: Path, subset: Subset) -> None:
    """Write the crops as RGB PNG to ``out/<domain>/`` (atomic per file).

    Raises:
        BenchError: a source image cannot be read.
    """
    for domain, entries in subset.items():
        for e in entries:
            left, top, right, bottom = e["box"]
            try:
                rgb = read_image(domain_dir(data, domain) / e["source"], orient=False)
            except ImageError as err:
                raise BenchError(str(err)) from None
            crop = rgb[top:bottom, left:right]
            write_atomic(out / domain / e["image"], png_writer(crop))


def prepare_subset(args: argparse.Namespace, domains: Sequence[str]) -> Subset:
    """Plan the subset and write its crops to ``OUTPUT/images/<domain>/``."""
    subset = plan_subset(args, domains)
    write_subset(args.data, args.output / "images", subset)
    return subset


def _subset_key(entries: Sequence[dict[str, Any]]) -> list[tuple]:
    return [
        (e.get("source"), e.get("image"), tuple(e.get("size", ()))) for e in entries
    ]


def check_manifest(
    path: Path, manifest: dict[str, Any], overwrite: bool, write: bool = True
) -> None:
    """Refuse to mix per-image results of different subsets in one directory.

    The domains of an existing manifest are merged into ``manifest``, which is
    then written to ``path`` (atomically) if ``write``.
    """
    if path.is_file() and not overwrite:
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
        if old is not None:
            old_domains = old.get("domains", {})
            for domain, entries in manifest["domains"].items():
                if domain in old_domains and _subset_key(
                    old_domains[domain]
                ) != _subset_key(entries):
                    raise BenchError(
                        f"{path.parent} holds results for another subset of "
                        f"{domain} (crop or image count changed): use another "
                        "--output or --overwrite"
                    )
            manifest["domains"] = {**old_domains, **manifest["domains"]}
    if write:
        write_json(path, manifest)
