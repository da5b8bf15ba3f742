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
from pathlib import Path
from typing import Any, Callable, Optional

import compressai
import torch
from compressai.utils.eval_model import __main__ as host

from compressai_lora.adapt import AdaptConfig
from compressai_lora.utils.adapt_args import (
    adapt_config_from_args,
    adaptation_flags_given,
    add_adaptation_args,
)

from ..paths import file_problem, os_error_line, output_dir_problem
from . import CLIError
from .compare import add_base, bd_rates, write_base_outputs
from .evaluate import Job, StepBar, evaluate_run
from .images import dataset_images, read_image, small_image_metrics
from .loading import checkpoint_lmbda, load_checkpoint, load_pretrained
from .results import average, settings_of, table, write_json

__all__ = ["setup_args", "main", "read_image"]

_LORA = "-lora"


def setup_args() -> argparse.ArgumentParser:
    """The host's parser (all its flags and choices) plus our argument group."""
    parser = host.setup_args()
    parser.description = (
        "Evaluate a model on an image dataset, with per-image instance "
        "adaptation for -lora architectures."
    )
    for action in parser._actions:  # the host keeps its subparsers private
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
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
                    help="with --per-image: recompute images whose results "
                    "already exist",
                )
    return parser


def _adapt_config(args: argparse.Namespace) -> AdaptConfig:
    """AdaptConfig from --preset and the adaptation flags (lmbda set per run)."""
    try:
        return adapt_config_from_args(args, metric=args.metric)
    except (TypeError, ValueError) as err:
        raise CLIError(f"invalid adaptation settings: {err}") from None


def _check_inputs(args: argparse.Namespace, arch: str) -> list[Path]:
    filepaths = dataset_images(args.dataset)
    if args.per_image and not args.output_directory:
        raise CLIError("--per-image needs an output directory (-d)")
    if args.compare_base and not arch.endswith(_LORA):
        raise CLIError(f"--compare-base needs a -lora architecture, not {arch}")
    return filepaths


def _output_paths(
    args: argparse.Namespace, arch: str, base_arch: Optional[str]
) -> tuple[Optional[Path], Optional[Path]]:
    """The host's output JSON path (``-d``/``-o``) and, with --compare-base,
    the base curve's; (None, None) without ``-d``."""
    if not args.output_directory:
        return None, None
    description = (
        "entropy estimation" if args.entropy_estimation else args.entropy_coder
    )
    output_file = args.output_file if args.output_file else f"{arch}-{description}"
    json_path = Path(f"{args.output_directory}/{output_file}").with_suffix(".json")
    base_path = None
    if args.compare_base:
        if args.output_file:
            base_path = json_path.with_name(f"{json_path.stem}-base.json")
        else:
            base_path = Path(
                f"{args.output_directory}/{base_arch}-{description}"
            ).with_suffix(".json")
    return json_path, base_path


def _check_writable(directory: str, files: list[Optional[Path]]) -> None:
    """Fail before any work if the outputs cannot be written."""
    for problem in [output_dir_problem(directory)] + [file_problem(f) for f in files]:
        if problem:
            raise CLIError(problem)


