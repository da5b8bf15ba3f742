"""Evaluate a codec on an image dataset, with per-image instance adaptation.

A drop-in for ``python -m compressai.utils.eval_model``: the host's command
line (its parser is reused as is), padding, metrics, real-bitstream bpp,
output file names and stdout JSON, plus:

* ``-lora`` architectures (``cheng2020-attn-lora``...) adapt each image in
  ``compress()``; the "instance adaptation" options set how.  Extra result
  keys (``update_bpp``, ``open_gates``, ``adaptation_time``) follow the host's
  five, so ``python -m compressai.utils.plot`` reads the file unchanged.
* ``--compare-base`` evaluates the base architecture on the same images in the
  same run: ``base_*`` and ``delta_*`` keys, the RD cost with one rate point,
  the BD-rate with 4 or more, and an RD plot (PNG) beside the JSON with ``-d``.
* A progress bar (tqdm, stderr) over all images of all rate points, and one
  over the adaptation steps; ``-v`` adds a line per image.
* Under torchrun (``torchrun --nproc-per-node K -m
  compressai_lora.utils.eval_model ...``) the (image, rate point) items are
  sharded over the ranks (``shard``), and rank 0 prints the JSON one process
  prints (timings aside) and writes the files; see docs/eval_model.md.
* :func:`evaluate` runs the tool from Python (``evaluate(argv)`` returns the
  JSON it prints and writes its files), as the bench does.
* ``--per-image -d DIR`` is resumable: images whose per-image JSON exists
  (with the same settings) are loaded, not recomputed, unless ``--overwrite``.
  Files are written atomically.
* Bad input gives one ``Error:`` line and exit status 1: missing or empty
  dataset folders, unknown architectures (argparse), checkpoints that do not
  fit the architecture.  Unreadable image files are skipped with a warning
  that lists them.  16-bit images are scaled to 8 bits (PIL would clip them).
  MS-SSIM is undefined for images with a side of 160 px or less
  (pytorch_msssim): it is reported as ``null`` and left out of the average.

Method: Lv et al., "Dynamic Low-Rank Instance Adaptation for Universal Neural
Image Compression", ACM MM 2023.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import compressai
import torch

from compressai_lora import host
from compressai_lora.adapt.engine import torch_threads
from compressai_lora.lambdas import resolve_lmbda
from compressai_lora.utils.adapt_args import add_adaptation_args

from ..distributed import (
    World,
    device_of,
    is_main_process,
    join,
    rank_threads,
    world_from_env,
)
from ..files import write_json
from ..paths import os_error_line
from . import CLIError
from .compare import add_base, bd_rates, write_base_outputs
from .evaluate import ImageResults, Job, StepBar, collect, evaluate_run
from .images import dataset_images, read_image, short_error
from .plan import Plan, load_run, make_plan, names, output_paths, run_label, vbr_model
from .results import average, settings_of, table
from .shard import Shard

host.eval_script()  # the host's import-time settings (one torch thread), as its CLI

__all__ = ["setup_args", "evaluate", "main", "read_image"]


def setup_args() -> argparse.ArgumentParser:
    """The host's parser (all its flags and choices) plus our argument group."""
    parser = host.eval_setup_args()
    parser.description = (
        "Evaluate a model on an image dataset, with per-image instance "
        "adaptation for -lora architectures."
    )
    for subparser in host.subparsers(parser):
        group = add_adaptation_args(subparser)
        group.add_argument(
            "--compare-base",
            action="store_true",
            help="also evaluate the base architecture (name without "
            "-lora; the same checkpoint through the host class): "
            "deltas, BD-rate, RD plot",
        )
        group.add_argument(
            "--batch-size",
            type=int,
            metavar="B",
            help="adapt up to B images of the same padded size together (one "
            "compress() of the batch, each image decoded from its own "
            "strings; times shared equally) (default: 1)",
        )
        group.add_argument(
            "--overwrite",
            action="store_true",
            help="with --per-image: recompute images whose results already exist",
        )
    return parser


