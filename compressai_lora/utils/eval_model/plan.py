"""What a run evaluates: architectures, rate points, names, models, paths."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from compressai_lora.adapt import AdaptConfig
from compressai_lora.utils.adapt_args import (
    adapt_config_from_args,
    adaptation_flags_given,
)

from ..paths import file_problem, output_dir_problem
from . import CLIError
from .loading import checkpoint_model, load_pretrained

__all__ = [
    "Plan",
    "load_run",
    "make_plan",
    "names",
    "output_paths",
    "run_label",
    "vbr_model",
]

_LORA = "-lora"


@dataclass
class Plan:
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


def make_plan(
    args: argparse.Namespace, device: torch.device, distributed: bool = False
) -> Plan:
    """The plan of ``args`` (VBR scales on ``device``).

    Raises:
        CLIError: options that do not fit together.
    """
    arch = args.architecture
    is_lora = arch.endswith(_LORA)
    if args.per_image and not args.output_directory:
        raise CLIError("--per-image needs an output directory (-d)")
    if args.compare_base and not is_lora:
        raise CLIError(f"--compare-base needs a -lora architecture, not {arch}")
    # under torchrun --threads sets each rank's threads, whatever the model
    flags = (
        argparse.Namespace(**{**vars(args), "threads": None}) if distributed else args
    )
    if not is_lora and adaptation_flags_given(flags):
        print(
            f"Warning: adaptation options ignored: {arch} is not a -lora architecture",
            file=sys.stderr,
        )
    if getattr(args, "batch_size", None) not in (None, 1) and args.entropy_estimation:
        raise CLIError(
            "--batch-size needs real bitstreams: it does not batch --entropy-estimation"
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
        runs = [r.to(device) for r in runs]
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
    return Plan(
        arch=arch,
        base_arch=arch[: -len(_LORA)] if is_lora else None,
        description=(
            "entropy-estimation" if args.entropy_estimation else args.entropy_coder
        ),
        config=_adapt_config(args) if is_lora else None,
        runs=runs,
        vbr=vbr,
    )


def output_paths(
    args: argparse.Namespace, plan: Plan
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


def load_run(
    args: argparse.Namespace, arch: str, run: Any, device: torch.device
) -> tuple[Any, dict]:
    """``(model, checkpoint meta)`` of one rate point, on ``device``."""
    if args.source == "pretrained":
        quality = 0 if arch.endswith("-vbr") else run
        model, meta = load_pretrained(arch, args.metric, quality), {}
    else:
        model, meta = checkpoint_model(arch, args.no_update, run)
    return model.to(device), meta


def vbr_model(args: argparse.Namespace, plan: Plan, device: torch.device) -> Any:
    """The one model of a VBR run, set up as the host sets it up."""
    run = args.checkpoint_paths[0] if args.source == "checkpoint" else None
    model, _ = load_run(args, plan.arch, run, device)
    model.no_quantoffset = False
    if plan.arch in ["mbt2018-vbr"]:
        model.scl2ctx = True
    return model


def names(args: argparse.Namespace, plan: Plan, run: Any) -> tuple[str, str]:
    """The host's trained-net names of ``run``: ours and the base's."""
    if args.source == "pretrained":
        return (
            f"{plan.arch}-{args.metric}-{run}-{plan.description}",
            f"{plan.base_arch}-{args.metric}-{run}-{plan.description}",
        )
    path = args.checkpoint_paths[0] if plan.vbr else run
    name = Path(path).name[: -len(".tar.pth")]
    return f"{name}-{plan.description}", f"{name}-{plan.base_arch}-{plan.description}"


def run_label(args: argparse.Namespace, plan: Plan, run: Any) -> str:
    """A rate point in messages: its checkpoint file, quality or VBR scale."""
    if plan.vbr:
        return f"vbr scale {float(run):.4g}"
    if args.source == "pretrained":
        return f"quality {run}"
    return Path(run).name
