"""Step time of batched adaptation (issue 12): B images per step against one.

The same crops are adapted one at a time (B=1) and together (B images per
step), side by side in one run, through ``model.compress`` as users call it.
From the progress callbacks: the median time of a refinement step and of an
update step (the median leaves out the steps that also code a checkpoint).
The table gives, per phase, the seconds per step of one image alone, of the
batch, per image in the batch, and the ratio: how many times more image-steps
per second the batch runs.  By default the update phase is all warm-up
(``--gate-steps`` = ``--adapt-steps``), so every step trains all 11 layers.

    python benchmarks/batched_steps.py --batch 4 --refine-steps 20 \\
        --adapt-steps 20 [--device cuda] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms.functional import to_tensor

import compressai_lora  # noqa: F401  (registers the -lora models)
from compressai_lora.checkpoint import load_state_dict_and_meta
from compressai_lora.models import image_strings
from compressai_lora.zoo import model_architectures

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights" / "cheng2020-attn-N64-q3.pth.tar"
DATA = ROOT.parent / "shared" / "data" / "ood"
PHASES = ("refine", "adapt")


def default_images(n: int) -> list[Path]:
    """The first image of each out-of-domain set, in turn, ``n`` in all."""
    domains = [sorted(d.glob("*.png")) for d in sorted(DATA.iterdir()) if d.is_dir()]
    domains = [d for d in domains if d]
    return [domains[i % len(domains)][i // len(domains)] for i in range(n)]


def load_crops(paths: list[Path], crop: int) -> torch.Tensor:
    """Top-left ``crop`` x ``crop`` of each image, as one batch."""
    crops = []
    for path in paths:
        x = to_tensor(Image.open(path).convert("RGB"))[:, :crop, :crop]
        if tuple(x.shape[-2:]) != (crop, crop):
            raise SystemExit(f"{path} is smaller than {crop}x{crop}")
        crops.append(x)
    return torch.stack(crops)


def timed_compress(model, x: torch.Tensor, batch: int) -> dict:
    """``model.compress(x)`` ``batch`` images at a time; callback timestamps
    per (phase, image) and each image's stats and strings."""
    stamps: dict[tuple[str, int], list[float]] = {}
    current = [0]  # the first image of the batch being adapted

    def callback(info: dict) -> None:
        key = (info["phase"], current[0] + info.get("image", 0))
        stamps.setdefault(key, []).append(time.perf_counter())

    model.adapt_config = model.adapt_config.replace(batch_size=batch, callback=callback)
    stats, strings = [], []
    t0 = time.perf_counter()
    for start in range(0, x.size(0), batch):
        current[0] = start
        with torch.no_grad():
            out = model.compress(x[start : start + batch])
        stats += model.last_adaptations
        strings += image_strings(out["strings"])
    return {
        "wall": time.perf_counter() - t0,
        "stamps": stamps,
        "stats": stats,
        "strings": strings,
    }


def step_time(run: dict, phase: str, image: int) -> float:
    """Median seconds between ``image``'s consecutive steps of ``phase``."""
    t = run["stamps"].get((phase, image), [])
    gaps = [b - a for a, b in zip(t, t[1:])]
    return statistics.median(gaps) if gaps else float("nan")


def gates(stats: dict) -> dict:
    return {k: g["open"] for k, g in stats.get("gates", {}).items()}


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=WEIGHTS)
    p.add_argument("-a", "--architecture", default="cheng2020-attn-lora")
    p.add_argument("--images", type=Path, nargs="+", help="(default: OOD sets)")
    p.add_argument("--crop", type=int, default=256, help="top-left crop size")
    p.add_argument("--batch", type=int, default=4, help="images per batched step")
    p.add_argument("--refine-steps", type=int, default=20)
    p.add_argument("--adapt-steps", type=int, default=20)
    p.add_argument("--gate-steps", type=int, help="(default: --adapt-steps)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    sd, meta = load_state_dict_and_meta(args.checkpoint)
    model = model_architectures[args.architecture].from_state_dict(sd)
    model = model.to(args.device).eval()
    model.update(force=True)
    gate_steps = args.adapt_steps if args.gate_steps is None else args.gate_steps
    model.adapt_config = model.adapt_config.replace(
        refine_steps=args.refine_steps,
        adapt_steps=args.adapt_steps,
        gate_steps=gate_steps,
        lmbda=meta.get("lmbda", 0.0067),
    )
    paths = args.images or default_images(args.batch)
    x = load_crops(paths, args.crop).to(args.device)
    n = x.size(0)

    runs = {
        1: timed_compress(model, x, 1),
        args.batch: timed_compress(model, x, args.batch),
    }
    alone, together = runs[1], runs[args.batch]
    rows = []
    for phase in PHASES:
        one = statistics.mean(step_time(alone, phase, i) for i in range(n))
        batch = step_time(together, phase, 0)
        per_image = batch / min(args.batch, n)
        rows.append(
            {
                "phase": phase,
                "B=1 s/step": one,
                f"B={args.batch} s/step": batch,
                f"B={args.batch} s/step/image": per_image,
                "ratio": one / per_image,
            }
        )
    same = [
        (a["choice"], gates(a)) == (b["choice"], gates(b))
        for a, b in zip(alone["stats"], together["stats"])
    ]
    bytes_equal = sum(a == b for a, b in zip(alone["strings"], together["strings"]))
    print(
        f"{args.architecture}, {n} crops of {args.crop}x{args.crop} ({args.device}, "
        f"{torch.get_num_threads()} threads), {args.refine_steps} + "
        f"{args.adapt_steps} steps (gate steps {gate_steps})"
    )
    print(f"| phase | B=1 s/step | B={args.batch} s/step | per image | ratio |")
    print("|---|---|---|---|---|")
    for r in rows:
        v = list(r.values())
        print(f"| {v[0]} | {v[1]:.3f} | {v[2]:.3f} | {v[3]:.3f} | {v[4]:.2f}x |")
    print(
        f"wall: B=1 {alone['wall']:.1f} s, B={args.batch} {together['wall']:.1f} s; "
        f"same choice and gates {sum(same)}/{n}, same bytes {bytes_equal}/{n}"
    )
    if args.json:
        json.dump({"images": [str(q) for q in paths], "rows": rows}, sys.stdout)
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
