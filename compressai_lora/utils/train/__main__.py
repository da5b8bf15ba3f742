"""Train a base codec of CompressAI's zoo on a folder of images.

Semantics of CompressAI's ``examples/train.py``: loss ``lambda * 255^2 * MSE +
bpp`` (``lambda * (1 - MS-SSIM) + bpp`` with ``--metric ms-ssim``, the host's
``RateDistortionLoss``), Adam on every parameter but the entropy bottleneck's
``.quantiles``, a second Adam minimizing ``net.aux_loss()`` on those (the
host's ``net_aux_optimizer``), random crops and horizontal flips, gradient
clipping.  Lambda comes from the zoo's table by ``--quality`` unless
``--lambda`` is given; the size is the zoo's for that quality unless ``-N``/
``-M`` say otherwise.

Training counts steps (one batch each), not epochs: every step draws its batch
from a generator seeded by ``(seed, step)``, so a run that is stopped and
resumed sees the same batches as one that never stopped.  The run stops at
``--steps`` (total, resumed steps included) or after ``--minutes`` of this
session, whichever comes first, and saves every ``--save-every`` steps::

    OUT/NAME.pth.tar       {"state_dict", "meta"}, entropy tables updated:
                           python -m compressai.utils.eval_model checkpoint \\
                               IMAGES -a ARCH -p OUT/NAME.pth.tar
    OUT/NAME.json          how it was trained (data, steps, time, hardware,
                           final training PSNR/bpp) and the file's sha256
    OUT/NAME.state.pth.tar float32 weights, optimizer states, step count:
                           the next run with the same OUT and NAME resumes

``--convert SRC`` rewrites an existing checkpoint (e.g. with
``--half-storage``) and carries its JSON over; see ``docs/training.md``.
"""

from __future__ import annotations

import argparse
import collections
import inspect
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import compressai
import torch
import torch.nn as nn
import torch.nn.functional as F
from compressai.losses import RateDistortionLoss
from compressai.optimizers import net_aux_optimizer
from compressai.zoo.image import cfgs as host_cfgs
from compressai.zoo.image import model_architectures as host_architectures
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor
from tqdm import tqdm

import compressai_lora

from ...adapt.config import LAMBDAS
from ...checkpoint import (
    atomic_save,
    load_state_dict_and_meta,
    save_checkpoint,
    sha256,
    to_float32,
)
from ...zoo import model_architectures as lora_architectures
from ..paths import os_error_line, output_dir_problem

REPO_ROOT = Path(__file__).resolve().parents[3]
#: documented default: the shared training photos next to the source checkout
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "train" / "natural"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
#: folder names of the benchmark test sets: never trained on
TEST_SET_NAMES = ("kodak", "ood")
#: suffix of the resumable training state, beside the checkpoint
STATE_SUFFIX = ".state.pth.tar"
FORMAT = (
    "CompressAI checkpoint: {'state_dict': ..., 'meta': ...}, entropy tables "
    "updated (net.update(force=True)); loads with compressai.utils.eval_model "
    "checkpoint -a {arch}"
)


class TrainError(Exception):
    """A problem with the inputs of a run, reported without a traceback."""


def base_architectures() -> dict[str, type]:
    """The host's architectures (``compressai.zoo.image``), not our ``-lora``."""
    return {k: v for k, v in host_architectures.items() if k not in lora_architectures}


