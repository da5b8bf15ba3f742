"""Benchmark of the per-image adaptation (issue: instance adaptation).

For each image: real-bitstream RD cost J, bpp and PSNR of the base codec,
refined latents only, and the full method (refined + gated update), the time
of each phase, and the speed of our phase-2 step against the same step done
the reference way (entropy model and whole g_s re-run every step), measured
side by side in one run.

    python benchmarks/adapt_bench.py \
        --checkpoint ../shared/weights/cheng2020-attn-N64-q3.pth.tar \
        --images ../shared/data/ood/pixel/pyxel_10_platformer_f050.png --crop 256
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms.functional import to_tensor

import compressai_lora  # noqa: F401  (registers the -lora models)
from compressai_lora.adapt import AdaptConfig
from compressai_lora.adapt.engine import frozen, torch_threads
from compressai_lora.adapt.objective import distortion, rate_bpp
from compressai_lora.adapt.update import first_adapted_block
from compressai_lora.checkpoint import load_state_dict, load_state_dict_and_meta
from compressai_lora.latents import analyse, latent_terms
from compressai_lora.zoo import model_architectures


def psnr(dist: float) -> float:
    return 10 * math.log10(255**2 / max(dist, 1e-10))


def step_speed(
    model, x: Tensor, lmbda: float, steps: int, open_gates: list[str]
) -> dict[str, float]:
    """Median seconds per phase-2 step, ours vs the reference way, interleaved.

    Ours: ``g_s`` only, its blocks before the first open adapter cached, only
    the open layers carry a trainable update.  Reference: every step re-runs
    the entropy model on the fixed latents and the whole ``g_s`` with all
    adapted layers trainable (as the paper's code does).
    """
    names = list(model.lora_layers)
    open_gates = open_gates or names
    adapters = model.adapters()
    with torch.no_grad():
        y, z = analyse(model, x)
        y_hat, _ = latent_terms(model, y, z, torch.round)
    factors = {}
    for name, m in adapters.items():
        f = {k: v.requires_grad_(True) for k, v in m.initial_factors().items()}
        factors[name] = f
    opt = torch.optim.Adam([t for f in factors.values() for t in f.values()], lr=1e-3)
    split = first_adapted_block(model, open_gates)
    with torch.no_grad():
        feat = model.g_s[:split](y_hat)
    h, w = x.shape[-2:]

    def step_factors(active):
        """The trainable factors of ``active`` by buffer name in ``g_s``."""
        for name, m in adapters.items():
            m.gate = name in active
        return {
            f"{name[4:]}.{k}": v for name in active for k, v in factors[name].items()
        }

    def ours():
        f = step_factors(open_gates)
        return torch.func.functional_call(model.g_s[split:], f, (feat,))

    def reference():
        with torch.no_grad():
            yh, liks = latent_terms(model, y, z, torch.round)
            rate_bpp(liks, h * w)
        f = step_factors(names)
        return torch.func.functional_call(model.g_s, f, (yh,))

    times = {"ours": [], "reference": []}
    try:
        for _ in range(steps):
            for name, run in (("ours", ours), ("reference", reference)):
                t0 = time.perf_counter()
                loss = lmbda * distortion(run()[..., :h, :w], x, "mse")
                opt.zero_grad()
                loss.backward()
                opt.step()
                times[name].append(time.perf_counter() - t0)
    finally:
        step_factors(())
    out = {k: statistics.median(v) for k, v in times.items()}
    out["speedup"] = out["reference"] / out["ours"]
    out["open_layers"] = len(open_gates)
    return out


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("-a", "--architecture", default="cheng2020-attn-lora")
    p.add_argument("--images", nargs="+", required=True)
    p.add_argument("--crop", type=int, default=256, help="top-left crop (0: full)")
    p.add_argument("--preset", default="default")
    p.add_argument("--refine-steps", type=int)
    p.add_argument("--adapt-steps", type=int)
    p.add_argument("--speed-steps", type=int, default=10)
    p.add_argument("--threads", type=int)
    p.add_argument("--form", choices=["separable", "full"])
    p.add_argument("--step-code", type=int)
    args = p.parse_args(argv)

    model = model_architectures[args.architecture].from_state_dict(
        load_state_dict(args.checkpoint)
    )
    model.update(force=True)
    model.eval()
    meta = load_state_dict_and_meta(args.checkpoint)[1]
    changes = {
        k: v
        for k, v in {
            "refine_steps": args.refine_steps,
            "adapt_steps": args.adapt_steps,
            "threads": args.threads,
            "form": args.form,
            "step_code": args.step_code,
        }.items()
        if v is not None
    }
    cfg = AdaptConfig.preset(args.preset, lmbda=meta.get("lmbda"), **changes)
    model.adapt_config = cfg
    rows = []
    for path in args.images:
        x = to_tensor(Image.open(path).convert("RGB")).unsqueeze(0)
        if args.crop:
            x = x[..., : args.crop, : args.crop]
        t0 = time.perf_counter()
        with torch.no_grad():
            model.compress(x)
        total = time.perf_counter() - t0
        s = model.last_adaptation
        row = {"image": Path(path).name, "size": list(x.shape[-2:]), "time": total}
        for k in s["J"]:
            row[k] = {
                "J": s["J"][k],
                "bpp": s["bpp"][k],
                "psnr": psnr(s["dist"][k]),
            }
        row.update(
            {
                k: s[k]
                for k in ("choice", "base_time", "refine_time", "adapt_time")
                if k in s
            }
        )
        row["open_gates"] = s["open_gates"]
        with torch.enable_grad(), frozen(model), torch_threads(cfg.threads):
            row["phase2_step_s"] = step_speed(
                model, x, cfg.lmbda or 0.0067, args.speed_steps, s["open_gates"]
            )
        rows.append(row)
        print(json.dumps(row), flush=True)
    json.dump({"config": repr(cfg), "rows": rows}, sys.stdout, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
