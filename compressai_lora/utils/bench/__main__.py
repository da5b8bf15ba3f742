"""Out-of-domain benchmark: base codec, latent refinement only, full method,
for one or several architectures, beside classical codecs.

For Kodak (in-domain) and each out-of-domain folder of the shared data
(``ood/{pixel,screen,line,vector,painting,comic}``), the benchmark takes a
fixed subset (the first ``--images-per-domain`` files in sorted order,
centre-cropped to ``--crop`` pixels, written as PNG to a work directory).
For each architecture of ``-a`` (each with its own checkpoints, one per rate
point: see ``weights``), it runs our ``eval_model`` once per domain in
checkpoint mode over all rate points (``--compare-base --per-image``) and
reads its per-image JSON files.

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
bpp).  The same crops are coded by Pillow's JPEG, WebP and AVIF (and JPEG XL
where its plugin is installed) over ``--anchor-qualities`` (``anchors``):
BD-rate of our base and full curves vs each, BD-PSNR (``dB*``) where the
PSNR ranges do not overlap.

Outputs in ``--output``: ``results.json``, ``results.md`` (tables) and one RD
plot per domain (``rd-<domain>.png``, with the anchors).  With one
architecture eval_model's files are in ``<domain>/`` (the layout of earlier
runs); with several in ``<arch>/<domain>/``, each architecture's plots in
``<arch>/``, and ``results.md`` starts with a summary across architectures.
Anchor results are cached in ``anchors/<domain>/``.  Rerunning the same
command resumes from the per-image files, and ``records.jsonl`` holds them
all in one file (``store``): with it alone the command resumes elsewhere.

Parts: ``args`` (command line), ``weights`` (checkpoints per architecture),
``subset`` (images, crops, manifest), ``store`` (the per-job files in one),
``evaluation`` (eval_model in-process), ``records`` (per-image results),
``aggregate`` (RD points, BD-rates, summary), ``anchors`` (classical codecs,
cached per image), ``compare`` (anchor curves, BD vs anchors, across
architectures), ``report`` (tables), ``plots``; this module runs them.

Method: Lv et al., "Dynamic Low-Rank Instance Adaptation for Universal Neural
Image Compression", ACM MM 2023.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from ..distributed import is_main_process, rank_share, world_from_env
from ..files import write_bytes, write_json
from ..paths import output_dir_problem
from .aggregate import (
    METHODS,
    aggregate_domain,
    aggregate_rate_point,
    image_points,
    summarize,
)
from .anchors import CODECS, codec_settings, run_anchors, select_codecs
from .args import setup_args
from .compare import bd_vs_anchors, cross_summary
from .errors import BenchError, error_line
from .evaluation import eval_argv, run_eval_model
from .plots import plot_combined, plot_domain
from .records import find_per_image, load_records
from .report import markdown
from .store import pack, unpack
from .subset import (
    DOMAINS,
    check_manifest,
    counts,
    plan_subset,
    prepare_subset,
    write_subset,
)
from .weights import LORA_SUFFIX, checkpoint_name, parse_qualities, weight_paths

__all__ = [
    "CODECS",
    "DOMAINS",
    "METHODS",
    "setup_args",
    "main",
    "image_points",
    "aggregate_rate_point",
    "aggregate_domain",
    "summarize",
    "markdown",
    "find_per_image",
    "plan_subset",
    "prepare_subset",
    "write_subset",
]

_INTERRUPTED = (
    "\nInterrupted. Per-image results are kept (and in records.jsonl): rerun the "
    "same command to resume."
)


def _header(
    args: argparse.Namespace,
    argv: Sequence[str],
    weights: dict[str, list[Path]],
    manifest: dict,
) -> dict[str, Any]:
    """The settings and host of ``results.json``."""
    import torch

    settings: dict[str, Any] = {"architectures": list(weights)}
    if len(weights) == 1:  # as before the bench took several
        settings["architecture"] = next(iter(weights))
    settings.update(
        {
            "weights": {a: [str(p) for p in w] for a, w in weights.items()},
            "preset": args.preset,
            "threads": args.threads,
            "refine_steps": args.refine_steps,
            "adapt_steps": args.adapt_steps,
            "seed": args.seed,
            "images_per_domain": manifest["images_per_domain"],
            "skip": args.skip,
            "crop": manifest["crop"],
            "data": str(args.data),
        }
    )
    return {
        "argv": [str(a) for a in argv],
        "report_only": bool(args.report_only),
        "settings": settings,
        "host": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        },
        "architectures": {},
        "failed": {},
    }


def _run_domain(
    args: argparse.Namespace,
    arch: str,
    folder: Path,
    domain: str,
    entries: list[dict[str, Any]],
    weights: Sequence[Path],
    failed: dict[str, str],
) -> dict[str, Any] | None:
    """Evaluate one architecture on one domain (unless --report-only), its
    results in ``folder/domain``, and aggregate them; None (and the reason in
    ``failed``) where it has none."""
    out = folder / domain
    t0 = time.perf_counter()
    if not args.report_only:
        print(f"== {arch} {domain}: {len(entries)} image(s)", file=sys.stderr)
        images = args.output / "images" / domain
        eval_args = eval_argv(args, arch, images, weights, out)
        try:
            run_eval_model(eval_args)
        except BenchError as err:
            failed[domain] = str(err)
            print(f"Error: {domain}: {err}", file=sys.stderr)
            return None
        finally:
            if is_main_process():
                pack(args.output)
    wall = time.perf_counter() - t0
    rate_points, problems = load_records(out, entries, weights, arch)
    if not any(rate_points):
        if not args.report_only:
            failed[domain] = "; ".join(problems) or "no results"
        return None
    d = aggregate_domain(rate_points)
    d["images"] = len(entries)
    d["sources"] = [e["source"] for e in entries]
    d["sizes"] = [e["size"] for e in entries]
    if problems:
        d["problems"] = problems
    if not args.report_only:
        d["wall_time_s"] = wall
    return d


def _code_anchor_share(args: argparse.Namespace, subset: dict[str, list]) -> None:
    """Code this rank's share of the anchors (every rank-th image) into their
    cache, so that no two ranks code the same image."""
    codecs, _ = select_codecs(args.anchors)
    if args.report_only or not codecs:
        return
    world = world_from_env()
    items = [(d, e) for d, entries in subset.items() for e in entries]
    share: dict[str, list] = {}
    for d, e in items[world.rank :: world.size]:
        share.setdefault(d, []).append(e)
    qualities = parse_qualities(args.anchor_qualities, "--anchor-qualities", 0, 100)
    run_anchors(args.output, share, codecs, sorted(qualities), True, args.overwrite)


def _anchors(
    args: argparse.Namespace, subset: dict[str, list]
) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """``results.json``'s ``anchors`` (None with --anchors none) and the
    domains whose anchors failed; the main process codes what the ranks'
    shares left out."""
    codecs, skipped = select_codecs(args.anchors)
    if not codecs and not skipped:
        return None, {}
    qualities = sorted(
        parse_qualities(args.anchor_qualities, "--anchor-qualities", 0, 100)
    )
    domains, failed = run_anchors(
        args.output,
        subset,
        codecs,
        qualities,
        compute=not args.report_only and is_main_process(),
    )
    info = {
        "qualities": qualities,
        "codecs": {c.name: {"label": c.label, **codec_settings(c)} for c in codecs},
        "skipped": skipped,
        "domains": domains,
    }
    return info, failed


def _run_architecture(
    args: argparse.Namespace,
    arch: str,
    prefix: str,
    subset: dict[str, list],
    weights: Sequence[Path],
) -> dict[str, Any]:
    """One architecture on every domain: its ``results.json`` entry; its
    eval_model files in ``OUTPUT/<prefix><domain>/``."""
    r: dict[str, Any] = {
        "weights": [str(w) for w in weights],
        "rate_points": [checkpoint_name(w) for w in weights],
        "folder": prefix or ".",
        "domains": {},
        "failed": {},
    }
    for domain, entries in subset.items():
        d = _run_domain(
            args, arch, args.output / prefix, domain, entries, weights, r["failed"]
        )
        if d is None:
            continue
        d["plot"] = f"{prefix}rd-{domain}.png"
        r["domains"][domain] = d
    r["summary"] = summarize(r["domains"])
    return r


def _compare_and_plot(
    output: Path, r: dict[str, Any], anchors: dict[str, Any] | None
) -> None:
    """An architecture's BD-rates against the anchors, and its RD plots."""
    for domain, d in r["domains"].items():
        if anchors is not None and domain in anchors["domains"]:
            d["bd_vs_anchors"] = bd_vs_anchors(d["curves"], anchors["domains"][domain])
        if is_main_process():
            plot_domain(output / d["plot"], domain, d, anchors)


