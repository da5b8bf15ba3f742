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
* A progress bar (tqdm, stderr) over images and adaptation steps; ``-v`` adds
  a line per image.
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
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import compressai
import torch

from compressai_lora import host
from compressai_lora.adapt import AdaptConfig
from compressai_lora.adapt.config import resolve_lmbda
from compressai_lora.utils.adapt_args import (
    adapt_config_from_args,
    adaptation_flags_given,
    add_adaptation_args,
)

from ..files import write_json
from ..paths import file_problem, os_error_line, output_dir_problem
from . import CLIError
from .compare import add_base, bd_rates, write_base_outputs
from .evaluate import Job, StepBar, evaluate_run
from .images import dataset_images, read_image
from .loading import checkpoint_model, load_pretrained
from .results import average, settings_of, table

host.eval_script()  # the host's import-time settings (one torch thread), as its CLI

__all__ = ["setup_args", "evaluate", "main", "read_image"]

_LORA = "-lora"


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
            "--overwrite",
            action="store_true",
            help="with --per-image: recompute images whose results already exist",
        )
    return parser


@dataclass
class _Plan:
    """What one invocation evaluates: the architecture(s) and the rate points."""

    arch: str
    base_arch: Optional[str]  # with a -lora architecture
    description: str  # the host's: "entropy-estimation" or the coder's name
    config: Optional[AdaptConfig]  # adaptation settings of a -lora model
    runs: list  # qualities, checkpoint paths or VBR scales
    vbr: bool

    @property
    def is_lora(self) -> bool:
        return self.base_arch is not None


def _adapt_config(args: argparse.Namespace) -> AdaptConfig:
    """AdaptConfig from --preset and the adaptation flags (lmbda set per run)."""
    try:
        return adapt_config_from_args(args, metric=args.metric)
    except (TypeError, ValueError) as err:
        raise CLIError(f"invalid adaptation settings: {err}") from None


def _plan(args: argparse.Namespace) -> _Plan:
    arch = args.architecture
    is_lora = arch.endswith(_LORA)
    if args.per_image and not args.output_directory:
        raise CLIError("--per-image needs an output directory (-d)")
    if args.compare_base and not is_lora:
        raise CLIError(f"--compare-base needs a -lora architecture, not {arch}")
    if not is_lora and adaptation_flags_given(args):
        print(
            f"Warning: adaptation options ignored: {arch} is not a -lora architecture",
            file=sys.stderr,
        )
    vbr = arch.endswith("-vbr")
    if vbr:
        if args.source == "checkpoint" and len(args.checkpoint_paths) > 1:
            raise CLIError("Use only one checkpoint for vbr model.")
        try:
            scales = [1.0 / float(q) for q in args.vbr_quantstepsizes.split(",") if q]
        except (ValueError, ZeroDivisionError):
            raise CLIError(
                f"invalid --vbr_quantstep: {args.vbr_quantstepsizes!r}"
            ) from None
        runs: list = list(torch.tensor(sorted(scales)))
        if args.cuda and torch.cuda.is_available():
            runs = [r.to("cuda") for r in runs]
    elif args.source == "pretrained":
        try:
            runs = sorted(int(q) for q in args.qualities.split(",") if q)
        except ValueError:
            raise CLIError(f"invalid qualities: {args.qualities!r}") from None
        if not runs:
            raise CLIError("no quality given (-q)")
    else:
        runs = list(args.checkpoint_paths or [])
        if not runs:
            raise CLIError("no checkpoint given (-p)")
    return _Plan(
        arch=arch,
        base_arch=arch[: -len(_LORA)] if is_lora else None,
        description=(
            "entropy-estimation" if args.entropy_estimation else args.entropy_coder
        ),
        config=_adapt_config(args) if is_lora else None,
        runs=runs,
        vbr=vbr,
    )


def _output_paths(
    args: argparse.Namespace, plan: _Plan
) -> tuple[Optional[Path], Optional[Path]]:
    """The host's output JSON path (``-d``/``-o``) and, with --compare-base,
    the base curve's; (None, None) without ``-d``."""
    if not args.output_directory:
        return None, None
    description = plan.description.replace("-", " ")  # the host's file names
    output_file = args.output_file or f"{plan.arch}-{description}"
    json_path = Path(f"{args.output_directory}/{output_file}").with_suffix(".json")
    base_path = None
    if args.compare_base:
        if args.output_file:
            base_path = json_path.with_name(f"{json_path.stem}-base.json")
        else:
            base_path = Path(
                f"{args.output_directory}/{plan.base_arch}-{description}"
            ).with_suffix(".json")
    for problem in [output_dir_problem(args.output_directory)] + [
        file_problem(f) for f in (json_path, base_path)
    ]:
        if problem:
            raise CLIError(problem)
    return json_path, base_path


