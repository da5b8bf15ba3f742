"""Out-of-domain benchmark: base codec, latent refinement only, full method.

For Kodak (in-domain) and each out-of-domain folder of the shared data
(``ood/{pixel,screen,line,vector,painting,comic}``), the benchmark takes a
fixed subset (the first ``--images-per-domain`` files in sorted order,
centre-cropped to ``--crop`` pixels, written as PNG to a work directory),
runs our ``eval_model`` once per domain in checkpoint mode over all rate
points (``--compare-base --per-image``) and reads its per-image JSON files.

From each image's adaptation statistics (``model.last_adaptation``: the
real-bitstream bpp and distortion of every candidate the encoder built) it
forms three rate-distortion points per rate point:

* ``base``: the base codec's latents (candidate ``"base"``);
* ``refine``: latent refinement only, i.e. the better of ``"base"`` and
  ``"refined"`` by RD cost J, which is what a refinement-only encoder with the
  never-worse check sends;
* ``full``: the full method, the candidate the encoder chose (``"update"``
  when the decoder update pays for its bits).

bpp and PSNR are averaged over the images per domain and rate point (as
CompressAI does), and compared with the Bjontegaard delta rate (PSNR vs
bpp).  Outputs in ``--output``: ``results.json``, ``results.md`` (tables) and
one RD plot per domain (``rd-<domain>.png``).

Method: Lv et al., "Dynamic Low-Rank Instance Adaptation for Universal Neural
Image Compression", ACM MM 2023.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional, Sequence

from ..paths import os_error_line, output_dir_problem

__all__ = [
    "DOMAINS",
    "METHODS",
    "setup_args",
    "main",
    "image_points",
    "aggregate_rate_point",
    "aggregate_domain",
    "summarize",
    "markdown",
]

#: Benchmark domains, in report order; ``kodak`` is the in-domain set.
DOMAINS = ("kodak", "pixel", "screen", "line", "vector", "painting", "comic")
#: The three curves compared, in report order.
METHODS = ("base", "refine", "full")
METHOD_LABELS = {
    "base": "base codec",
    "refine": "latent refinement only",
    "full": "full method (refinement + update)",
}
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff")
_REPO = Path(__file__).resolve().parents[3]
DEFAULT_DATA = _REPO.parent / "shared" / "data"
DEFAULT_WEIGHTS = str(
    _REPO.parent / "shared" / "weights" / "cheng2020-attn-N64-q{q}.pth.tar"
)
_LORA = "-lora"


class BenchError(Exception):
    """Bad input: one ``Error:`` line on stderr, exit status 1."""


# -- arguments ---------------------------------------------------------------
def setup_args() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m compressai_lora.utils.bench",
        description="Benchmark base codec, latent refinement only and the full "
        "method (refinement + low-rank decoder update) on Kodak and the "
        "out-of-domain sets, with real bitstreams.",
    )
    data = parser.add_argument_group("Data")
    data.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="data root with kodak/ and ood/<domain>/ (default: ../shared/data "
        "next to the repository, %(default)s)",
    )
    data.add_argument(
        "--domains",
        nargs="+",
        choices=DOMAINS,
        default=list(DOMAINS),
        metavar="DOMAIN",
        help=f"domains to run (default: all of {', '.join(DOMAINS)})",
    )
    data.add_argument(
        "--images-per-domain",
        type=int,
        default=1,
        metavar="N",
        help="the first N image files of each domain, in sorted order (default 1)",
    )
    data.add_argument(
        "--crop",
        type=int,
        default=256,
        metavar="S",
        help="centre crop to S x S pixels (smaller sides are kept); 0: full image "
        "(default 256)",
    )
    data.add_argument(
        "--full",
        action="store_true",
        help="every image of each domain, full size (overrides the two above)",
    )
    model = parser.add_argument_group("Codec")
    model.add_argument(
        "-a",
        "--architecture",
        default="cheng2020-attn-lora",
        help="a -lora architecture (default %(default)s)",
    )
    model.add_argument(
        "--weights",
        nargs="+",
        default=[DEFAULT_WEIGHTS],
        metavar="PATH",
        help="base checkpoints, one per rate point, low rate first; a single PATH "
        "containing '{q}' is expanded for each of --qualities (default: "
        "%(default)s)",
    )
    model.add_argument(
        "--qualities",
        default="1,2,3,4",
        help="rate points that fill '{q}' in --weights (default %(default)s)",
    )
    adapt = parser.add_argument_group("Adaptation (passed to eval_model)")
    adapt.add_argument("--preset", default="fast", help="default %(default)s")
    adapt.add_argument(
        "--threads", type=int, default=2, help="torch threads (default 2)"
    )
    adapt.add_argument("--refine-steps", type=int, metavar="N", default=None)
    adapt.add_argument("--adapt-steps", type=int, metavar="N", default=None)
    adapt.add_argument("--seed", type=int, metavar="S", default=None)
    out = parser.add_argument_group("Output")
    out.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("bench-out"),
        help="output directory (per-image results, crops, tables, plots; "
        "default %(default)s)",
    )
    out.add_argument(
        "--overwrite",
        action="store_true",
        help="recompute images whose per-image results exist (default: resume)",
    )
    out.add_argument(
        "--report-only",
        action="store_true",
        help="do not run eval_model: tabulate the per-image results already in "
        "--output (domains without results are left out)",
    )
    return parser


def _weights(args: argparse.Namespace) -> list[Path]:
    if len(args.weights) == 1 and "{q}" in args.weights[0]:
        try:
            qualities = [int(q) for q in args.qualities.split(",") if q.strip()]
        except ValueError:
            raise BenchError(f"invalid --qualities: {args.qualities!r}") from None
        paths = [Path(args.weights[0].format(q=q)) for q in qualities]
    else:
        paths = [Path(p) for p in args.weights]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise BenchError(f"checkpoint(s) not found: {', '.join(missing)}")
    return paths


def _checkpoint_name(path: Path) -> str:
    """The name eval_model gives a checkpoint's runs (``x.pth.tar`` -> ``x``)."""
    return path.name[: -len(".pth.tar")]