def _plot_combined(
    output: Path, results: dict[str, Any], anchors: dict[str, Any] | None
) -> dict[str, str]:
    """``rd-<domain>.png`` with every architecture's curves: domain -> file."""
    plots = {}
    domains = {n: None for r in results["architectures"].values() for n in r["domains"]}
    for domain in domains:
        by_arch = {
            a: r["domains"][domain]
            for a, r in results["architectures"].items()
            if domain in r["domains"]
        }
        plots[domain] = f"rd-{domain}.png"
        if is_main_process():
            plot_combined(output / plots[domain], domain, by_arch, anchors)
    return plots


def _run(args: argparse.Namespace, argv: Sequence[str] = ()) -> dict[str, Any]:
    """The whole benchmark: ``results.json``'s content, its files written."""
    archs = list(dict.fromkeys(args.architecture))
    bad = [a for a in archs if not a.endswith(LORA_SUFFIX)]
    if bad:
        raise BenchError(f"need -lora architectures, not {', '.join(bad)}")
    problem = output_dir_problem(args.output)
    if problem:
        raise BenchError(problem)
    _, skipped = select_codecs(args.anchors)  # bad flags fail before any work
    parse_qualities(args.anchor_qualities, "--anchor-qualities", 0, 100)
    weights = {arch: weight_paths(args, arch) for arch in archs}
    for arch, w in weights.items():
        if len(w) < 4:
            print(
                f"Note: {arch}: {len(w)} rate point(s): BD-rate needs 4 or more",
                file=sys.stderr,
            )
    domains = list(dict.fromkeys(args.domains))
    args.output.mkdir(parents=True, exist_ok=True)
    subset = plan_subset(args, domains)
    per_domain = None if args.full else counts(args.images_per_domain, domains)
    manifest = {
        "images_per_domain": per_domain,
        "crop": 0 if args.full else args.crop,
        "domains": subset,
    }
    write = not args.report_only
    check_manifest(args.output / "subset.json", manifest, args.overwrite, write)
    if write:
        write_subset(args.data, args.output / "images", subset)
    if not args.overwrite:  # every rank: same files, each written atomically
        unpack(args.output)
    results = _header(args, argv, weights, manifest)
    for why in skipped.values() if is_main_process() else ():
        print(f"Note: anchor skipped: {why}", file=sys.stderr)
    _code_anchor_share(args, subset)
    # one architecture: eval_model's files in OUTPUT/<domain>/ as before;
    # several: in OUTPUT/<arch>/<domain>/
    single = len(archs) == 1
    for arch in archs:
        prefix = "" if single else f"{arch}/"
        r = _run_architecture(args, arch, prefix, subset, weights[arch])
        results["architectures"][arch] = r
        for domain, why in r["failed"].items():
            results["failed"][domain if single else f"{arch} {domain}"] = why
    # every rank coded its share of the anchors before its first eval_model
    # run, which ends when all ranks have ended theirs
    anchors, anchors_failed = _anchors(args, subset)
    if anchors is not None:
        results["anchors"] = anchors
    for domain, why in anchors_failed.items():
        results["failed"][f"anchors {domain}"] = why
    for r in results["architectures"].values():
        _compare_and_plot(args.output, r, anchors)
    if single:  # the keys of a one-architecture run, as before
        r = results["architectures"][archs[0]]
        results.update(
            rate_points=r["rate_points"], domains=r["domains"], summary=r["summary"]
        )
    else:
        results["cross"] = cross_summary(results["architectures"])
        results["plots"] = _plot_combined(args.output, results, anchors)
    if is_main_process():  # under torchrun every rank has the results; one writes
        pack(args.output)
        write_json(args.output / "results.json", results)
        write_bytes(args.output / "results.md", markdown(results).encode())
    return results


def main(argv: list[str]) -> None:
    parser = setup_args()
    args = parser.parse_args(argv)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(rank_share(args.threads))
    try:
        results = _run(args, argv)
    except (BenchError, OSError) as err:  # OSError: a path problem on the way
        print(f"Error: {error_line(err)}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        if is_main_process() and (args.output / "subset.json").is_file():
            pack(args.output)
        print(_INTERRUPTED, file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        torch.set_num_threads(threads)
    if is_main_process():
        print(markdown(results), end="")
    if results["failed"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