def _configure(
    args: argparse.Namespace, plan: Plan, job: Job, run: Any, meta: dict, step_bar
) -> None:
    """Set the -lora model's lambda and adaptation settings for this run."""
    quality = run if args.source == "pretrained" and not plan.vbr else None
    lmbda = resolve_lmbda(args.lmbda, meta=meta, quality=quality, metric=args.metric)
    if lmbda is None and args.source == "checkpoint" and plan.config.enabled:
        raise CLIError(f"checkpoint {run} has no meta['lmbda']: pass --lmbda")
    cfg = plan.config.replace(lmbda=lmbda, callback=step_bar)
    try:
        job.model.adapt_config = cfg
    except (TypeError, ValueError) as err:
        raise CLIError(f"invalid adaptation settings: {err}") from None
    job.settings = settings_of(cfg)
    job.lmbda = lmbda


def _evaluate_runs(
    args: argparse.Namespace,
    plan: Plan,
    filepaths: list[Path],
    shard: Shard,
    device: torch.device,
) -> tuple[list[list[Job]], dict[tuple[int, int], ImageResults]]:
    """The jobs of each rate point (every rank loads every model: the lambda
    of each comes from its checkpoint), and this rank's results:
    ``{(rate point, image): results}``."""
    world = shard.world
    vbr = vbr_model(args, plan, device) if plan.vbr else None
    step_bar = None
    if plan.is_lora and plan.config.enabled and world.is_main:
        step_bar = StepBar(poll=shard.poll)
    shard.start_bar(len(plan.runs) * len(filepaths))
    runs: list[list[Job]] = []
    results: dict[tuple[int, int], ImageResults] = {}
    for i, run in enumerate(plan.runs):
        if vbr is None:
            model, meta = load_run(args, plan.arch, run, device)
        else:
            model, meta = vbr, {}
            if (
                plan.arch in ["bmshj2018-hyperprior-vbr", "mbt2018-mean-vbr"]
                and args.vbr_tr_stage == 2
            ):
                model.update(force=True, scale=run)
        trained_net, base_net = names(args, plan, run)
        if world.is_main:
            print(f"Using trained model {trained_net}", file=sys.stderr)
        job = Job(model, plan.arch, trained_net)
        if plan.is_lora:
            _configure(args, plan, job, run, meta, step_bar)
        jobs = [job]
        if args.compare_base:
            base, _ = load_run(args, plan.base_arch, run, device)
            if world.is_main:
                print(f"Using trained model {base_net} (base)", file=sys.stderr)
            jobs.insert(0, Job(base, plan.base_arch, base_net, lmbda=job.lmbda))
        shard.set_run(run_label(args, plan, run), trained_net)
        done = evaluate_run(
            jobs,
            shard.images(i, filepaths),
            args,
            vbr_stage=args.vbr_tr_stage if plan.vbr else None,
            vbr_scale=run if plan.vbr else None,
            step_bar=step_bar,
            tracker=shard,
        )
        results.update({(i, j): r for j, r in done.items()})
        for done_job in jobs:  # only the results are needed from here on
            done_job.model = None
        runs.append(jobs)
        if step_bar is not None:
            step_bar.close()
    return runs, results


def _rows(
    args: argparse.Namespace,
    runs: list[list[Job]],
    results: dict[tuple[int, int], ImageResults],
    num_images: int,
) -> tuple[list[dict], list[dict], list[Job]]:
    """Rows (averages) of ours and of the base per rate point, and our jobs,
    from the results of all images (in the dataset's order)."""
    rows: list[dict[str, Any]] = []
    base_rows: list[dict[str, Any]] = []
    ours: list[Job] = []
    for i, jobs in enumerate(runs):
        collect(jobs, [results[i, j] for j in range(num_images)])
        job = jobs[-1]
        rows.append(average(job.per_image))
        if args.compare_base:
            base_rows.append(
                add_base(
                    rows[-1], job.per_image, jobs[0].per_image, job.lmbda, args.metric
                )
            )
        ours.append(job)
    return rows, base_rows, ours


def _output(
    args: argparse.Namespace, plan: Plan, rows: list[dict], jobs: list[Job]
) -> dict[str, Any]:
    """The JSON of the run: the host's keys, then ours."""
    output: dict[str, Any] = {
        "name": f"{plan.arch}-{args.metric}",
        "description": f"Inference ({plan.description.replace('-', ' ')})",
        "results": table(rows),
    }
    if plan.is_lora:
        settings = {k: v for k, v in settings_of(plan.config).items() if k != "lmbda"}
        output["adaptation"] = {
            **settings,
            "lmbda": [job.lmbda for job in jobs],
            "choices": [dict(job.choices) for job in jobs],
        }
    if args.compare_base:
        output["base"] = f"{plan.base_arch}-{args.metric}"
        if len(rows) >= 4:
            bd = bd_rates(rows)
            if bd:
                output["bd-rate"] = bd
        else:
            print(
                f"Note: BD-rate needs >= 4 rate points (got {len(rows)}); "
                "see the delta_* and rd_cost keys",
                file=sys.stderr,
            )
    return output


