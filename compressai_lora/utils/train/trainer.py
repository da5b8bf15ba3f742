"""The training loop: resuming, steps, saving, and the run's JSON."""

from __future__ import annotations

import argparse
import collections
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
from compressai.losses import RateDistortionLoss
from compressai.optimizers import net_aux_optimizer
from tqdm import tqdm

from ...checkpoint import (
    CheckpointError,
    atomic_save,
    load_file,
    load_state_dict_and_meta,
    save_checkpoint,
    sha256,
    to_float32,
)
from ...lambdas import LAMBDAS, resolve_lmbda
from ..files import write_json
from ..paths import output_dir_problem
from .data import ImageBank, step_generator, step_seed
from .errors import TrainError
from .models import build_model, hardware, model_size
from .quantizer import decoder_quantizer
from .records import (
    STATE_SUFFIX,
    checkpoint_format,
    checkpoint_meta,
    command_line,
    quality_of,
    run_config,
    shown_path,
    versions,
)

__all__ = ["Trainer", "lr_at"]

TRANSFORMS = ("g_a.", "g_s.")  # what --init-transforms carries over


def lr_at(step: int, lr: float, drops: Sequence[int], gamma: float) -> float:
    """Learning rate at ``step``: ``lr * gamma ** (drops passed)``."""
    return lr * gamma ** sum(step >= d for d in drops)


class Trainer:
    """One training session of ``args``: resumes a state, runs, saves."""

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
        try:
            self.lmbda = resolve_lmbda(
                args.lmbda, quality=args.quality, metric=args.metric
            )
        except ValueError:
            raise TrainError(f"quality must be 1-8, got {args.quality}") from None
        N, M = model_size(args.model, args.quality, args.N, args.M)
        self.config = run_config(args, N, M, self.lmbda)
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
        elif args.init and args.init_transforms:
            raise TrainError("give --init or --init-transforms, not both")
        elif args.init:
            self._load_init(args.init)
        elif args.init_transforms:
            self._load_transforms(args.init_transforms)
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
        try:
            state = load_file(path)
        except CheckpointError as e:
            raise TrainError(str(e)) from None
        found = {"quantizer": "noise", **state.get("config", {})}  # older states
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
        state_dict, meta = load_state_dict_and_meta(path)
        try:
            self.net.load_state_dict(state_dict)
        except (RuntimeError, KeyError) as e:
            raise TrainError(f"--init {path}: does not fit {self.config}: {e}") from e
        self.step = int(meta.get("steps", 0))
        self.init = {
            "file": Path(path).name,
            "sha256": sha256(path),
            "steps": self.step,
            "lmbda": meta.get("lmbda"),
        }

    def _load_transforms(self, path: str) -> None:
        if not Path(path).is_file():
            raise TrainError(f"--init-transforms: no file {path!r}")
        state_dict, meta = load_state_dict_and_meta(path)
        ours = self.net.state_dict()
        wanted = [k for k in ours if k.startswith(TRANSFORMS)]
        bad = [
            k
            for k in wanted
            if k not in state_dict or state_dict[k].shape != ours[k].shape
        ]
        if bad:
            raise TrainError(
                f"--init-transforms {path}: its g_a/g_s do not fit {self.config} "
                f"(missing or other shape: {', '.join(bad[:4])})"
            )
        self.net.load_state_dict({k: state_dict[k] for k in wanted}, strict=False)
        self.init = {
            "file": Path(path).name,
            "sha256": sha256(path),
            "steps": int(meta.get("steps", 0)),
            "lmbda": meta.get("lmbda"),
            "arch": meta.get("arch"),
            "modules": [t.rstrip(".") for t in TRANSFORMS],
        }

    # -- saving --------------------------------------------------------------
    def save(self, session: dict[str, Any]) -> None:
        """Write the checkpoint, the train state and the JSON of ``session``."""
        args = self.args
        session["to_step"] = self.step
        session["minutes"] = round((time.time() - session["_t0"]) / 60, 2)
        elapsed = self.time_s + time.time() - session["_t0"]
        digest = save_checkpoint(
            self.ckpt_path,
            self.net,
            checkpoint_meta(self.config, self.step),
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
            "meta": checkpoint_meta(self.config, self.step),
        }
        atomic_save(state, self.state_path)
        write_json(self.json_path, self.info(digest, elapsed, sessions), newline=True)

    def info(self, digest: str, elapsed: float, sessions: list) -> dict[str, Any]:
        """The JSON written beside the checkpoint."""
        args, cfg = self.args, self.config
        drops = [d for d in args.lr_drop]
        opt = f"Adam lr {args.learning_rate:g}"
        if drops:
            opt += f" (x{args.lr_gamma:g} from steps {', '.join(map(str, drops))})"
        opt += f"; aux Adam lr {args.aux_learning_rate:g}"
        opt += f"; grad clip {args.clip_max_norm:g}" if args.clip_max_norm else ""
        if self.init and self.init.get("modules"):
            opt = (
                f"g_a and g_s initialized from {self.init['file']} "
                f"({self.init['arch']}, {self.init['steps']} steps), the rest from "
                f"scratch; {self.step} steps at lambda {cfg['lmbda']:g}, {opt}"
            )
        elif self.init:
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
            "format": checkpoint_format(cfg["arch"]),
            "storage": "float16" if args.half_storage else "float32",
            "arch": cfg["arch"],
            "N": cfg["N"],
            "M": cfg["M"] if cfg["M"] is not None else cfg["N"],
            "lmbda": cfg["lmbda"],
            "metric": cfg["metric"],
            "quality_equivalent": quality_of(cfg["lmbda"], cfg["metric"]),
            "steps": self.step,
            "batch": cfg["batch"],
            "patch": p[0] if p[0] == p[1] else p,
            "optimizer": opt,
            "quantizer": (
                "g_s decodes round(y - mu) + mu (straight-through), rate from noise"
                if cfg["quantizer"] == "ste"
                else "g_s decodes y + uniform noise (CompressAI's default)"
            ),
            "augmentation": (
                f"random crops of images resized to <= {args.max_side} px, random "
                f"rescale {args.scale_min:g}-1.0, horizontal flip"
            ),
            "data": f"{shown_path(args.dataset)} ({len(self.bank)} images)",
            "init": self.init,
            "seed": cfg["seed"],
            "time_minutes": round(elapsed / 60, 2),
            "hardware": hardware(self.device),
            "final_train_batch": final,
            "sessions": sessions,
            "versions": versions(),
        }

    # -- loop ----------------------------------------------------------------
    def train_step(self, x: torch.Tensor) -> tuple[float, float, float]:
        """One optimizer step on ``x``: ``(PSNR or MS-SSIM, bpp, loss)``."""
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
        with decoder_quantizer(net, args.quantizer):
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
        """Train until ``--steps`` or ``--minutes``; the JSON written last."""
        args = self.args
        t0 = time.time()
        session = {
            "_t0": t0,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t0)),
            "command": command_line(args.argv),
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
