"""Real J and seconds per image on a GPU against the same runs on the CPU.

For a few dev crops (one Kodak, one per out-of-domain domain given) and the
presets ``fast``, ``default`` and ``paper``, encode with cheng2020-attn-lora
(the project's N=64 q3 weights), decode for real in the same process and
report ``J = bpp + lambda * 255^2 * MSE`` against the base codec and the
encoding seconds, on ``cuda`` and on the CPU (all its cores).  Runs go in
order of expected time and a run is skipped (and said so) when the time
already measured says it would end after ``--limit`` seconds, so that the
whole script fits a short lease of a GPU machine.  Writes ``--out``
(JSON, every run) and prints the table.

    python benchmarks/gpu_speed.py --data ../shared/data --out gpu_speed.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import steps_curve as sc  # noqa: E402

import compressai_lora  # noqa: E402,F401  (registers the -lora models)
from compressai_lora.adapt import AdaptConfig  # noqa: E402
from compressai_lora.utils.codec.__main__ import build_model  # noqa: E402
from compressai_lora.utils.distributed import cpu_count  # noqa: E402

PRESETS = ("fast", "default", "paper")
#: rough encoder time of each preset against ``fast`` (to plan the runs)
WEIGHT = {"fast": 1, "default": 2, "paper": 45}


def code(model, x: torch.Tensor, cfg: AdaptConfig, lmbda: float) -> dict:
    """Encode ``x`` (1x3xHxW, sides multiples of 64), decode, real J."""
    model.adapt_config = cfg
    dev = next(model.parameters()).device
    if dev.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        out = model.compress(x.to(dev))
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        x_hat = model.decompress(out["strings"], out["shape"])["x_hat"].cpu()
    rec = (x_hat.clamp(0, 1) * 255).round()
    mse = float(((rec - x * 255).double() ** 2).mean())
    n = sum(len(s[0]) for s in out["strings"])
    bpp = 8 * n / (x.size(-2) * x.size(-1))
    return {
        "J": bpp + lmbda * mse,
        "bpp": bpp,
        "psnr": 10 * math.log10(255**2 / max(mse, 1e-10)),
        "seconds": seconds,
        "choice": model.last_adaptation.get("choice"),
    }


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=sc.DATA)
    p.add_argument("--domains", nargs="+", default=["kodak", "pixel", "screen"])
    p.add_argument(
        "--checkpoint",
        default=str(sc.DATA.parent / "weights/cheng2020-attn-N64-q3.pth.tar"),
    )
    p.add_argument("--lmbda", type=float, default=0.0067)
    p.add_argument("--limit", type=float, default=540, help="seconds for all runs")
    p.add_argument("--workdir", type=Path, default=Path("gpu-speed-images"))
    p.add_argument("--out", type=Path, default=Path("gpu_speed.json"))
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    devices = (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]
    if devices == ["cpu"]:
        print("no GPU here: CPU runs only", file=sys.stderr)
    torch.set_num_threads(cpu_count())
    crops = [
        i for i in sc.dev_set(args.data, args.workdir) if i.parent.name in args.domains
    ]
    images = {}
    for path in crops[::2]:  # the first crop of each domain
        rgb = np.asarray(Image.open(path).convert("RGB"))
        images[path] = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255
    models = {
        d: build_model(
            "cheng2020-attn-lora", quality=None, metric="mse",
            checkpoint=args.checkpoint, rank=2, form="separable", device=d,
        )[0]
        for d in devices
    }  # fmt: skip
    rows, unit = [], {}  # seconds of one fast run per device (the plan's unit)
    for preset in PRESETS:
        for dev in devices:
            for path, x in images.items():
                guess = unit.get(dev, 0) * WEIGHT[preset]
                left = args.limit - (time.perf_counter() - t0)
                row = {"device": dev, "preset": preset, "image": path.name}
                if guess > left:
                    rows.append(
                        {**row, "skipped": f"~{guess:.0f} s, {left:.0f} s left"}
                    )
                    print(rows[-1], flush=True)
                    continue
                model = models[dev]
                base = code(model, x, AdaptConfig(enabled=False), args.lmbda)
                cfg = AdaptConfig.preset(preset, lmbda=args.lmbda, seed=0)
                r = code(model, x, cfg, args.lmbda)
                if preset == "fast":
                    unit[dev] = max(unit.get(dev, 0), r["seconds"])
                row.update(r, gain=100 * (r["J"] / base["J"] - 1))
                rows.append(row)
                print(json.dumps(row), flush=True)
    args.out.write_text(json.dumps(rows, indent=1))
    print(table(rows, devices))


def table(rows: list[dict], devices: list[str]) -> str:
    """Mean J gain and seconds per image, per preset and device."""
    name = torch.cuda.get_device_name(0) if "cuda" in devices else "no GPU"
    lines = [
        f"GPU: {name}; CPU: {sc.machine()}, {cpu_count()} threads\n",
        "| preset | " + " | ".join(devices) + " |",
        "|---|" + "---|" * len(devices),
    ]
    for preset in PRESETS:
        cells = []
        for dev in devices:
            done = [r for r in rows if (r["preset"], r["device"]) == (preset, dev)]
            ok = [r for r in done if "gain" in r]
            if not ok:
                cells.append("skipped")
                continue
            gain = sum(r["gain"] for r in ok) / len(ok)
            sec = sum(r["seconds"] for r in ok) / len(ok)
            cells.append(f"{gain:+.2f}% {sec:.1f} s ({len(ok)}/{len(done)} images)")
        lines.append(f"| {preset} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