def _world() -> World:
    try:
        return world_from_env()
    except ValueError as err:
        raise CLIError(f"torchrun environment: {err}") from None


def _run(args: argparse.Namespace) -> tuple[dict[str, Any], Callable[[], None]]:
    """Evaluate; returns the JSON and a function that writes the output files
    (which does nothing on the ranks other than 0)."""
    world = _world()
    try:
        device = device_of(world, args.cuda)
        join(world, args.cuda)
    except (ValueError, RuntimeError) as err:  # no such GPU; no rendezvous
        why = str(err) if isinstance(err, ValueError) else short_error(err)
        raise CLIError(f"cannot start rank {world.rank}: {why}") from None
    with torch_threads(rank_threads(world, args.threads)):
        return _run_ranks(args, world, device)


def _run_ranks(
    args: argparse.Namespace, world: World, device: torch.device
) -> tuple[dict[str, Any], Callable[[], None]]:
    """:func:`_run` on every rank: evaluate this rank's share, gather all."""
    # the other ranks say nothing that rank 0 says too
    quiet = contextlib.nullcontext if world.is_main else _silent_stderr
    shard = Shard(world, resumable=bool(args.per_image and not args.overwrite))
    results: dict = {}
    status = None
    try:
        with quiet():
            filepaths = dataset_images(args.dataset)
            plan = make_plan(args, device, world.distributed)
            compressai.set_entropy_coder(args.entropy_coder)
            json_path, base_path = output_paths(args, plan)
        runs, results = _evaluate_runs(args, plan, filepaths, shard, device)
    except Exception as err:
        if not world.distributed:
            raise
        status = shard.failed(err)
    finally:
        if not world.distributed:
            shard.close()
    results = shard.gather(results, status)  # raises on every rank if one failed
    rows, base_rows, jobs = _rows(args, runs, results, len(filepaths))
    with quiet():
        output = _output(args, plan, rows, jobs)

    def write_outputs() -> None:
        if json_path is None or not world.is_main:
            return
        try:
            write_json(json_path, output)
            if base_path is not None:
                write_base_outputs(json_path, base_path, output, base_rows)
        except OSError as err:
            raise CLIError(
                f"cannot write {err.filename or json_path}: {err.strerror or err} "
                "(the results are on stdout)"
            ) from None

    return output, write_outputs


@contextlib.contextmanager
def _silent_stderr() -> Iterator[None]:
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = setup_args()
    args = parser.parse_args([str(a) for a in argv])
    if args.source not in ["checkpoint", "pretrained"]:
        print("Error: missing 'checkpoint' or 'pretrained' source.", file=sys.stderr)
        parser.print_help()
        raise SystemExit(1)
    return args


def evaluate(argv: Sequence[str]) -> dict[str, Any]:
    """Run the tool without printing: returns its JSON, having written its files.

    ``argv`` as on the command line.  Raises :class:`CLIError` on bad input
    (and ``SystemExit`` where argparse rejects ``argv``).  Under torchrun every
    rank must call it with the same ``argv``; every rank gets the whole JSON,
    rank 0 writes the files.
    """
    output, write_outputs = _run(_parse(argv))
    write_outputs()
    return output


def main(argv: list[str]) -> None:
    """The command line; under torchrun, rank 0 prints (every rank's errors
    are gathered there) and every rank exits with the same status."""
    main_rank = is_main_process()
    with contextlib.nullcontext() if main_rank else _silent_stderr():
        args = _parse(argv)  # argparse's errors: once
    try:
        output, write_outputs = _run(args)
        # stdout first: a failed file write never loses a finished evaluation
        if main_rank:
            print(json.dumps(output, indent=2), flush=True)
        write_outputs()
    except CLIError as err:
        if main_rank:
            print(f"Error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as err:  # a path problem met on the way
        if main_rank:
            print(f"Error: {os_error_line(err)}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        if main_rank:
            print(
                "\nInterrupted. Per-image results written so far are kept: rerun "
                "the same command (with --per-image -d) to resume.",
                file=sys.stderr,
            )
        raise SystemExit(130) from None


if __name__ == "__main__":
    main(sys.argv[1:])
