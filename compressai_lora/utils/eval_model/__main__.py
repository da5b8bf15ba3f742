"""Evaluate a codec on an image dataset, with per-image instance adaptation.

A drop-in for ``python -m compressai.utils.eval_model``: the host's command
line (its parser is reused as is), padding, metrics, real-bitstream bpp,
output file names and stdout JSON, plus:

* ``-lora`` architectures (``cheng2020-attn-lora``...) adapt each image in
  ``compress()``; the "Instance adaptation" options set how.  Extra result
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
import contextlib
import dataclasses
import json
import math
import os
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import compressai
import numpy as np
import torch
import torch.nn.functional as F
from compressai.ops import compute_padding
from compressai.utils.eval_model import __main__ as host
from PIL import Image
from torch import Tensor
from torchvision import transforms
from tqdm import tqdm

from compressai_lora.adapt import PRESETS, AdaptConfig
from compressai_lora.utils.bd import bd_rate

__all__ = ["setup_args", "main", "read_image"]

#: The host's result keys, in the host's order; ours come after them.
HOST_KEYS = ("psnr-rgb", "ms-ssim-rgb", "bpp", "encoding_time", "decoding_time")
#: Per-image adaptation keys, read from ``model.last_adaptation``.
ADAPT_KEYS = ("update_bpp", "open_gates", "adaptation_time")
#: Keys compared with the base codec (``delta_<key>`` = ours - base).
DELTA_KEYS = ("psnr-rgb", "ms-ssim-rgb", "bpp", "rd_cost")
#: pytorch_msssim needs the smaller image side to exceed (11 - 1) * 2**4.
MSSSIM_MIN_SIDE = 161
#: Settings that do not change results (left out of the resume check).
_NOT_RESULT_SETTINGS = ("threads",)

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_LORA = "-lora"


class CLIError(Exception):
    """A bad input or setting: reported as one ``Error:`` line, exit status 1."""


# -- arguments ---------------------------------------------------------------
def _add_adaptation_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "Instance adaptation (-lora architectures)",
        "Defaults come from --preset (else AdaptConfig's defaults).",
    )
    group.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="adaptation preset, e.g. 'paper' (2000 + 2000 steps, rank 2)",
    )
    group.add_argument(
        "--refine-steps",
        type=int,
        metavar="N",
        default=None,
        help="latent refinement steps",
    )
    group.add_argument(
        "--adapt-steps",
        type=int,
        metavar="N",
        default=None,
        help="decoder-update steps",
    )
    group.add_argument(
        "--lr",
        type=float,
        metavar="LR",
        default=None,
        help="learning rate of both phases (see --refine-lr, --adapt-lr)",
    )
    group.add_argument(
        "--refine-lr",
        type=float,
        metavar="LR",
        default=None,
        help="learning rate of refinement",
    )
    group.add_argument(
        "--adapt-lr",
        type=float,
        metavar="LR",
        default=None,
        help="learning rate of the update",
    )
    group.add_argument(
        "--rank", type=int, metavar="R", default=None, help="rank of the update"
    )
    group.add_argument(
        "--lmbda",
        type=float,
        metavar="L",
        default=None,
        help="RD trade-off of the adaptation loss (default: the quality's "
        "lambda; in checkpoint mode the checkpoint's meta['lmbda'])",
    )
    group.add_argument(
        "--seed", type=int, metavar="S", default=None, help="random seed"
    )
    group.add_argument(
        "--threads",
        type=int,
        metavar="T",
        default=None,
        help="torch threads while adapting (default: all CPU cores)",
    )
    group.add_argument(
        "--no-adapt",
        action="store_true",
        help="no adaptation: the -lora model codes as its base codec",
    )
    group.add_argument(
        "--compare-base",
        action="store_true",
        help="also evaluate the base architecture (name without -lora; the "
        "same checkpoint through the host class): deltas, BD-rate, RD plot",
    )
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="with --per-image: recompute images whose results already exist",
    )


_ADAPT_FLAGS = (
    "preset",
    "refine_steps",
    "adapt_steps",
    "lr",
    "refine_lr",
    "adapt_lr",
    "rank",
    "lmbda",
    "seed",
    "threads",
)


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
                _add_adaptation_args(subparser)
    return parser


# -- images ------------------------------------------------------------------
def read_image(filepath: str | Path) -> Tensor:
    """The host's ``read_image``, except that 16-bit images keep their range.

    PIL's ``convert("RGB")`` clips 16-bit grayscale (modes ``I;16*`` and
    ``I``) at 255, which turns most images white; they are scaled to 8 bits
    (``round(v / 257)``) first.  16-bit RGB(A) PNGs already open as 8-bit.
    """
    path = Path(filepath)
    with Image.open(path) as img:
        if img.mode in _SIXTEEN_BIT_MODES:
            a = np.asarray(img, dtype=np.float64)
            a = np.clip(np.round(a / 257.0), 0, 255).astype(np.uint8)
            rgb = Image.fromarray(a).convert("RGB")
            return transforms.ToTensor()(rgb)
    return host.read_image(path)


def _unreadable(filepaths: list[Path]) -> list[tuple[Path, str]]:
    bad = []
    for path in filepaths:
        try:
            with Image.open(path) as img:
                img.load()
        except Exception as err:  # PIL raises many types for broken files
            bad.append((path, _short(err)))
    return bad


@contextlib.contextmanager
def _small_image_metrics() -> Iterator[None]:
    """Let the host's inference helpers measure images pytorch_msssim refuses.

    The host's ``compute_metrics`` asserts inside pytorch_msssim for images
    whose smaller side is <= 160 px; for those the PSNR is the host's and
    MS-SSIM is ``None``.  Larger images go through the host function.
    """
    original = host.compute_metrics

    def compute_metrics(org: Tensor, rec: Tensor, max_val: int = 255):
        if min(org.shape[-2:]) >= MSSSIM_MIN_SIDE:
            return original(org, rec, max_val)
        org = (org * max_val).clamp(0, max_val).round()
        rec = (rec * max_val).clamp(0, max_val).round()
        return {"psnr-rgb": host.psnr(org, rec).item(), "ms-ssim-rgb": None}

    host.compute_metrics = compute_metrics
    try:
        yield
    finally:
        host.compute_metrics = original


class _PaddedForward:
    """``forward`` on the input padded as ``inference`` pads it for compress.

    The host's entropy estimation runs ``forward`` on the unpadded image,
    which fails for sizes that are not a multiple of the model's stride.
    For multiples of 64 the padding is empty and the result is the host's.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def forward(self, x: Tensor, **kwargs: Any) -> dict[str, Any]:
        pad, unpad = compute_padding(x.size(2), x.size(3), min_div=2**6)
        out = dict(
            self.model.forward(F.pad(x, pad, mode="constant", value=0), **kwargs)
        )
        out["x_hat"] = F.pad(out["x_hat"], unpad)
        return out


