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

Parts: ``args`` (command line, checkpoints), ``subset`` (images, crops,
manifest), ``evaluation`` (eval_model in-process), ``records`` (per-image
results), ``aggregate`` (RD points, BD-rates, summary), ``report`` (tables,
plots); this module runs them.

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

from ..files import write_bytes, write_json
from ..paths import output_dir_problem
from .aggregate import (
    METHODS,
    aggregate_domain,
    aggregate_rate_point,
    image_points,
    summarize,
)
from .args import LORA_SUFFIX, checkpoint_name, setup_args, weight_paths
from .errors import BenchError, error_line
from .evaluation import eval_argv, run_eval_model
from .records import find_per_image, load_records
from .report import markdown, plot_domain
from .subset import DOMAINS, check_manifest, plan_subset, prepare_subset, write_subset

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
    "find_per_image",
    "plan_subset",
    "prepare_subset",
    "write_subset",
]

_INTERRUPTED = (
    "\nInterrupted. Per-image results are kept: rerun the same command to resume."
)


def _header(
    args: argparse.Namespace,
    argv: Sequence[str],
    weights: Sequence[Path],
    manifest: dict,
) -> dict[str, Any]:
    """The settings, rate points and host of ``results.json``."""
    import torch

    return {
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
        "rate_points": [checkpoint_name(w) for w in weights],
        "host": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        },
        "domains": {},
        "failed": {},
    }


def _run_domain(
    args: argparse.Namespace,
    domain: str,
    entries: list[dict[str, Any]],
    weights: Sequence[Path],
    failed: dict[str, str],
) -> dict[str, Any] | None:
    """Evaluate one domain (unless --report-only) and aggregate its results;
    None (and the reason in ``failed``) where it has none."""
    folder = args.output / domain
    t0 = time.perf_counter()
    if not args.report_only:
        print(f"== {domain}: {len(entries)} image(s)", file=sys.stderr)
        eval_args = eval_argv(args, args.output / "images" / domain, weights, folder)
        try:
            run_eval_model(eval_args)
        except BenchError as err:
            failed[domain] = str(err)
            print(f"Error: {domain}: {err}", file=sys.stderr)
            return None
    wall = time.perf_counter() - t0
    rate_points, problems = load_records(folder, entries, weights, args.architecture)
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
    plot = f"rd-{domain}.png"
    plot_domain(args.output / plot, domain, d)
    d["plot"] = plot
    return d


def _run(args: argparse.Namespace, argv: Sequence[str] = ()) -> dict[str, Any]:
    """The whole benchmark: ``results.json``'s content, its files written."""
    if not args.architecture.endswith(LORA_SUFFIX):
        raise BenchError(f"need a -lora architecture, not {args.architecture}")
    problem = output_dir_problem(args.output)
    if problem:
        raise BenchError(problem)
    weights = weight_paths(args)
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
    check_manifest(args.output / "subset.json", manifest, args.overwrite, write)
    if write:
        write_subset(args.data, args.output / "images", subset)
    results = _header(args, argv, weights, manifest)
    for domain in domains:
        d = _run_domain(args, domain, subset[domain], weights, results["failed"])
        if d is not None:
            results["domains"][domain] = d
    results["summary"] = summarize(results["domains"])
    write_json(args.output / "results.json", results)
    write_bytes(args.output / "results.md", markdown(results).encode())
    return results


def main(argv: list[str]) -> None:
    parser = setup_args()
    args = parser.parse_args(argv)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, args.threads))
    try:
        results = _run(args, argv)
    except (BenchError, OSError) as err:  # OSError: a path problem on the way
        print(f"Error: {error_line(err)}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print(_INTERRUPTED, file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        torch.set_num_threads(threads)
    print(markdown(results), end="")
    if results["failed"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
