"""Encoder seconds and peak memory per pixel against the image's size.

Each image is encoded (cheng2020-attn-lora, the project's N=64 q3 weights,
one torch thread) in its own process with a preset, and decoded for real:
the table gives seconds, seconds per megapixel and its ratio to the first
image's (the smallest, e.g. a 256x256 crop), real J against the base codec,
and the peak memory the encode added on top of the loaded model, per pixel,
beside the encoder's pixel budget (``utils/codec/limits.py``).  ``--code``
adds another checkout (e.g. today's main), measured on the same images.

    python benchmarks/size_speed.py --preset fast --images crop256.png \\
        ../shared/data/kodak/kodim01.png \\
        ../shared/data/ood/screen/godot_gui_bidi_and_font_features__bidi.png \\
        --code main=/path/to/main/checkout
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT.parent / "shared" / "weights" / "cheng2020-attn-N64-q3.pth.tar"

_CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
args = json.loads(sys.argv[1])
torch.set_num_threads(1)
from PIL import Image
from compressai.ops import compute_padding
import compressai_lora
from compressai_lora.adapt import AdaptConfig
from compressai_lora.utils.codec.__main__ import build_model
from compressai_lora.utils.codec.limits import bytes_per_pixel
model, _, _ = build_model("cheng2020-attn-lora", quality=None, metric="mse",
    checkpoint=args["checkpoint"], rank=2, form="separable", device="cpu")
rgb = np.asarray(Image.open(args["image"]).convert("RGB"))
h, w = rgb.shape[:2]
x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255
pad, _ = compute_padding(h, w, min_div=64)
xp = torch.nn.functional.pad(x, pad, value=0)
left, _, top, _ = pad

def rss():  # peak resident bytes of this process so far
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

def code(cfg):
    model.adapt_config = cfg
    start = time.perf_counter()
    with torch.no_grad(), model.input_padding(pad):
        out = model.compress(xp)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        x_hat = model.decompress(out["strings"], out["shape"])["x_hat"]
    rec = (x_hat[0, :, top:top + h, left:left + w].clamp(0, 1) * 255).round()
    mse = float(((rec - x[0] * 255).double() ** 2).mean())
    bpp = 8 * sum(len(s[0]) for s in out["strings"]) / (h * w)
    return bpp + args["lmbda"] * mse, seconds

before = rss()
base, _ = code(AdaptConfig(enabled=False, lmbda=args["lmbda"]))
J, seconds = code(AdaptConfig.preset(args["preset"], lmbda=args["lmbda"], threads=1))
print(json.dumps({"pixels": h * w, "size": f"{w}x{h}", "seconds": seconds,
    "gain": 100 * (J / base - 1), "peak_bytes": rss() - before,
    "budget_bytes_per_pixel": bytes_per_pixel(
        next(m for m in model.g_a.modules() if hasattr(m, "out_channels")).out_channels,
        True)}))
"""


def run(code: Path, image: Path, args) -> dict:
    job = {"image": str(image.resolve()), "checkpoint": str(args.checkpoint),
           "lmbda": args.lmbda, "preset": args.preset}  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(code))
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(job)],
        env=env, capture_output=True, text=True, cwd=str(code),
    )  # fmt: skip
    if proc.returncode:
        raise SystemExit(f"{image} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", nargs="+", type=Path, required=True)
    p.add_argument("--preset", default="fast")
    p.add_argument("--checkpoint", type=Path, default=WEIGHTS)
    p.add_argument("--lmbda", type=float, default=0.0067)
    p.add_argument("--code", action="append", default=[], metavar="LABEL=DIR")
    p.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    codes = {"this": ROOT}
    for item in args.code:
        label, _, path = item.partition("=")
        codes[label] = Path(path).resolve()
    rows = []
    print(f"preset {args.preset}, one thread; ratio: s/MP against the first image")
    print("| code | image | size | seconds | s/MP | ratio | J vs base | peak B/px |")
    print("|---|---|---|---|---|---|---|---|")
    for label, code in codes.items():
        first = None
        for image in args.images:
            r = {"code": label, "image": image.name, **run(code, image, args)}
            per = r["seconds"] / r["pixels"] * 1e6
            first = first or per
            rows.append(r)
            print(
                f"| {label} | {image.name[:28]} | {r['size']} | {r['seconds']:.1f} | "
                f"{per:.0f} | {per / first:.2f} | {r['gain']:+.2f}% | "
                f"{r['peak_bytes'] / r['pixels']:.0f} "
                f"(budget {r['budget_bytes_per_pixel']}) |",
                flush=True,
            )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