# -- data ------------------------------------------------------------------
class ImageBank:
    """Training images held in memory (uint8), sampled as random patches.

    Each image is downscaled to at most ``max_side`` pixels on its long side
    (and upscaled if a side is below the patch).  A patch is a random crop at a
    random scale in ``[scale_min, 1]`` (crop ``patch / scale`` pixels, resize to
    ``patch``), flipped horizontally with probability 1/2.

    Args:
        root: folder searched recursively for images
        patch: patch size ``(height, width)``
        max_side: long-side limit applied at load time
        scale_min: smallest random rescale factor (1: plain crops)
    """

    def __init__(
        self,
        root: os.PathLike | str,
        patch: tuple[int, int],
        max_side: int = 1024,
        scale_min: float = 0.5,
    ):
        root = Path(root)
        if not root.is_dir():
            raise TrainError(f"data folder {str(root)!r} does not exist")
        parts = {p.lower() for p in root.resolve().parts}
        if parts & set(TEST_SET_NAMES):
            raise TrainError(
                f"data folder {str(root)!r} looks like a test set "
                f"({'/'.join(TEST_SET_NAMES)}): train on training images only"
            )
        files = sorted(
            p
            for p in root.rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        if not files:
            raise TrainError(
                f"data folder {str(root)!r} holds no images "
                f"({', '.join(IMAGE_EXTENSIONS)})"
            )
        if not 0 < scale_min <= 1:
            raise TrainError(f"--scale-min must be in (0, 1], got {scale_min}")
        self.root, self.files = root, files
        self.patch, self.max_side, self.scale_min = patch, max_side, scale_min
        self.images = [self._load(p) for p in files]

    def _load(self, path: Path) -> torch.Tensor:
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except OSError as e:
            raise TrainError(f"cannot read image {str(path)!r}: {e}") from e
        w, h = img.size
        scale = min(1.0, self.max_side / max(w, h))
        scale = max(scale, self.patch[0] / h, self.patch[1] / w)
        if scale != 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            img = img.resize(size, Image.LANCZOS)
        return pil_to_tensor(img)

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, size: int, generator: torch.Generator) -> torch.Tensor:
        """``size`` random patches as a float batch in ``[0, 1]``."""
        ph, pw = self.patch
        g = generator
        out = []
        for i in torch.randint(len(self.images), (size,), generator=g).tolist():
            img = self.images[i]
            _, h, w = img.shape
            s = self.scale_min + (1 - self.scale_min) * torch.rand((), generator=g)
            s = max(float(s), ph / h, pw / w)
            rh, rw = min(h, round(ph / s)), min(w, round(pw / s))
            top = int(torch.randint(h - rh + 1, (), generator=g))
            left = int(torch.randint(w - rw + 1, (), generator=g))
            x = img[:, top : top + rh, left : left + rw].float().div(255)
            if (rh, rw) != (ph, pw):
                x = F.interpolate(x[None], (ph, pw), mode="bilinear", antialias=True)[
                    0
                ].clamp(0, 1)
            if torch.rand((), generator=g) < 0.5:
                x = x.flip(-1)
            out.append(x)
        return torch.stack(out)


def step_seed(seed: int, step: int) -> int:
    return seed * 1_000_003 + step


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of ``step``'s batch (same batches after a resume)."""
    return torch.Generator().manual_seed(step_seed(seed, step))


# -- model -----------------------------------------------------------------
def model_size(
    arch: str, quality: int, N: Optional[int], M: Optional[int]
) -> tuple[int, Optional[int]]:
    """``(N, M)`` for ``arch``: the zoo's for ``quality`` unless given.

    ``M`` is None for architectures without it (cheng2020: M = N).
    """
    cls = base_architectures()[arch]
    has_m = "M" in inspect.signature(cls.__init__).parameters
    cfg = host_cfgs.get(arch, {}).get(quality)
    if M is not None and not has_m:
        raise TrainError(f"{arch} has no M (its latents have N channels): drop -M")
    if N is None:
        if cfg is None:
            raise TrainError(f"the zoo has no {arch} at quality {quality}: give -N")
        N = cfg[0]
    if has_m and M is None:
        if cfg is None or len(cfg) < 2:
            raise TrainError(f"the zoo has no {arch} at quality {quality}: give -M")
        M = cfg[1]
    return N, (M if has_m else None)


def build_model(arch: str, N: int, M: Optional[int]) -> nn.Module:
    cls = base_architectures()[arch]
    return cls(N, M) if M is not None else cls(N)


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if "model name" in ln]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return (
        f"CPU ({cpu}), {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, no GPU"
    )


def lr_at(step: int, lr: float, drops: Sequence[int], gamma: float) -> float:
    """Learning rate at ``step``: ``lr * gamma ** (drops passed)``."""
    return lr * gamma ** sum(step >= d for d in drops)