# -- images ------------------------------------------------------------------
def domain_dir(root: Path, domain: str) -> Path:
    return root / domain if domain == "kodak" else root / "ood" / domain


def select_images(folder: Path, n: Optional[int]) -> list[Path]:
    """Image files of ``folder`` in sorted order (the first ``n``; all if None)."""
    if not folder.is_dir():
        raise BenchError(f"domain folder not found: {folder}")
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS
    )
    if not files:
        raise BenchError(f"no images in {folder}")
    return files if n is None else files[:n]


def crop_box(w: int, h: int, size: int) -> tuple[int, int, int, int]:
    """Centre ``size`` x ``size`` box (sides smaller than ``size`` are kept)."""
    if size <= 0:
        return 0, 0, w, h
    cw, ch = min(w, size), min(h, size)
    left, top = (w - cw) // 2, (h - ch) // 2
    return left, top, left + cw, top + ch


def plan_subset(
    args: argparse.Namespace, domains: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
    """Per domain: source file, crop file name, crop box and size (h, w)."""
    from PIL import Image

    n = None if args.full else args.images_per_domain
    crop = 0 if args.full else args.crop
    if n is not None and n < 1:
        raise BenchError("--images-per-domain must be at least 1")
    if crop < 0:
        raise BenchError("--crop must be >= 0")
    subset: dict[str, list[dict[str, Any]]] = {}
    for domain in domains:
        entries = []
        for src in select_images(domain_dir(args.data, domain), n):
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


def write_subset(
    data: Path, out: Path, subset: dict[str, list[dict[str, Any]]]
) -> None:
    """Write the crops as RGB PNG to ``out/<domain>/`` (atomic per file)."""
    from PIL import Image

    for domain, entries in subset.items():
        for e in entries:
            dst = out / domain / e["image"]
            dst.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(domain_dir(data, domain) / e["source"]) as img:
                img = img.convert("RGB").crop(tuple(e["box"]))
                tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp.png")
                img.save(tmp, format="PNG")
                os.replace(tmp, dst)


def prepare_subset(
    args: argparse.Namespace, domains: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
    """Plan the subset and write its crops to ``OUTPUT/images/<domain>/``."""
    subset = plan_subset(args, domains)
    write_subset(args.data, args.output / "images", subset)
    return subset


def _subset_key(entries: Sequence[dict[str, Any]]) -> list[tuple]:
    return [
        (e.get("source"), e.get("image"), tuple(e.get("size", ()))) for e in entries
    ]


def _check_manifest(
    path: Path, manifest: dict[str, Any], overwrite: bool, write: bool = True
) -> None:
    """Refuse to mix per-image results of different subsets in one directory."""
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
    if not write:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2))