def _run(args: argparse.Namespace) -> tuple[dict[str, Any], Callable[[], None]]:  # noqa: C901
    """Evaluate; returns the JSON and a function that writes the output files."""
    arch = args.architecture
    is_lora = arch.endswith(_LORA)
    is_vbr_model = arch.endswith("-vbr")
    filepaths = _check_inputs(args, arch)
    base_arch = arch[: -len(_LORA)] if is_lora else None
    if not is_lora and adaptation_flags_given(args):
        print(
            f"Warning: adaptation options ignored: {arch} is not a -lora architecture",
            file=sys.stderr,
        )
    config = _adapt_config(args) if is_lora else None

    description = (
        "entropy-estimation" if args.entropy_estimation else args.entropy_coder
    )
    compressai.set_entropy_coder(args.entropy_coder)
    json_path, base_path = _output_paths(args, arch, base_arch)
    if args.output_directory:
        _check_writable(args.output_directory, [json_path, base_path])
    cuda = args.cuda and torch.cuda.is_available()

    if args.source == "pretrained":
        try:
            qualities = [int(q) for q in args.qualities.split(",") if q]
        except ValueError:
            raise CLIError(f"invalid qualities: {args.qualities!r}") from None
        if not qualities:
            raise CLIError("no quality given (-q)")
        runs: Any = sorted(qualities)
        opts: tuple = (arch, args.metric)
        if is_vbr_model:
            opts += (0,)
        load_func: Callable = load_pretrained
    else:
        runs = args.checkpoint_paths
        if not runs:
            raise CLIError("no checkpoint given (-p)")
        opts = (arch, args.no_update)
        if is_vbr_model:
            opts += (args.checkpoint_paths[0],)
        load_func = load_checkpoint

    model = None
    if is_vbr_model:  # as the host: one model, one run per quantization step
        if args.source == "checkpoint" and len(args.checkpoint_paths) > 1:
            raise CLIError("Use only one checkpoint for vbr model.")
        try:
            scales = [1.0 / float(q) for q in args.vbr_quantstepsizes.split(",") if q]
        except (ValueError, ZeroDivisionError):
            raise CLIError(
                f"invalid --vbr_quantstep: {args.vbr_quantstepsizes!r}"
            ) from None
        runs = torch.tensor(sorted(scales))
        model = load_func(*opts)
        model.no_quantoffset = False
        if arch in ["mbt2018-vbr"]:
            model.scl2ctx = True
        if cuda:
            model = model.to("cuda")
            runs = runs.to("cuda")

    step_bar = StepBar() if is_lora and config.enabled else None
    rows: list[dict[str, Any]] = []
    base_rows: list[dict[str, Any]] = []
    lmbdas: list[Optional[float]] = []
    choices: list[dict[str, int]] = []
    for run in runs:
        if not is_vbr_model:
            model = load_func(*opts, run)
        elif (
            arch in ["bmshj2018-hyperprior-vbr", "mbt2018-mean-vbr"]
            and args.vbr_tr_stage == 2
        ):
            model.update(force=True, scale=run)
        if args.source == "pretrained":
            trained_net = f"{arch}-{args.metric}-{run}-{description}"
            base_net = f"{base_arch}-{args.metric}-{run}-{description}"
        else:
            run_ = run if not is_vbr_model else args.checkpoint_paths[0]
            cpt_name = Path(run_).name[: -len(".tar.pth")]
            trained_net = f"{cpt_name}-{description}"
            base_net = f"{cpt_name}-{base_arch}-{description}"
        print(f"Using trained model {trained_net}", file=sys.stderr)
        if cuda and not is_vbr_model:
            model = model.to("cuda")

        job = Job(model, arch, trained_net)
        if is_lora:
            lmbda = args.lmbda
            if lmbda is None and args.source == "pretrained":
                lmbda = getattr(model, "default_lmbda", None)
            elif lmbda is None:
                lmbda = checkpoint_lmbda(run)
                if lmbda is None and config.enabled:
                    raise CLIError(
                        f"checkpoint {run} has no meta['lmbda']: pass --lmbda"
                    )
            cfg = config.replace(lmbda=lmbda, callback=step_bar)
            try:
                model.adapt_config = cfg
            except (TypeError, ValueError) as err:
                raise CLIError(f"invalid adaptation settings: {err}") from None
            job.settings = settings_of(cfg)
            job.lmbda = lmbda
        jobs = [job]
        if args.compare_base:
            if args.source == "pretrained":
                base = load_pretrained(base_arch, args.metric, run)
            else:
                base = load_checkpoint(base_arch, args.no_update, run)
            if cuda:
                base = base.to("cuda")
            print(f"Using trained model {base_net} (base)", file=sys.stderr)
            jobs.insert(0, Job(base, base_arch, base_net, lmbda=job.lmbda))

        evaluate_run(
            jobs,
            filepaths,
            args,
            vbr_stage=None if not is_vbr_model else args.vbr_tr_stage,
            vbr_scale=None if not is_vbr_model else run,
            step_bar=step_bar,
        )
        row = average(job.per_image)
        if is_lora:
            lmbdas.append(job.lmbda)
            choices.append(dict(job.choices))
        if args.compare_base:
            base_rows.append(
                add_base(row, job.per_image, jobs[0].per_image, job.lmbda, args.metric)
            )
        rows.append(row)
        if step_bar is not None:
            step_bar.close()

    results = table(rows)

    description = (
        "entropy estimation" if args.entropy_estimation else args.entropy_coder
    )
    output: dict[str, Any] = {
        "name": f"{arch}-{args.metric}",
        "description": f"Inference ({description})",
        "results": results,
    }
    if is_lora:
        settings = {k: v for k, v in settings_of(config).items() if k != "lmbda"}
        output["adaptation"] = {**settings, "lmbda": lmbdas, "choices": choices}
    if args.compare_base:
        output["base"] = f"{base_arch}-{args.metric}"
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


def main(argv: list[str]) -> None:
    parser = setup_args()
    args = parser.parse_args(argv)

    if args.source not in ["checkpoint", "pretrained"]:
        print("Error: missing 'checkpoint' or 'pretrained' source.", file=sys.stderr)
        parser.print_help()
        raise SystemExit(1)

    try:
        with small_image_metrics():
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
