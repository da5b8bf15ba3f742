"""How far is the refinement's objective from the real coder?

For each image, the latents of the base encoder and of a refinement run are
costed three ways: with the refinement's hard-rounded objective taking the
autoregressive context from ``round(y)`` (the first release), with the
context anchored on the serial decoder's ``y_hat`` (now), and for real (bytes
from the range coder, the real decoder's 8-bit output).  Prints the gap of
each objective to the real cost in J, bpp and dB.

    python benchmarks/surrogate_gap.py IMAGE... --steps 300 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compressai_lora.adapt import AdaptConfig  # noqa: E402
from compressai_lora.adapt.candidates import Target, latent_candidate  # noqa: E402
from compressai_lora.adapt.engine import frozen  # noqa: E402
from compressai_lora.adapt.loop import Deadline, run_phase  # noqa: E402
from compressai_lora.adapt.objective import distortion, rate_bpp  # noqa: E402
from compressai_lora.adapt.refine import Refinement  # noqa: E402
from compressai_lora.latents import (  # noqa: E402
    analyse,
    decoder_context,
    latent_terms,
)
from compressai_lora.utils.codec.__main__ import build_model  # noqa: E402


def psnr(mse255: float) -> float:
    return 10 * math.log10(255**2 / max(mse255, 1e-10))


@torch.no_grad()
def surrogate(model, x, y, z, lmbda, anchored: bool) -> dict:
    ctx = decoder_context(model, y, z) if anchored else None
    y_hat, liks = latent_terms(model, y, z, torch.round, context=ctx)
    x_hat = model.g_s(y_hat)[..., : x.size(-2), : x.size(-1)].clamp(0, 1)
    bpp = float(rate_bpp(liks, x.size(-2) * x.size(-1)))
    mse = float(distortion(x_hat, x, "mse"))
    return {"J": bpp + lmbda * mse, "bpp": bpp, "psnr": psnr(mse)}


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument(
        "--checkpoint",
        default=str(ROOT.parent / "shared/weights/cheng2020-attn-N64-q3.pth.tar"),
    )
    p.add_argument("--lmbda", type=float, default=0.0067)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, _, _ = build_model(
        "cheng2020-attn-lora",
        quality=None,
        metric="mse",
        checkpoint=args.checkpoint,
        rank=2,
        form="separable",
        device="cpu",
    )
    cfg = AdaptConfig.preset(
        "paper", refine_steps=args.steps, lmbda=args.lmbda, threads=args.threads
    )
    rows = []
    for path in args.images:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255
        target = Target(x, (0, 0), args.lmbda, "mse")
        with torch.no_grad():
            y0, z0 = analyse(model, x)
        latents = [("base", (y0, z0))]
        for anchored in (False, True):
            phase = Refinement(model, [target], [y0], [z0], cfg)
            phase.anchored = anchored  # False: the first release's objective
            state = phase.states[0]
            state.best_loss = phase.hard_loss(state)
            with torch.enable_grad(), frozen(model):
                run_phase(phase, Deadline(None))
            y1, z1 = state.best
            name = "anchored" if anchored else "round(y) ctx"
            latents.append((f"refined {args.steps}, {name}", (y1, z1)))
        for label, (y, z) in latents:
            real = latent_candidate(model, label, target, x, y, z)
            real_d = {"J": real.J, "bpp": real.bpp, "psnr": psnr(real.dist)}
            row = {
                "image": f"{path.parent.name}/{path.stem}",
                "latents": label,
                "real": real_d,
            }
            for name, anchored in (("round(y) context", False), ("anchored", True)):
                s = surrogate(model, x, y, z, args.lmbda, anchored)
                row[name] = {k: s[k] - real_d[k] for k in s}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(
        "\n| image | latents | real J | gap round(y) ctx: J / bpp / dB "
        "| gap anchored: J / bpp / dB |"
    )
    print("|---|---|---|---|---|")
    for r in rows:
        a, b = r["round(y) context"], r["anchored"]
        print(
            f"| {r['image']} | {r['latents']} | {r['real']['J']:.4f} | "
            f"{a['J']:+.4f} / {a['bpp']:+.4f} / {a['psnr']:+.2f} | "
            f"{b['J']:+.4f} / {b['bpp']:+.4f} / {b['psnr']:+.2f} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