# -- running eval_model ------------------------------------------------------
def eval_argv(
    args: argparse.Namespace, images: Path, weights: Sequence[Path], out: Path
) -> list[str]:
    """Command line of our eval_model for one domain (all rate points)."""
    argv = ["checkpoint", str(images), "-a", args.architecture, "-p"]
    argv += [str(w) for w in weights]
    argv += ["--compare-base", "--per-image", "-d", str(out)]
    argv += ["--preset", args.preset, "--threads", str(args.threads)]
    for flag in ("refine_steps", "adapt_steps", "seed"):
        value = getattr(args, flag)
        if value is not None:
            argv += [f"--{flag.replace('_', '-')}", str(value)]
    if args.overwrite:
        argv.append("--overwrite")
    return argv


def run_eval_model(argv: list[str]) -> dict[str, Any]:
    """Run ``python -m compressai_lora.utils.eval_model`` in-process (its CLI)."""
    from compressai_lora.utils.eval_model.__main__ import main as eval_main

    stdout = io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout):
            eval_main(argv)
    except SystemExit as err:
        if err.code not in (0, None):
            raise BenchError(
                f"eval_model exited with status {err.code}: {' '.join(argv)}"
            ) from None
    try:
        return json.loads(stdout.getvalue())
    except ValueError:
        return {}


# -- reading per-image results -----------------------------------------------
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
    "pixels"}``; plus a list of problems (missing files or statistics)."""
    base_arch = arch[: -len(_LORA)]
    rate_points: list[list[dict[str, Any]]] = []
    problems: list[str] = []
    for w in weights:
        cpt = _checkpoint_name(w)
        records = []
        for entry in entries:
            stem = Path(entry["image"]).stem
            ours = find_per_image(folder, stem, cpt, arch)
            base = find_per_image(folder, stem, cpt, base_arch)
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
                }
            )
        rate_points.append(records)
    return rate_points, problems


# -- aggregation -------------------------------------------------------------
def psnr_from_dist(dist: float) -> float:
    """PSNR (dB) from ``255^2 * MSE`` of 8-bit images in [0, 1]."""
    return 10 * math.log10(255**2 / max(float(dist), 1e-10))


def image_points(stats: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The three RD points of one image at one rate point.

    ``stats`` is the model's ``last_adaptation``: ``J``, ``bpp`` and ``dist``
    per candidate (``"base"``, ``"refined"``, ``"update"``) and ``choice``.
    Refinement only = the better of ``"base"`` and ``"refined"`` by J (ties:
    base), as a refinement-only encoder with the never-worse check would send.
    """
    J = stats["J"]
    latent = [k for k in ("base", "refined") if k in J]
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


def _bd(anchor: dict[str, list], test: dict[str, list]) -> dict[str, Any]:
    """BD-rate (%, ``value``) and BD-PSNR (dB, ``psnr``) of ``test`` vs ``anchor``;
    None with ``why`` where undefined (e.g. no shared PSNR range)."""
    from compressai_lora.utils.bd import bd_psnr, bd_rate

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
            bd[m] = _bd(curves["base"], curves[m])
        else:
            why = f"{len(rows)} rate points (< 4)"
            bd[m] = {"value": None, "psnr": None, "why": why}
    host = {k: [row["host_base"][k] for row in rows] for k in ("bpp", "psnr-rgb")}
    if len(rows) >= 4 and None not in host["bpp"] + host["psnr-rgb"]:
        bd["base_vs_host_base"] = _bd(host, curves["base"])
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


