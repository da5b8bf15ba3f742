"""The per-image loop: inference, adaptation statistics, step bar, resume."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]

import torch
from compressai.ops import compute_padding
from torch import Tensor
from tqdm import tqdm

from ... import host
from ..files import write_json
from . import CLIError
from .batches import batches, infer_batch
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
        if "start" in info:  # an update on earlier refined latents
            phase = f"{phase} ({info['start']})"
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

    def start(self, filepaths: Sequence[Path]) -> None: ...

    def computing(self) -> None: ...

    def finish(self, computed: bool) -> None: ...


#: one image's results: ``(results, sent choice)`` of each job, in job order
ImageResults = list[tuple[dict[str, Any], Optional[str]]]


def _batchable(job: Job, args: argparse.Namespace) -> bool:
    """Whether ``job`` adapts images together (``--batch-size`` > 1)."""
    cfg = getattr(job.model, "adapt_config", None)
    return (
        cfg is not None
        and cfg.batch_size > 1
        and job.model.adapts()
        and not args.entropy_estimation
    )


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

    With ``--batch-size B`` the images go in groups of up to B with the same
    padded size (:func:`~.batches.batches`), each group outer: a -lora model
    adapts a group's images together, the base model codes them one by one.
    With ``--per-image`` each result is written at once; unless
    ``--overwrite``, results stored with the same settings are loaded instead
    (a group's other images are then adapted without them).

    Returns:
        ``{image index: [(results, choice) of each job]}``.
    """
    resumable = args.per_image and not args.overwrite
    batch_size = max(
        (j.model.adapt_config.batch_size for j in jobs if _batchable(j, args)),
        default=1,
    )
    out: dict[int, ImageResults] = {}
    for group in batches(images, batch_size):
        tracker.start([filepath for _, filepath in group])
        results: dict[int, ImageResults] = {index: [] for index, _ in group}
        computed: set[int] = set()
        xs: dict[int, Tensor] = {}
        for job in jobs:
            paths = {index: _result_path(args, job, fp) for index, fp in group}
            done = {
                index: load_done(paths[index], job.settings) if resumable else None
                for index, _ in group
            }
            todo = [(i, fp) for i, fp in group if done[i] is None]
            if todo and not computed:
                tracker.computing()
            computed.update(i for i, _ in todo)
            fresh = _compute(job, todo, xs, args, vbr_stage, vbr_scale, step_bar)
            for index, filepath in group:
                if done[index] is not None:
                    rv = done[index]["results"]
                    stats = done[index].get("adaptation") or {}
                else:
                    rv, stats = fresh[index]
                    _write_result(paths[index], filepath, job, rv, stats, args)
                choice = stats.get("choice")
                results[index].append((rv, None if choice is None else str(choice)))
                if args.verbose:
                    line = _image_line(
                        filepath, job, rv, stats, done[index] is not None
                    )
                    tqdm.write(tracker.line_prefix + line, file=sys.stderr)
        for index, _ in group:
            out[index] = results[index]
            tracker.finish(index in computed)
    return out


def _compute(
    job: Job,
    todo: list[tuple[int, Path]],
    xs: dict[int, Tensor],
    args: argparse.Namespace,
    vbr_stage: Optional[int],
    vbr_scale: Optional[Tensor],
    step_bar: Optional[StepBar],
) -> dict[int, tuple[dict[str, Any], dict[str, Any]]]:
    """``{index: (results, statistics)}`` of ``job`` on the ``todo`` images
    (read once per group into ``xs``): together if the job batches them."""
    if not todo:
        return {}
    device = next(job.model.parameters()).device
    for index, filepath in todo:
        if index not in xs:
            xs[index] = read_image(filepath).to(device)
    if len(todo) > 1 and _batchable(job, args):
        if step_bar is not None:
            step_bar.new_image()
        together = infer_batch(job.model, [xs[i] for i, _ in todo], args.half)
        return {i: r for (i, _), r in zip(todo, together)}
    out = {}
    for index, _ in todo:
        if step_bar is not None:
            step_bar.new_image()
        out[index] = infer(job.model, xs[index], args, vbr_stage, vbr_scale)
    return out


def _result_path(args: argparse.Namespace, job: Job, filepath: Path) -> Optional[Path]:
    if not args.per_image:
        return None
    return per_image_path(
        args.output_directory, args.dataset, filepath, job.trained_net
    )


def _write_result(
    path: Optional[Path],
    filepath: Path,
    job: Job,
    rv: dict[str, Any],
    stats: dict[str, Any],
    args: argparse.Namespace,
) -> None:
    """With ``--per-image``: one image's JSON, as the host's fields plus ours."""
    if path is None:
        return
    description = (
        "entropy-estimation" if args.entropy_estimation else args.entropy_coder
    )
    output = {
        "source": filepath.stem,
        "name": job.architecture,
        "description": f"Inference ({description})",
        "results": rv,
    }
    if job.settings is not None:
        output["settings"] = job.settings
        output["adaptation"] = jsonable(stats)
        if resource is not None:  # the process's peak so far: bounds this image's
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            output["peak_rss_bytes"] = peak * (1 if sys.platform == "darwin" else 1024)
    try:
        write_json(path, output)
    except OSError as err:
        raise CLIError(
            f"cannot write per-image results {path}: {err.strerror or err}"
        ) from None


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