# -- CLI ---------------------------------------------------------------------
def setup_args() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m compressai_lora.utils.train",
        description="Train a base codec of CompressAI's zoo (examples/train.py "
        "semantics) and write a checkpoint for eval_model.",
    )
    archs = sorted(base_architectures())
    parser.add_argument(
        "-m",
        "--model",
        "-a",
        "--architecture",
        dest="model",
        choices=archs,
        metavar="ARCH",
        help=f"architecture: {', '.join(archs)} (required to train; --convert "
        "reads it from the checkpoint's meta)",
    )
    parser.add_argument(
        "-d",
        "--dataset",
        default=str(DEFAULT_DATA),
        help="folder of training images, searched recursively (default: "
        "../shared/data/train/natural next to the source checkout)",
    )
    parser.add_argument(
        "-q",
        "--quality",
        type=int,
        default=3,
        help="zoo quality (default: %(default)s)",
    )
    parser.add_argument(
        "--metric",
        choices=("mse", "ms-ssim"),
        default="mse",
        help="distortion (default: %(default)s)",
    )
    parser.add_argument(
        "--lambda",
        dest="lmbda",
        type=float,
        help="RD trade-off (default: the zoo's table for --quality and --metric)",
    )
    parser.add_argument("-N", type=int, help="channels N (default: the zoo's)")
    parser.add_argument("-M", type=int, help="latent channels M (default: the zoo's)")
    parser.add_argument(
        "--steps", type=int, help="stop at this total step count (resumed included)"
    )
    parser.add_argument(
        "--minutes", type=float, help="stop after this many minutes of this run"
    )
    parser.add_argument(
        "--batch-size", type=int, default=16, help="(default: %(default)s)"
    )
    parser.add_argument(
        "--patch-size",
        type=int,
        nargs="+",
        default=[256, 256],
        help="training patch: one size (square) or height width (default: 256 256)",
    )
    parser.add_argument(
        "-lr",
        "--learning-rate",
        type=float,
        default=1e-4,
        help="(default: %(default)s)",
    )
    parser.add_argument(
        "--aux-learning-rate", type=float, default=1e-3, help="(default: %(default)s)"
    )
    parser.add_argument(
        "--lr-drop",
        type=int,
        nargs="*",
        default=[],
        metavar="STEP",
        help="multiply the learning rate by --lr-gamma from each of these "
        "(total) step counts",
    )
    parser.add_argument(
        "--lr-gamma", type=float, default=0.1, help="(default: %(default)s)"
    )
    parser.add_argument(
        "--clip_max_norm",
        type=float,
        default=1.0,
        help="gradient clipping max norm (0: off; default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="model init and batches (default: 0)"
    )
    parser.add_argument("--cuda", action="store_true", help="train on the GPU")
    parser.add_argument("--threads", type=int, help="torch CPU threads")

    aug = parser.add_argument_group("augmentation")
    aug.add_argument(
        "--max-side",
        type=int,
        default=1024,
        help="downscale images to this long side at load (default: %(default)s)",
    )
    aug.add_argument(
        "--scale-min",
        type=float,
        default=0.5,
        help="random rescale in [scale-min, 1] before cropping (1: plain crops)",
    )

    out = parser.add_argument_group("output and resuming")
    out.add_argument("--output-dir", default="out/train", help="(default: %(default)s)")
    out.add_argument(
        "--name", help="file stem (default: ARCH-N<N>-q<quality> or ...-l<lambda>)"
    )
    out.add_argument(
        "--save-every",
        type=int,
        default=500,
        metavar="STEPS",
        help="save every STEPS steps, and at the end (default: %(default)s)",
    )
    out.add_argument(
        "--half-storage",
        action="store_true",
        help="store the checkpoint's transforms in float16 (half the size; "
        "loaders restore float32)",
    )
    out.add_argument(
        "--avg-last",
        type=int,
        default=250,
        metavar="STEPS",
        help="report training PSNR/bpp averaged over the last STEPS steps",
    )
    out.add_argument(
        "--resume",
        metavar="STATE",
        help=f"resume from this train state (default: OUTPUT_DIR/NAME{STATE_SUFFIX} "
        "when it exists)",
    )
    out.add_argument(
        "--no-resume", action="store_true", help="start over even if a state exists"
    )
    out.add_argument(
        "--init",
        metavar="CKPT",
        help="start from these weights (fine-tuning); the step count continues "
        "from its meta",
    )
    out.add_argument(
        "--convert",
        metavar="CKPT",
        help="do not train: rewrite CKPT into OUTPUT_DIR (e.g. --half-storage), "
        "carrying its JSON over",
    )
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _config(args, N: int, M: Optional[int], lmbda: float) -> dict[str, Any]:
    """What a resumed run must share with the run it continues."""
    return {
        "arch": args.model,
        "N": N,
        "M": M,
        "lmbda": lmbda,
        "metric": args.metric,
        "patch": list(args.patch),
        "batch": args.batch_size,
        "seed": args.seed,
    }


