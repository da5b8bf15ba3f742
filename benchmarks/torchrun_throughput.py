"""Images per hour on the CPU: one eval_model process against torchrun ranks.

Runs ``python -m compressai_lora.utils.eval_model`` with ``--threads T`` (one
process; the host's eval_model keeps the inference outside the adaptation at
1 thread, as today) and ``torchrun --nproc-per-node K -m ...`` with
``--threads T/K`` (each rank, all its work), on the same images, one after
the other in one run (``--rounds`` alternates them to even out background
load).  Wall time is the whole command, process start included (about 15-30 s
here to import torch and compressai: use enough images to amortize it).
With ``--batch-size B`` a third mode runs: one process with ``--threads T``
and eval_model's ``--batch-size B`` (crops of one size: one batch per B
images).  Prints a table and the ratios of images per hour.

    python benchmarks/torchrun_throughput.py                    # 4 sample crops
    python benchmarks/torchrun_throughput.py --crop 256 --images 8 --rounds 2 \\
        --preset default
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SOURCES = (ROOT / "samples", ROOT.parent / "shared" / "data" / "ood")
EXTENSIONS = (".png", ".jpg", ".jpeg", ".ppm", ".bmp", ".tif", ".tiff", ".webp")


def setup_args() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=ROOT / "weights/cheng2020-attn-N64-q3.pth.tar",
    )
    p.add_argument("-a", "--architecture", default="cheng2020-attn-lora")
    p.add_argument(
        "--source",
        type=Path,
        nargs="+",
        default=[s for s in SOURCES if s.is_dir()],
        help="image folders (recursive, sorted; default: samples/, then "
        "../shared/data/ood)",
    )
    p.add_argument("--images", type=int, default=4, help="number of images")
    p.add_argument("--crop", type=int, default=128, help="centre crop side (px)")
    p.add_argument("--preset", default="fast")
    p.add_argument("--refine-steps", type=int)
    p.add_argument("--adapt-steps", type=int)
    p.add_argument("--threads", type=int, default=2, help="threads in all (T)")
    p.add_argument("--procs", type=int, default=2, help="torchrun ranks (K)")
    p.add_argument("--rounds", type=int, default=1, help="alternations of all modes")
    p.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="B > 1 adds one process with eval_model --batch-size B",
    )
    p.add_argument("--work", type=Path, help="work folder (default: a temporary)")
    return p


def crops(args: argparse.Namespace, folder: Path) -> int:
    """Write the first ``--images`` images, centre-cropped, to ``folder``."""
    files = [
        f
        for source in args.source
        for f in sorted(source.rglob("*"))
        if f.suffix.lower() in EXTENSIONS
    ][: args.images]
    if not files:
        raise SystemExit(f"no images in {' '.join(map(str, args.source))}")
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        with Image.open(f) as im:
            im = im.convert("RGB")
            w, h = im.size
            side = min(args.crop, w, h)
            left, top = (w - side) // 2, (h - side) // 2
            im.crop((left, top, left + side, top + side)).save(
                folder / f"{i:02d}-{f.stem}.png"
            )
    return len(files)


def eval_args(
    args: argparse.Namespace, images: Path, threads: int, batch_size: int = 1
) -> list[str]:
    argv = ["-m", "compressai_lora.utils.eval_model", "checkpoint", str(images)]
    argv += ["-a", args.architecture, "-p", str(args.checkpoint)]
    argv += ["--preset", args.preset, "--threads", str(threads)]
    if batch_size > 1:
        argv += ["--batch-size", str(batch_size)]
    for flag in ("refine_steps", "adapt_steps"):
        if getattr(args, flag) is not None:
            argv += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    return argv


def timed(cmd: list[str]) -> tuple[float, dict]:
    """Wall seconds of ``cmd`` and the JSON it prints."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return wall, json.loads(proc.stdout)


def main(argv: list[str]) -> None:
    args = setup_args().parse_args(argv)
    if args.threads < args.procs or args.threads % args.procs:
        sys.exit(f"--threads {args.threads} must be a multiple of --procs {args.procs}")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        n = crops(args, work / "images")
        python = [sys.executable]
        modes = {
            f"1 process x {args.threads} threads": python
            + eval_args(args, work / "images", args.threads),
            f"torchrun {args.procs} x {args.threads // args.procs} thread(s)": python
            + ["-m", "torch.distributed.run", "--standalone"]
            + ["--nproc-per-node", str(args.procs)]
            + eval_args(args, work / "images", args.threads // args.procs),
        }
        if args.batch_size > 1:
            modes[f"1 process x {args.threads} threads, batch {args.batch_size}"] = (
                python + eval_args(args, work / "images", args.threads, args.batch_size)
            )
        walls: dict[str, list[float]] = {m: [] for m in modes}
        results: dict[str, dict] = {}
        for r in range(args.rounds):
            for mode, cmd in modes.items():
                wall, results[mode] = timed(cmd)
                walls[mode].append(wall)
                print(f"round {r + 1}: {mode}: {wall:.1f} s", file=sys.stderr)
    print(
        f"{n} image(s), {args.crop} px crops, {args.architecture}, "
        f"preset {args.preset}, {args.checkpoint.name}"
    )
    print(f"| mode | wall s (mean of {args.rounds}) | images/hour | bpp | PSNR |")
    print("|---|---|---|---|---|")
    rates = {}
    for mode in modes:
        wall = sum(walls[mode]) / len(walls[mode])
        rates[mode] = n * 3600 / wall
        res = results[mode]["results"]
        print(
            f"| {mode} | {wall:.1f} | {rates[mode]:.0f} | {res['bpp'][0]:.4f} "
            f"| {res['psnr-rgb'][0]:.2f} |"
        )
    one, *others = rates.values()
    for mode, rate in zip(list(modes)[1:], others):
        print(f"ratio ({mode} / one process): {rate / one:.2f}x images per hour")


if __name__ == "__main__":
    main(sys.argv[1:])
