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
import sys
import time
from pathlib import Path

import torch
from compressai_lora.checkpoint_io import load_model
from PIL import Image
from torchvision.transforms.functional import to_tensor

import compressai_lora  # noqa: F401  (registers the -lora models)
from compressai_lora.adapt import AdaptConfig
from compressai_lora.adapt.engine import (
    _split_g_s,
    distortion,
    frozen,
    rate_bpp,
    torch_threads,
)
from compressai_lora.adapt.latents import analyse, latent_terms


def psnr(dist: float) -> float:
    return 10 * math.log10(255**2 / max(dist, 1e-10))


def step_speed(model, x: Tensor, lmbda: float, steps: int) -> dict[str, float]:
    """Seconds per phase-2 step: ours (cached prefix, g_s only) vs reference."""
    adapters = list(model.adapters().values())
    with torch.no_grad():
        y, z = analyse(model, x)
        y_hat, _ = latent_terms(model, y, z, torch.round)
    params = []
    for m in adapters:
        f = {k: torch.zeros(s) for k, s in m.factor_shapes().items()}
        f["A"] = torch.randn(f["A"].shape) * 0.01
        f = {k: v.requires_grad_(True) for k, v in f.items()}
        params.append(f)
        m.delta_fn = lambda inp, m=m, f=f: m.delta_from(**f)
    opt = torch.optim.Adam([t for f in params for t in f.values()], lr=1e-3)
    split = _split_g_s(model)
    h, w = x.shape[-2:]

    def ours_setup():
        with torch.no_grad():
            feat = model.g_s[:split](y_hat)
        return lambda: model.g_s[split:](feat)

    def reference_setup():
        def run():
            with torch.no_grad():  # the reference re-runs the entropy model
                yh, liks = latent_terms(model, y, z, torch.round)
                rate_bpp(liks, h * w)
            return model.g_s(yh)

        return run

    out = {}
    try:
        for name, setup in (("ours", ours_setup), ("reference", reference_setup)):
            run = setup()
            t0 = time.perf_counter()
            for _ in range(steps):
                loss = lmbda * distortion(run()[..., :h, :w], x, "mse")
                opt.zero_grad()
                loss.backward()
                opt.step()
            out[name] = (time.perf_counter() - t0) / steps
    finally:
        for m in adapters:
            m.delta_fn = None
    out["speedup"] = out["reference"] / out["ours"]
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
    args = p.parse_args(argv)

    model, meta = load_model(args.architecture, args.checkpoint)
    changes = {
        k: v
        for k, v in {
            "refine_steps": args.refine_steps,
            "adapt_steps": args.adapt_steps,
            "threads": args.threads,
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
                model, x, cfg.lmbda or 0.0067, args.speed_steps
            )
        rows.append(row)
        print(json.dumps(row), flush=True)
    json.dump({"config": repr(cfg), "rows": rows}, sys.stdout, indent=1)


if __name__ == "__main__":
    from torch import Tensor  # noqa: F401

    main(sys.argv[1:])
