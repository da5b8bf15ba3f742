"""The per-image loop: inference, adaptation statistics, progress, resume."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import torch
from compressai.ops import compute_padding
from torch import Tensor
from tqdm import tqdm

from ... import host
from ..files import write_json
from . import CLIError
from .images import PaddedForward, compute_metrics, read_image
from .results import adaptation_results, jsonable, load_done, per_image_path

__all__ = ["Job", "StepBar", "evaluate_run", "infer"]


@dataclasses.dataclass
class Job:
    """One model evaluated on every image for one rate point."""

    model: torch.nn.Module
    architecture: str
    trained_net: str
    settings: Optional[dict[str, Any]] = None  # adaptation settings (-lora)
    lmbda: Optional[float] = None
    per_image: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    choices: Counter = dataclasses.field(default_factory=Counter)


class StepBar:
    """AdaptConfig callback that drives a second tqdm bar over the steps."""

    def __init__(self) -> None:
        self.bar: Optional[tqdm] = None
        self.phase: Optional[str] = None

    def __call__(self, info: dict[str, Any]) -> None:
        if self.bar is None:
            self.bar = tqdm(position=1, leave=False, dynamic_ncols=True)
        phase = info.get("phase")
        if phase != self.phase:
            self.phase = phase
            self.bar.reset(total=info.get("steps"))
            self.bar.set_description(str(phase))
        postfix = {
            k: f"{info[k]:.4g}"
            for k in ("loss", "bpp", "psnr")
            if isinstance(info.get(k), (int, float))
        }
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def new_image(self) -> None:
        self.phase = None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def infer(
    model: torch.nn.Module,
    x: Tensor,
    args: argparse.Namespace,
    vbr_stage: Optional[int],
    vbr_scale: Optional[Tensor],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The host's per-image inference, plus the adaptation statistics."""
    if hasattr(model, "last_adaptation"):
        model.last_adaptation = {}  # no stale statistics from the last image
    # the padding both inference paths add: adaptation costs only real pixels
    pad, _ = compute_padding(x.size(-2), x.size(-1), min_div=host.PAD_MULTIPLE)
    padding = getattr(model, "input_padding", None)
    with padding(pad) if padding else contextlib.nullcontext():
        if not args.entropy_estimation:
            if args.half:
                model = model.half()
                x = x.half()
            rv = host.inference(model, x, vbr_stage, vbr_scale, compute_metrics)
        else:
            padded = PaddedForward(model)
            rv = host.inference_entropy_estimation(
                padded, x, vbr_stage, vbr_scale, compute_metrics
            )
    rv = dict(rv)
    stats = dict(getattr(model, "last_adaptation", None) or {})
    rv.update(adaptation_results(stats, x.size(-2) * x.size(-1)))
    return rv, stats


def evaluate_run(
    jobs: list[Job],
    filepaths: list[Path],
    args: argparse.Namespace,
    vbr_stage: Optional[int],
    vbr_scale: Optional[Tensor],
    step_bar: Optional[StepBar],
) -> None:
    """Evaluate every job on every image (images outer, so a base and its -lora
    model see each image back to back); fills ``job.per_image``.

    With ``--per-image`` each result is written at once; unless
    ``--overwrite``, results stored with the same settings are loaded instead.
    """
    per_image_description = (
        "entropy-estimation" if args.entropy_estimation else args.entropy_coder
    )
    resumable = args.per_image and not args.overwrite
    images = tqdm(
        filepaths, desc=jobs[-1].trained_net, unit="img", position=0, dynamic_ncols=True
    )
    for filepath in images:
        x: Optional[Tensor] = None
        for job in jobs:
            path = None
            if args.per_image:
                path = per_image_path(
                    args.output_directory, args.dataset, filepath, job.trained_net
                )
            done = load_done(path, job.settings) if resumable else None
            if done is not None:
                rv = done["results"]
                stats = done.get("adaptation") or {}
            else:
                if x is None:
                    device = next(job.model.parameters()).device
                    x = read_image(filepath).to(device)
                if step_bar is not None:
                    step_bar.new_image()
                rv, stats = infer(job.model, x, args, vbr_stage, vbr_scale)
                if path is not None:
                    output = {
                        "source": filepath.stem,
                        "name": job.architecture,
                        "description": f"Inference ({per_image_description})",
                        "results": rv,
                    }
                    if job.settings is not None:
                        output["settings"] = job.settings
                        output["adaptation"] = jsonable(stats)
                    try:
                        write_json(path, output)
                    except OSError as err:
                        raise CLIError(
                            f"cannot write per-image results {path}: "
                            f"{err.strerror or err}"
                        ) from None
            job.per_image.append(rv)
            if stats.get("choice") is not None:
                job.choices[str(stats["choice"])] += 1
            if args.verbose:
                tqdm.write(
                    _image_line(filepath, job, rv, stats, done is not None),
                    file=sys.stderr,
                )


def _image_line(filepath: Path, job: Job, rv: dict, stats: dict, resumed: bool):
    msssim = rv.get("ms-ssim-rgb")
    parts = [
        f"{filepath} [{job.architecture}]",
        f"{rv['bpp']:.4f} bpp",
        f"{rv['psnr-rgb']:.2f} dB",
        f"ms-ssim {msssim:.4f}" if msssim is not None else "ms-ssim n/a",
        f"enc {rv['encoding_time']:.2f}s dec {rv['decoding_time']:.2f}s",
    ]
    if "update_bpp" in rv:
        parts.append(f"update {rv['update_bpp']:.4f} bpp")
    if stats.get("choice") is not None:
        parts.append(f"sent {stats['choice']}")
    if resumed:
        parts.append("(resumed)")
    return ", ".join(parts)