def _meta(config: dict[str, Any], step: int) -> dict[str, Any]:
    p = config["patch"]
    return {
        "arch": config["arch"],
        "N": config["N"],
        "M": config["M"],
        "lmbda": config["lmbda"],
        "metric": config["metric"],
        "steps": step,
        "patch": p[0] if p[0] == p[1] else list(p),
        "batch": config["batch"],
    }


def _quality_of(lmbda: float, metric: str) -> Optional[int]:
    table = LAMBDAS[metric]
    return table.index(lmbda) + 1 if lmbda in table else None


def _write_json(path: Path, info: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, path)


def _shown_path(path: str) -> str:
    """``path`` relative to the repository root (as in the docs) if possible."""
    try:
        return os.path.relpath(Path(path).resolve(), REPO_ROOT)
    except ValueError:
        return str(path)


def _versions() -> dict[str, str]:
    return {
        "torch": torch.__version__,
        "compressai": compressai.__version__,
        "compressai_lora": compressai_lora.__version__,
    }


# -- training ----------------------------------------------------------------
class Trainer:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        if args.model is None:
            raise TrainError("give the architecture to train with -m/--model")
        if args.steps is None and args.minutes is None:
            raise TrainError("give --steps and/or --minutes")
        if args.cuda and not torch.cuda.is_available():
            raise TrainError("--cuda: no CUDA device available")
        if args.metric not in LAMBDAS:
            raise TrainError(f"unknown metric {args.metric!r}")
        if args.lmbda is None and not 1 <= args.quality <= len(LAMBDAS[args.metric]):
            raise TrainError(f"quality must be 1-8, got {args.quality}")
        self.lmbda = (
            args.lmbda
            if args.lmbda is not None
            else LAMBDAS[args.metric][args.quality - 1]
        )
        N, M = model_size(args.model, args.quality, args.N, args.M)
        self.config = _config(args, N, M, self.lmbda)
        self.device = torch.device("cuda" if args.cuda else "cpu")
        out = Path(args.output_dir)
        if args.name:
            name = args.name
        elif args.lmbda is None:
            name = f"{args.model}-N{N}-q{args.quality}"
        else:
            name = f"{args.model}-N{N}-l{self.lmbda:g}"
        self.name = name
        self.ckpt_path = out / f"{name}.pth.tar"
        self.json_path = out / f"{name}.json"
        self.state_path = out / f"{name}{STATE_SUFFIX}"
        problem = output_dir_problem(out)
        if problem:
            raise TrainError(problem)

        state = self._find_state()  # before the slow parts: fail early
        self.bank = ImageBank(
            args.dataset, tuple(args.patch), args.max_side, args.scale_min
        )
        torch.manual_seed(args.seed)
        self.net = build_model(args.model, N, M)
        self.step = 0
        self.time_s = 0.0
        self.history: collections.deque = collections.deque(maxlen=args.avg_last)
        self.sessions: list[dict[str, Any]] = []
        self.init: Optional[dict[str, Any]] = None
        if state is not None:
            self._load_state(state)
        elif args.init:
            self._load_init(args.init)
        self.net.to(self.device)
        self.optimizers = net_aux_optimizer(
            self.net,
            {
                "net": {"type": "Adam", "lr": args.learning_rate},
                "aux": {"type": "Adam", "lr": args.aux_learning_rate},
            },
        )
        if state is not None:
            self.optimizers["net"].load_state_dict(state["optimizer"])
            self.optimizers["aux"].load_state_dict(state["aux_optimizer"])
        self.criterion = RateDistortionLoss(self.lmbda, args.metric)

    def _find_state(self) -> Optional[dict[str, Any]]:
        args = self.args
        path = Path(args.resume) if args.resume else self.state_path
        if args.resume and not path.is_file():
            raise TrainError(f"--resume: no train state at {str(path)!r}")
        if args.no_resume or not path.is_file():
            return None
        state = torch.load(path, map_location="cpu", weights_only=True)
        found = state.get("config", {})
        if found != self.config:
            diff = {
                k: (found.get(k), v)
                for k, v in self.config.items()
                if found.get(k) != v
            }
            raise TrainError(
                f"{path} continues a run with other settings "
                f"(found, asked): {diff}; use another --output-dir or --no-resume"
            )
        return state

    def _load_state(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(to_float32(state["state_dict"]))
        self.step = int(state["step"])
        self.time_s = float(state["time_s"])
        self.history.extend(tuple(h) for h in state["history"])
        self.sessions = list(state["sessions"])
        self.init = state.get("init")

    def _load_init(self, path: str) -> None:
        if not Path(path).is_file():
            raise TrainError(f"--init: no file {path!r}")
        try:
            self.net.load_state_dict(load_state_dict_and_meta(path)[0])
        except (RuntimeError, KeyError) as e:
            raise TrainError(f"--init {path}: does not fit {self.config}: {e}") from e
        meta = load_state_dict_and_meta(path)[1]
        self.step = int(meta.get("steps", 0))
        self.init = {
            "file": Path(path).name,
            "sha256": sha256(path),
            "steps": self.step,
            "lmbda": meta.get("lmbda"),
        }

    # -- saving --------------------------------------------------------------
    def save(self, session: dict[str, Any]) -> None:
        args = self.args
        session["to_step"] = self.step
        session["minutes"] = round((time.time() - session["_t0"]) / 60, 2)
        elapsed = self.time_s + time.time() - session["_t0"]
        digest = save_checkpoint(
            self.ckpt_path,
            self.net,
            _meta(self.config, self.step),
            half=args.half_storage,
        )
        sessions = self.sessions + [{k: v for k, v in session.items() if k[0] != "_"}]
        state = {
            "state_dict": {k: v.cpu() for k, v in self.net.state_dict().items()},
            "optimizer": self.optimizers["net"].state_dict(),
            "aux_optimizer": self.optimizers["aux"].state_dict(),
            "step": self.step,
            "time_s": elapsed,
            "history": [list(h) for h in self.history],
            "sessions": sessions,
            "init": self.init,
            "config": self.config,
            "meta": _meta(self.config, self.step),
        }
        atomic_save(state, self.state_path)
        _write_json(self.json_path, self.info(digest, elapsed, sessions))

    def info(self, digest: str, elapsed: float, sessions: list) -> dict[str, Any]:
        args, cfg = self.args, self.config
        drops = [d for d in args.lr_drop]
        opt = f"Adam lr {args.learning_rate:g}"
        if drops:
            opt += f" (x{args.lr_gamma:g} from steps {', '.join(map(str, drops))})"
        opt += f"; aux Adam lr {args.aux_learning_rate:g}"
        opt += f"; grad clip {args.clip_max_norm:g}" if args.clip_max_norm else ""
        if self.init:
            opt = (
                f"fine-tuned from {self.init['file']} ({self.init['steps']} steps) "
                f"for {self.step - self.init['steps']} steps at lambda "
                f"{cfg['lmbda']:g}, {opt}"
            )
        n = len(self.history)
        final = None
        if n:
            psnr, bpp, loss = (sum(col) / n for col in zip(*self.history))
            final = {
                "steps_averaged": n,
                "psnr_db": round(psnr, 3),
                "bpp": round(bpp, 4),
                "loss": round(loss, 4),
                "note": "training batches (x_hat not clamped), not a test set",
            }
        p = cfg["patch"]
        return {
            "file": self.ckpt_path.name,
            "sha256": digest,
            "format": FORMAT.replace("{arch}", cfg["arch"]),
            "storage": "float16" if args.half_storage else "float32",
            "arch": cfg["arch"],
            "N": cfg["N"],
            "M": cfg["M"] if cfg["M"] is not None else cfg["N"],
            "lmbda": cfg["lmbda"],
            "metric": cfg["metric"],
            "quality_equivalent": _quality_of(cfg["lmbda"], cfg["metric"]),
            "steps": self.step,
            "batch": cfg["batch"],
            "patch": p[0] if p[0] == p[1] else p,
            "optimizer": opt,
            "augmentation": (
                f"random crops of images resized to <= {args.max_side} px, random "
                f"rescale {args.scale_min:g}-1.0, horizontal flip"
            ),
            "data": f"{_shown_path(args.dataset)} ({len(self.bank)} images)",
            "init": self.init,
            "seed": cfg["seed"],
            "time_minutes": round(elapsed / 60, 2),
            "hardware": hardware(self.device),
            "final_train_batch": final,
            "sessions": sessions,
            "versions": _versions(),
        }

    # -- loop ----------------------------------------------------------------
    def train_step(self, x: torch.Tensor) -> tuple[float, float, float]:
        args, net = self.args, self.net
        opt, aux_opt = self.optimizers["net"], self.optimizers["aux"]
        lr = lr_at(self.step, args.learning_rate, args.lr_drop, args.lr_gamma)
        for group in opt.param_groups:
            group["lr"] = lr
        for group in aux_opt.param_groups:
            group["lr"] = args.aux_learning_rate
        net.train()
        opt.zero_grad()
        aux_opt.zero_grad()
        out = self.criterion(net(x), x)
        out["loss"].backward()
        if args.clip_max_norm > 0:
            nn.utils.clip_grad_norm_(net.parameters(), args.clip_max_norm)
        opt.step()
        aux_loss = net.aux_loss()
        aux_loss.backward()
        aux_opt.step()
        loss, bpp = out["loss"].item(), out["bpp_loss"].item()
        if "mse_loss" in out:
            quality = -10 * math.log10(max(out["mse_loss"].item(), 1e-10))
        else:
            quality = out["ms_ssim_loss"].item()
        return quality, bpp, loss

    def run(self) -> dict[str, Any]:
        args = self.args
        t0 = time.time()
        session = {
            "_t0": t0,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t0)),
            "command": "python -m compressai_lora.utils.train " + shlex.join(args.argv),
            "from_step": self.step,
            "hardware": hardware(self.device),
        }
        budget = args.minutes * 60 if args.minutes is not None else math.inf
        target = args.steps if args.steps is not None else None
        bar = tqdm(
            total=target,
            initial=self.step,
            desc=self.name,
            unit="step",
            file=sys.stderr,
            disable=args.quiet,
            dynamic_ncols=True,
        )
        saved_at = None
        try:
            while (target is None or self.step < target) and (
                time.time() - t0 < budget
            ):
                x = self.bank.batch(
                    args.batch_size, step_generator(args.seed, self.step)
                )
                # quantization noise: also a function of (seed, step)
                torch.manual_seed(step_seed(args.seed, self.step) + (1 << 31))
                self.history.append(self.train_step(x.to(self.device)))
                self.step += 1
                bar.update(1)
                if self.step % 10 == 0 or self.step == target:
                    q, bpp, loss = self.history[-1]
                    label = "psnr" if args.metric == "mse" else "ms_ssim"
                    bar.set_postfix(
                        loss=f"{loss:.4f}",
                        bpp=f"{bpp:.3f}",
                        **{label: f"{q:.2f}" if args.metric == "mse" else f"{q:.4f}"},
                    )
                if args.save_every and self.step % args.save_every == 0:
                    self.save(session)
                    saved_at = self.step
        except KeyboardInterrupt:
            bar.close()
            self.save(session)
            print(f"saved at step {self.step}: run again to resume", file=sys.stderr)
            raise
        bar.close()
        if saved_at != self.step:
            self.save(session)
        return json.loads(self.json_path.read_text())