# -- report ------------------------------------------------------------------
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
    """PSNR-vs-bpp plot of the three curves (matplotlib's Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for m, style in zip(METHODS, ("o-", "s--", "^-")):
        c = d["curves"][m]
        label = METHOD_LABELS[m]
        bd = d["bd_rate"].get(m, {}).get("value")
        if bd is not None:
            label += f" (BD-rate {bd:+.2f}%)"
        ax.plot(c["bpp"], c["psnr-rgb"], style, linewidth=1, markersize=4, label=label)
    ax.set_xlabel("Bit-rate [bpp]")
    ax.set_ylabel("PSNR [dB]")
    ax.grid(True)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{name} ({d['images']} image(s))")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


# -- main --------------------------------------------------------------------
def _run(args: argparse.Namespace, argv: Sequence[str] = ()) -> dict[str, Any]:
    if not args.architecture.endswith(_LORA):
        raise BenchError(f"need a -lora architecture, not {args.architecture}")
    problem = output_dir_problem(args.output)
    if problem:
        raise BenchError(problem)
    weights = _weights(args)
    if len(weights) < 4:
        print(
            f"Note: {len(weights)} rate point(s): BD-rate needs 4 or more",
            file=sys.stderr,
        )
    domains = list(dict.fromkeys(args.domains))
    args.output.mkdir(parents=True, exist_ok=True)
    subset = plan_subset(args, domains)
    manifest = {
        "images_per_domain": None if args.full else args.images_per_domain,
        "crop": 0 if args.full else args.crop,
        "domains": subset,
    }
    write = not args.report_only
    _check_manifest(args.output / "subset.json", manifest, args.overwrite, write)
    if write:
        write_subset(args.data, args.output / "images", subset)

    import torch

    results: dict[str, Any] = {
        "argv": [str(a) for a in argv],
        "report_only": bool(args.report_only),
        "settings": {
            "architecture": args.architecture,
            "weights": [str(w) for w in weights],
            "preset": args.preset,
            "threads": args.threads,
            "refine_steps": args.refine_steps,
            "adapt_steps": args.adapt_steps,
            "seed": args.seed,
            "images_per_domain": manifest["images_per_domain"],
            "crop": manifest["crop"],
            "data": str(args.data),
        },
        "rate_points": [_checkpoint_name(w) for w in weights],
        "host": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        },
        "domains": {},
        "failed": {},
    }
    for domain in domains:
        folder = args.output / domain
        t0 = time.perf_counter()
        if not args.report_only:
            print(f"== {domain}: {len(subset[domain])} image(s)", file=sys.stderr)
            argv = eval_argv(args, args.output / "images" / domain, weights, folder)
            try:
                run_eval_model(argv)
            except BenchError as err:
                results["failed"][domain] = str(err)
                print(f"Error: {domain}: {err}", file=sys.stderr)
                continue
        wall = time.perf_counter() - t0
        rate_points, problems = load_records(
            folder, subset[domain], weights, args.architecture
        )
        if not any(rate_points):
            if not args.report_only:
                results["failed"][domain] = "; ".join(problems) or "no results"
            continue
        d = aggregate_domain(rate_points)
        d["images"] = len(subset[domain])
        d["sources"] = [e["source"] for e in subset[domain]]
        d["sizes"] = [e["size"] for e in subset[domain]]
        if problems:
            d["problems"] = problems
        if not args.report_only:
            d["wall_time_s"] = wall
        plot = f"rd-{domain}.png"
        plot_domain(args.output / plot, domain, d)
        d["plot"] = plot
        results["domains"][domain] = d
    results["summary"] = summarize(results["domains"])
    (args.output / "results.json").write_text(json.dumps(results, indent=2))
    (args.output / "results.md").write_text(markdown(results))
    return results


def main(argv: list[str]) -> None:
    parser = setup_args()
    args = parser.parse_args(argv)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, args.threads))
    try:
        results = _run(args, argv)
    except BenchError as err:
        print(f"Error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as err:  # a path problem met on the way
        print(f"Error: {os_error_line(err)}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print(
            "\nInterrupted. Per-image results are kept: rerun the same command "
            "to resume.",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    finally:
        torch.set_num_threads(threads)
    print(markdown(results), end="")
    if results["failed"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
