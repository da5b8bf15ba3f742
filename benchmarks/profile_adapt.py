"""Where one adaptation spends its time: a cProfile of ``compress()``.

Encodes one image (cheng2020-attn-lora, the project's N=64 q3 weights, one
torch thread) with a preset and an optional budget under cProfile and prints
the shares of the wall time: the two phases, the real coding (the base and
refined candidates, the updates' codings, the decoder context of the
refinement's checkpoints), the convolutions' forward and autograd's backward.
Run it from a checkout (``PYTHONPATH``) to profile that checkout.

    python benchmarks/profile_adapt.py IMAGE --preset default [--budget 60]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import compressai_lora  # noqa: F401  (registers the -lora models)
from compressai_lora.adapt import AdaptConfig
from compressai_lora.utils.codec.__main__ import build_model

WEIGHTS = Path(__file__).resolve().parents[2] / "shared/weights"
#: (label, function name, file name ends with): cumulative time of each
PARTS = [
    ("real coding: latent candidates", "latent_candidate", "candidates.py"),
    ("real coding: update candidates", "update_candidate", "candidates.py"),
    ("real coding: decoder context", "decoder_context", "latents.py"),
    ("conv2d forward", "conv2d", "~"),
    ("autograd backward", "run_backward", "~"),
]


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("image", type=Path)
    p.add_argument("--preset", default="default")
    p.add_argument("--budget", type=float)
    p.add_argument("--lmbda", type=float, default=0.0067)
    p.add_argument(
        "--checkpoint", default=str(WEIGHTS / "cheng2020-attn-N64-q3.pth.tar")
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model, _, _ = build_model(
        "cheng2020-attn-lora", quality=None, metric="mse",
        checkpoint=args.checkpoint, rank=2, form="separable", device="cpu",
    )  # fmt: skip
    rgb = np.asarray(Image.open(args.image).convert("RGB"))
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255
    model.adapt_config = AdaptConfig.preset(
        args.preset, lmbda=args.lmbda, threads=1, time_budget=args.budget
    )
    prof = cProfile.Profile()
    start = time.perf_counter()
    with torch.no_grad():
        prof.runcall(model.compress, x)
    wall = time.perf_counter() - start
    stats = pstats.Stats(prof).stats  # (file, line, name) -> (cc, nc, tt, ct, callers)
    st = model.last_adaptation
    print(f"{args.image.name}, {args.preset}, budget {args.budget}: {wall:.1f} s wall")
    print(f"steps: refinement {st.get('refine_iters')}, update {st.get('adapt_iters')}")
    # the phases from the engine's own clocks, the parts from the profile
    rows = [
        ("refinement phase", st["refine_time"]),
        ("update phase", st["adapt_time"]),
    ]
    for label, name, where in PARTS:
        sec = sum(
            v[3] for (f, _, n), v in stats.items() if f.endswith(where) and
            (n == name or (f == "~" and name in n))
        )  # fmt: skip
        rows.append((label, sec))
    for label, sec in rows:
        print(f"  {label}: {sec:.1f} s ({100 * sec / wall:.0f}%)")


if __name__ == "__main__":
    main(sys.argv[1:])