# -- conversion --------------------------------------------------------------
def convert(args) -> dict[str, Any]:
    """Rewrite a checkpoint with our save function; carry its JSON over."""
    src = Path(args.convert)
    if not src.is_file():
        raise TrainError(f"--convert: no file {str(src)!r}")
    state_dict, meta = load_state_dict_and_meta(src)
    arch = args.model or meta.get("arch")
    if arch not in base_architectures():
        raise TrainError(f"--convert: give the architecture (-m); meta says {arch!r}")
    net = base_architectures()[arch].from_state_dict(state_dict)
    stem = src.name.removesuffix(".tar").removesuffix(".pth")
    out = Path(args.output_dir) / f"{args.name or stem}.pth.tar"
    if out.resolve() == src.resolve():
        raise TrainError("--convert: the output would overwrite the source")
    digest = save_checkpoint(out, net, meta, half=args.half_storage)

    # check: same tensors as the source, up to the storage rounding
    back, _ = load_state_dict_and_meta(out)
    if back.keys() != state_dict.keys():
        raise TrainError(f"{out}: keys differ from {src}")
    max_err, tables_exact, fp32_exact = 0.0, True, True
    half = args.half_storage
    for k, v in state_dict.items():
        if not v.is_floating_point():
            tables_exact &= torch.equal(back[k], v)
        elif k.endswith((".weight", ".bias")) and half:
            max_err = max(
                max_err, float((back[k] - v).abs().max()) if v.numel() else 0.0
            )
        else:
            fp32_exact &= torch.equal(back[k], v)
    if not tables_exact:
        raise TrainError(f"{out}: entropy tables differ from {src}")

    src_json = src.with_name(f"{stem}.json")
    info: dict[str, Any] = {}
    if src_json.is_file():
        info = json.loads(src_json.read_text())
    else:
        info = {k: meta.get(k) for k in ("arch", "N", "M", "lmbda", "steps")}
    source = {"file": src.name, "sha256": sha256(src)}
    if info.pop("sha256", source["sha256"]) != source["sha256"]:
        raise TrainError(f"{src_json} describes another file (sha256 differs)")
    for key in ("format", "kodak_24_host_eval_model"):
        if key in info:
            source[key] = info.pop(key)
    info = {
        "file": out.name,
        "sha256": digest,
        "format": FORMAT.replace("{arch}", arch),
        "storage": "float16" if half else "float32",
        **{k: v for k, v in info.items() if k != "file"},
        "source": source,
        "conversion": {
            "command": "python -m compressai_lora.utils.train " + shlex.join(args.argv),
            "max_abs_error_float16_tensors": max_err,
            "entropy_tables_identical": tables_exact,
            "other_tensors_identical": fp32_exact,
            "versions": _versions(),
        },
    }
    _write_json(out.with_name(f"{args.name or stem}.json"), info)
    return info


def main(argv: Sequence[str]) -> Optional[dict[str, Any]]:
    parser = setup_args()
    args = parser.parse_args(argv)
    args.argv = list(argv)
    if len(args.patch_size) not in (1, 2):
        parser.error("--patch-size takes one size or height width")
    args.patch = (args.patch_size * 2)[:2]
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.convert:
            info = convert(args)
        else:
            info = Trainer(args).run()
    except TrainError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    except OSError as e:  # a path problem met on the way
        parser.exit(2, f"{parser.prog}: error: {os_error_line(e)}\n")
    except KeyboardInterrupt:
        parser.exit(130, "interrupted\n")
    print(json.dumps(info, indent=2))
    return info


if __name__ == "__main__":
    main(sys.argv[1:])
