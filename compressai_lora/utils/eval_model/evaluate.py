"""The per-image loop: inference, adaptation statistics, step bar, resume."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

import torch
from compressai.ops import compute_padding
from torch import Tensor
from tqdm import tqdm

from ... import host
from ..files import write_json
from . import CLIError
from .images import PaddedForward, compute_metrics, read_image
from .results import adaptation_results, jsonable, load_done, per_image_path

__all__ = [
    "ImageResults",
    "Job",
    "StepBar",
    "Tracker",
    "collect",
    "evaluate_run",
    "infer",
]


@dataclasses.dataclass
class Job:
    """One model evaluated on every image for one rate point."""

    model: Optional[torch.nn.Module]  # None once the rate point is done
    architecture: str
    trained_net: str
    settings: Optional[dict[str, Any]] = None  # adaptation settings (-lora)
    lmbda: Optional[float] = None
    per_image: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    choices: Counter = dataclasses.field(default_factory=Counter)


class StepBar:
    """AdaptConfig callback that drives a second tqdm bar over the steps;
    ``poll`` is called at each step too (to refresh the run's bar)."""

    def __init__(self, poll: Optional[Callable[[], None]] = None) -> None:
        self.bar: Optional[tqdm] = None
        self.phase: Optional[str] = None
        self.poll = poll

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
        if self.poll is not None:
            self.poll()

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


class Tracker(Protocol):
    """What the loop reports per image (:class:`~.shard.Shard` implements it)."""

    line_prefix: str

    def start(self, filepath: Path) -> None: ...

    def computing(self) -> None: ...

    def finish(self, computed: bool) -> None: ...


#: one image's results: ``(results, sent choice)`` of each job, in job order
ImageResults = list[tuple[dict[str, Any], Optional[str]]]


def evaluate_run(
    jobs: list[Job],
    images: Sequence[tuple[int, Path]],
    args: argparse.Namespace,
    vbr_stage: Optional[int],
    vbr_scale: Optional[Tensor],
    step_bar: Optional[StepBar],
    tracker: Tracker,
) -> dict[int, ImageResults]:
    """Evaluate every job on the ``(index, path)`` images (images outer, so a
    base and its -lora model see each image back to back).

    With ``--per-image`` each result is written at once; unless
    ``--overwrite``, results stored with the same settings are loaded instead.

    Returns:
        ``{image index: [(results, choice) of each job]}``.
    """
    per_image_description = (
        "entropy-estimation" if args.entropy_estimation else args.entropy_coder
    )
    resumable = args.per_image and not args.overwrite
    out: dict[int, ImageResults] = {}
    for index, filepath in images:
        tracker.start(filepath)
        x: Optional[Tensor] = None
        computed = False
        results: ImageResults = []
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
                if not computed:
                    tracker.computing()
                    computed = True
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
            choice = stats.get("choice")
            results.append((rv, None if choice is None else str(choice)))
            if args.verbose:
                tqdm.write(
                    tracker.line_prefix
                    + _image_line(filepath, job, rv, stats, done is not None),
                    file=sys.stderr,
                )
        out[index] = results
        tracker.finish(computed)
    return out


def collect(jobs: list[Job], images: Sequence[ImageResults]) -> None:
    """Append each image's results to ``job.per_image`` and count the choices,
    in the order of ``images``."""
    for results in images:
        for job, (rv, choice) in zip(jobs, results):
            job.per_image.append(rv)
            if choice is not None:
                job.choices[choice] += 1


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