def _load(args: argparse.Namespace, arch: str, run: Any) -> tuple[Any, dict]:
    """``(model, checkpoint meta)`` of one rate point, on the device asked."""
    if args.source == "pretrained":
        quality = 0 if arch.endswith("-vbr") else run
        model, meta = load_pretrained(arch, args.metric, quality), {}
    else:
        model, meta = checkpoint_model(arch, args.no_update, run)
    if args.cuda and torch.cuda.is_available():
        model = model.to("cuda")
    return model, meta


def _vbr_model(args: argparse.Namespace, plan: _Plan) -> Any:
    """The one model of a VBR run, set up as the host sets it up."""
    run = args.checkpoint_paths[0] if args.source == "checkpoint" else None
    model, _ = _load(args, plan.arch, run)
    model.no_quantoffset = False
    if plan.arch in ["mbt2018-vbr"]:
        model.scl2ctx = True
    return model


def _names(args: argparse.Namespace, plan: _Plan, run: Any) -> tuple[str, str]:
    """The host's trained-net names of ``run``: ours and the base's."""
    if args.source == "pretrained":
        return (
            f"{plan.arch}-{args.metric}-{run}-{plan.description}",
            f"{plan.base_arch}-{args.metric}-{run}-{plan.description}",
        )
    path = args.checkpoint_paths[0] if plan.vbr else run
    name = Path(path).name[: -len(".tar.pth")]
    return f"{name}-{plan.description}", f"{name}-{plan.base_arch}-{plan.description}"


def _configure(
    args: argparse.Namespace, plan: _Plan, job: Job, run: Any, meta: dict, step_bar
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
    args: argparse.Namespace, plan: _Plan, filepaths: list[Path]
) -> tuple[list[dict], list[dict], list[Job]]:
    """Rows (averages) of ours and of the base per rate point, and our jobs."""
    vbr_model = _vbr_model(args, plan) if plan.vbr else None
    step_bar = StepBar() if plan.is_lora and plan.config.enabled else None
    rows: list[dict[str, Any]] = []
    base_rows: list[dict[str, Any]] = []
    ours: list[Job] = []
    for run in plan.runs:
        if vbr_model is None:
            model, meta = _load(args, plan.arch, run)
        else:
            model, meta = vbr_model, {}
            if (
                plan.arch in ["bmshj2018-hyperprior-vbr", "mbt2018-mean-vbr"]
                and args.vbr_tr_stage == 2
            ):
                model.update(force=True, scale=run)
        trained_net, base_net = _names(args, plan, run)
        print(f"Using trained model {trained_net}", file=sys.stderr)
        job = Job(model, plan.arch, trained_net)
        if plan.is_lora:
            _configure(args, plan, job, run, meta, step_bar)
        jobs = [job]
        if args.compare_base:
            base, _ = _load(args, plan.base_arch, run)
            print(f"Using trained model {base_net} (base)", file=sys.stderr)
            jobs.insert(0, Job(base, plan.base_arch, base_net, lmbda=job.lmbda))
        evaluate_run(
            jobs,
            filepaths,
            args,
            vbr_stage=args.vbr_tr_stage if plan.vbr else None,
            vbr_scale=run if plan.vbr else None,
            step_bar=step_bar,
        )
        rows.append(average(job.per_image))
        if args.compare_base:
            base_rows.append(
                add_base(
                    rows[-1], job.per_image, jobs[0].per_image, job.lmbda, args.metric
                )
            )
        ours.append(job)
        if step_bar is not None:
            step_bar.close()
    return rows, base_rows, ours


def _output(
    args: argparse.Namespace, plan: _Plan, rows: list[dict], jobs: list[Job]
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


def _run(args: argparse.Namespace) -> tuple[dict[str, Any], Callable[[], None]]:
    """Evaluate; returns the JSON and a function that writes the output files."""
    filepaths = dataset_images(args.dataset)
    plan = _plan(args)
    compressai.set_entropy_coder(args.entropy_coder)
    json_path, base_path = _output_paths(args, plan)
    rows, base_rows, jobs = _evaluate_runs(args, plan, filepaths)
    output = _output(args, plan, rows, jobs)

    def write_outputs() -> None:
        if json_path is None:
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
    (and ``SystemExit`` where argparse rejects ``argv``).
    """
    output, write_outputs = _run(_parse(argv))
    write_outputs()
    return output


def main(argv: list[str]) -> None:
    args = _parse(argv)
    try:
        output, write_outputs = _run(args)
        # stdout first: a failed file write never loses a finished evaluation
        print(json.dumps(output, indent=2), flush=True)
        write_outputs()
    except CLIError as err:
        print(f"Error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as err:  # a path problem met on the way
        print(f"Error: {os_error_line(err)}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print(
            "\nInterrupted. Per-image results written so far are kept: rerun the "
            "same command (with --per-image -d) to resume.",
            file=sys.stderr,
        )
        raise SystemExit(130) from None


if __name__ == "__main__":
    main(sys.argv[1:])