# -- models ------------------------------------------------------------------
def _short(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    text = f"{type(err).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _load_pretrained(arch: str, metric: str, quality: int) -> torch.nn.Module:
    try:
        return host.load_pretrained(arch, metric, quality)
    except Exception as err:
        raise CLIError(
            f"cannot load pretrained {arch} ({metric}, quality {quality}): "
            f"{_short(err)}"
        ) from None


def _state_dict_mismatch(err: BaseException) -> Optional[str]:
    """Summary of torch's multi-line load_state_dict error, else None."""
    text = str(err)
    if "Error(s) in loading state_dict" not in text:
        return None
    parts = []
    mismatches = []
    for line in (line.strip() for line in text.splitlines()):
        for label in ("Missing", "Unexpected"):
            if line.startswith(f"{label} key(s)"):
                keys = re.findall(r'"([^"]+)"', line)
                parts.append(f"{len(keys)} {label.lower()} keys (e.g. {keys[0]})")
        if line.startswith("size mismatch for "):
            mismatches.append(line[len("size mismatch for ") :].split(":")[0])
    if mismatches:
        parts.append(f"{len(mismatches)} size mismatches (e.g. {mismatches[0]})")
    return ", ".join(parts) or None


def _load_checkpoint(arch: str, no_update: bool, path: str) -> torch.nn.Module:
    if not Path(path).is_file():
        raise CLIError(f"checkpoint not found: {path}")
    try:
        return host.load_checkpoint(arch, no_update, path)
    except Exception as err:
        mismatch = _state_dict_mismatch(err)
        if mismatch is None and not isinstance(err, KeyError):
            raise CLIError(
                f"cannot load checkpoint {path} as {arch}: {_short(err, limit=200)}"
            ) from None
        raise CLIError(
            f"cannot load checkpoint {path} as {arch} ({mismatch or _short(err)}); "
            "is it a checkpoint of another architecture?"
        ) from None


def _checkpoint_lmbda(path: str) -> Optional[float]:
    """``checkpoint["meta"]["lmbda"]`` when the checkpoint has it."""
    try:
        checkpoint = torch.load(path, map_location="cpu")
    except Exception:
        return None
    meta = checkpoint.get("meta") if isinstance(checkpoint, dict) else None
    value = meta.get("lmbda") if isinstance(meta, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


def _base_config(args: argparse.Namespace) -> AdaptConfig:
    """AdaptConfig from --preset and the adaptation flags (lmbda set per run)."""
    changes: dict[str, Any] = {"metric": args.metric, "enabled": not args.no_adapt}
    for flag in ("refine_steps", "adapt_steps", "rank", "seed", "threads"):
        if getattr(args, flag) is not None:
            changes[flag] = getattr(args, flag)
    for flag in ("refine_lr", "adapt_lr"):
        value = getattr(args, flag) if getattr(args, flag) is not None else args.lr
        if value is not None:
            changes[flag] = value
    try:
        return AdaptConfig.preset(args.preset or "default", **changes)
    except (TypeError, ValueError) as err:
        raise CLIError(f"invalid adaptation settings: {err}") from None


def _settings(cfg: AdaptConfig) -> dict[str, Any]:
    return {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(cfg)
        if f.name != "callback"
    }


def _result_settings(settings: Optional[dict]) -> Optional[dict]:
    if settings is None:
        return None
    return {k: v for k, v in settings.items() if k not in _NOT_RESULT_SETTINGS}


class _StepBar:
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


# -- evaluation --------------------------------------------------------------
@dataclasses.dataclass
class _Job:
    """One model evaluated on every image for one rate point."""

    model: torch.nn.Module
    architecture: str
    trained_net: str
    settings: Optional[dict[str, Any]] = None  # adaptation settings (-lora)
    lmbda: Optional[float] = None
    per_image: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    choices: Counter = dataclasses.field(default_factory=Counter)


def _jsonable(stats: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in stats.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        out[key] = value
    return out


def _write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as the host does, atomically (temp file + os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(json.dumps(obj, indent=2).encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _load_done(path: Path, settings: Optional[dict]) -> Optional[dict]:
    """Stored per-image results, if complete and made with the same settings."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, dict) or any(k not in results for k in HOST_KEYS):
        return None
    if _result_settings(data.get("settings")) != _result_settings(settings):
        return None
    return data


def _infer(
    model: torch.nn.Module,
    x: Tensor,
    args: argparse.Namespace,
    vbr_stage: Optional[int],
    vbr_scale: Optional[Tensor],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The host's per-image inference, plus the adaptation statistics."""
    if hasattr(model, "last_adaptation"):
        model.last_adaptation = {}  # no stale statistics from the last image
    if not args.entropy_estimation:
        if args.half:
            model = model.half()
            x = x.half()
        rv = host.inference(model, x, vbr_stage, vbr_scale)
    else:
        padded = _PaddedForward(model)
        rv = host.inference_entropy_estimation(padded, x, vbr_stage, vbr_scale)
    rv = dict(rv)
    stats = dict(getattr(model, "last_adaptation", None) or {})
    num_pixels = x.size(-2) * x.size(-1)
    if isinstance(stats.get("update_bits"), (int, float)):
        rv["update_bpp"] = stats["update_bits"] / num_pixels
    if isinstance(stats.get("open_gates"), (list, tuple)):
        rv["open_gates"] = len(stats["open_gates"])
    times = [stats[k] for k in ("refine_time", "adapt_time") if k in stats]
    if times:
        rv["adaptation_time"] = float(sum(times))
    return rv, stats


def _rd_cost(rv: dict[str, Any], lmbda: Optional[float], metric: str):
    """bpp + lambda * 255^2 * MSE (or lambda * (1 - MS-SSIM)), as in training."""
    if lmbda is None:
        return None
    if metric == "ms-ssim":
        if rv.get("ms-ssim-rgb") is None:
            return None
        return rv["bpp"] + lmbda * (1 - rv["ms-ssim-rgb"])
    return rv["bpp"] + lmbda * 255**2 * 10 ** (-rv["psnr-rgb"] / 10)


def _average(rvs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of each key over the images that report it (the host's sum / n)."""
    keys: list[str] = []
    for rv in rvs:
        keys.extend(k for k in rv if k not in keys)
    out: dict[str, Any] = {}
    for key in keys:
        values = [rv[key] for rv in rvs if rv.get(key) is not None]
        total = 0.0
        for v in values:
            total += v
        out[key] = total / len(values) if values else None
    return out


def _key_rank(key: str) -> int:
    """Order of the result keys: the host's five, ours, base, RD cost, deltas."""
    if key in HOST_KEYS:
        return 0
    if key in ADAPT_KEYS:
        return 1
    if key in ("rd_cost", "base_rd_cost"):
        return 4 if key == "rd_cost" else 5
    if key.startswith("base_"):
        return 3
    if key.startswith("delta_"):
        return 6
    return 2


def _per_image_path(outdir: str, dataset: str, filepath: Path, net: str) -> Path:
    subdir = Path(outdir) / Path(filepath).parent.relative_to(dataset)
    return subdir / f"{filepath.stem}-{net}.json"


def _evaluate_run(
    jobs: list[_Job],
    filepaths: list[Path],
    args: argparse.Namespace,
    vbr_stage: Optional[int],
    vbr_scale: Optional[Tensor],
    step_bar: Optional[_StepBar],
) -> None:
    """Evaluate every job on every image (images outer, so a base and its -lora
    model see each image back to back); fills ``job.per_image``."""
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
                path = _per_image_path(
                    args.output_directory, args.dataset, filepath, job.trained_net
                )
            done = _load_done(path, job.settings) if resumable else None
            if done is not None:
                rv = done["results"]
                stats = done.get("adaptation") or {}
            else:
                if x is None:
                    device = next(job.model.parameters()).device
                    x = read_image(filepath).to(device)
                if step_bar is not None:
                    step_bar.new_image()
                rv, stats = _infer(job.model, x, args, vbr_stage, vbr_scale)
                if path is not None:
                    output = {
                        "source": filepath.stem,
                        "name": job.architecture,
                        "description": f"Inference ({per_image_description})",
                        "results": rv,
                    }
                    if job.settings is not None:
                        output["settings"] = job.settings
                        output["adaptation"] = _jsonable(stats)
                    _write_json(path, output)
            job.per_image.append(rv)
            if stats.get("choice") is not None:
                job.choices[str(stats["choice"])] += 1
            if args.verbose:
                tqdm.write(
                    _image_line(filepath, job, rv, stats, done is not None),
                    file=sys.stderr,
                )


def _image_line(filepath: Path, job: _Job, rv: dict, stats: dict, resumed: bool):
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


# -- outputs -----------------------------------------------------------------
def _bd_rates(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """BD-rate (%) of ours vs the base per quality metric, PCHIP on log-rate."""
    out: dict[str, Any] = {}
    for key, to_db in (
        ("psnr-rgb", lambda v: v),
        ("ms-ssim-rgb", lambda v: -10 * math.log10(1 - v)),
    ):
        ours = [(r["bpp"], r[key]) for r in rows]
        base = [(r["base_bpp"], r[f"base_{key}"]) for r in rows]
        if any(q is None for _, q in ours + base):
            continue
        try:
            out[key] = bd_rate(
                [b for b, _ in base],
                [to_db(q) for _, q in base],
                [b for b, _ in ours],
                [to_db(q) for _, q in ours],
            )
        except (ValueError, ZeroDivisionError) as err:
            print(f"Warning: no BD-rate on {key}: {err}", file=sys.stderr)
    if out:
        out["method"] = "pchip on log-rate (Bjontegaard); negative: fewer bits"
    return out


def _plot_rd(path: Path, curves: list[tuple[str, list, list]], title: str) -> None:
    """PSNR-vs-bpp plot with matplotlib's Agg canvas (no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, xs, ys in curves:
        ax.plot(xs, ys, marker="o", linewidth=1, label=name)
    ax.set_xlabel("Bit-rate [bpp]")
    ax.set_ylabel("PSNR [dB]")
    ax.grid(True)
    ax.legend(loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=150)
    os.replace(tmp, path)


# -- main --------------------------------------------------------------------
def _check_inputs(args: argparse.Namespace, arch: str) -> list[Path]:
    is_lora = arch.endswith(_LORA)
    dataset = Path(args.dataset)
    if not dataset.exists():
        raise CLIError(f"dataset folder not found: {args.dataset}")
    if not dataset.is_dir():
        raise CLIError(f"dataset is not a folder: {args.dataset}")
    filepaths = host.collect_images(args.dataset)
    if len(filepaths) == 0:
        raise CLIError(
            f"no images found in directory {args.dataset} "
            f"(extensions: {', '.join(host.IMG_EXTENSIONS)})"
        )
    bad = _unreadable(filepaths)
    if bad:
        lines = "\n".join(f"  {path}: {why}" for path, why in bad)
        print(
            f"Warning: skipping {len(bad)} unreadable image file(s):\n{lines}",
            file=sys.stderr,
        )
        skipped = {path for path, _ in bad}
        filepaths = [p for p in filepaths if p not in skipped]
        if not filepaths:
            raise CLIError(f"no readable images in {args.dataset}")
    if args.per_image and not args.output_directory:
        raise CLIError("--per-image needs an output directory (-d)")
    if args.compare_base and not is_lora:
        raise CLIError(f"--compare-base needs a -lora architecture, not {arch}")
    return filepaths


def _run(args: argparse.Namespace) -> dict[str, Any]:  # noqa: C901
    arch = args.architecture
    is_lora = arch.endswith(_LORA)
    is_vbr_model = arch.endswith("-vbr")
    filepaths = _check_inputs(args, arch)
    base_arch = arch[: -len(_LORA)] if is_lora else None
    if not is_lora and (
        args.no_adapt or any(getattr(args, f) is not None for f in _ADAPT_FLAGS)
    ):
        print(
            f"Warning: adaptation options ignored: {arch} is not a -lora architecture",
            file=sys.stderr,
        )
    config = _base_config(args) if is_lora else None

    description = (
        "entropy-estimation" if args.entropy_estimation else args.entropy_coder
    )
    compressai.set_entropy_coder(args.entropy_coder)
    if args.output_directory:
        Path(args.output_directory).mkdir(parents=True, exist_ok=True)
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
        load_func: Callable = _load_pretrained
    else:
        runs = args.checkpoint_paths
        if not runs:
            raise CLIError("no checkpoint given (-p)")
        opts = (arch, args.no_update)
        if is_vbr_model:
            opts += (args.checkpoint_paths[0],)
        load_func = _load_checkpoint

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

    step_bar = _StepBar() if is_lora and config.enabled else None
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

        job = _Job(model, arch, trained_net)
        if is_lora:
            lmbda = args.lmbda
            if lmbda is None and args.source == "pretrained":
                lmbda = getattr(model, "default_lmbda", None)
            elif lmbda is None:
                lmbda = _checkpoint_lmbda(run)
                if lmbda is None and config.enabled:
                    raise CLIError(
                        f"checkpoint {run} has no meta['lmbda']: pass --lmbda"
                    )
            cfg = config.replace(lmbda=lmbda, callback=step_bar)
            try:
                model.adapt_config = cfg
            except (TypeError, ValueError) as err:
                raise CLIError(f"invalid adaptation settings: {err}") from None
            job.settings = _settings(cfg)
            job.lmbda = lmbda
        jobs = [job]
        if args.compare_base:
            if args.source == "pretrained":
                base = _load_pretrained(base_arch, args.metric, run)
            else:
                base = _load_checkpoint(base_arch, args.no_update, run)
            if cuda:
                base = base.to("cuda")
            print(f"Using trained model {base_net} (base)", file=sys.stderr)
            jobs.insert(0, _Job(base, base_arch, base_net, lmbda=job.lmbda))

        _evaluate_run(
            jobs,
            filepaths,
            args,
            vbr_stage=None if not is_vbr_model else args.vbr_tr_stage,
            vbr_scale=None if not is_vbr_model else run,
            step_bar=step_bar,
        )
        row = _average(job.per_image)
        if is_lora:
            lmbdas.append(job.lmbda)
            choices.append(dict(job.choices))
        if args.compare_base:
            base_job = jobs[0]
            base_row = _average(base_job.per_image)
            base_rows.append(base_row)
            for key in HOST_KEYS:
                row[f"base_{key}"] = base_row[key]
            row["rd_cost"] = _average(
                [{"j": _rd_cost(rv, job.lmbda, args.metric)} for rv in job.per_image]
            )["j"]
            row["base_rd_cost"] = _average(
                [
                    {"j": _rd_cost(rv, job.lmbda, args.metric)}
                    for rv in base_job.per_image
                ]
            )["j"]
            for key in DELTA_KEYS:
                ours, theirs = row.get(key), row.get(f"base_{key}")
                delta = ours - theirs if None not in (ours, theirs) else None
                row[f"delta_{key}"] = delta
        rows.append(row)
        if step_bar is not None:
            step_bar.close()

    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    keys.sort(key=_key_rank)  # stable: the host's five first, in its order
    results = {k: [row.get(k) for row in rows] for k in keys}

    description = (
        "entropy estimation" if args.entropy_estimation else args.entropy_coder
    )
    output: dict[str, Any] = {
        "name": f"{arch}-{args.metric}",
        "description": f"Inference ({description})",
        "results": results,
    }
    if is_lora:
        settings = {k: v for k, v in _settings(config).items() if k != "lmbda"}
        output["adaptation"] = {**settings, "lmbda": lmbdas, "choices": choices}
    if args.compare_base:
        output["base"] = f"{base_arch}-{args.metric}"
        if len(rows) >= 4:
            bd = _bd_rates(rows)
            if bd:
                output["bd-rate"] = bd
        else:
            print(
                f"Note: BD-rate needs >= 4 rate points (got {len(rows)}); "
                "see the delta_* and rd_cost keys",
                file=sys.stderr,
            )

    if args.output_directory:
        output_file = args.output_file if args.output_file else f"{arch}-{description}"
        json_path = Path(f"{args.output_directory}/{output_file}").with_suffix(".json")
        _write_json(json_path, output)
        if args.compare_base:
            base_results = {k: [r[k] for r in base_rows] for k in HOST_KEYS}
            if args.output_file:
                base_path = json_path.with_name(f"{json_path.stem}-base.json")
            else:
                base_path = Path(
                    f"{args.output_directory}/{base_arch}-{description}"
                ).with_suffix(".json")
            _write_json(
                base_path,
                {
                    "name": output["base"],
                    "description": output["description"],
                    "results": base_results,
                },
            )
            title = output["name"] + " vs base"
            if "psnr-rgb" in output.get("bd-rate", {}):
                title += f" (BD-rate {output['bd-rate']['psnr-rgb']:+.2f}%)"
            _plot_rd(
                json_path.with_suffix(".png"),
                [
                    (output["base"], base_results["bpp"], base_results["psnr-rgb"]),
                    (output["name"], results["bpp"], results["psnr-rgb"]),
                ],
                title,
            )
    return output


def main(argv: list[str]) -> None:
    parser = setup_args()
    args = parser.parse_args(argv)

    if args.source not in ["checkpoint", "pretrained"]:
        print("Error: missing 'checkpoint' or 'pretrained' source.", file=sys.stderr)
        parser.print_help()
        raise SystemExit(1)

    try:
        with _small_image_metrics():
            output = _run(args)
    except CLIError as err:
        print(f"Error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print(
            "\nInterrupted. Per-image results written so far are kept: rerun the "
            "same command (with --per-image -d) to resume.",
            file=sys.stderr,
        )
        raise SystemExit(130) from None

    print(json.dumps(output, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
