"""Peak memory of ``compressai-lora encode``/``decode`` on a large image (CPU).

Each measurement runs the codec's ``main()`` in a fresh process and reports
that process's peak resident set size (``resource.getrusage().ru_maxrss``);
a 64x64 run of the same model gives the fixed part (Python, torch, compressai,
the model), so ``peak - fixed`` is what the image costs.  The model is a
randomly initialized small-N model saved as a checkpoint (published weights
are not needed: memory depends on N, M and the image size, not on the values).

    python benchmarks/codec_memory.py        # 3840x2160, cheng2020-attn-lora, N=16
    python benchmarks/codec_memory.py --arch bmshj2018-hyperprior-lora --N 16
    python benchmarks/codec_memory.py --width 1920 --height 1080 -- --refine-steps 2

Arguments after ``--`` go to ``encode`` (e.g. adaptation flags; default
``--no-adapt``).  Prints one JSON object.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a source tree
SAMPLE = ROOT / "samples" / "colored-circles_72dpi.png"

_CHILD = """
import resource, sys, time
from compressai_lora.utils.codec.__main__ import main
start = time.perf_counter()
try:
    main(sys.argv[1:])
finally:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(f"@@ {rss} {time.perf_counter() - start:.2f}", file=sys.stderr)
"""


def _measure(argv: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of ``main(argv)`` in a fresh process."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, *argv], env=env, capture_output=True, text=True
    )
    if proc.returncode:
        raise SystemExit(f"codec failed: {proc.stderr.strip().splitlines()[-2:]}")
    line = [s for s in proc.stderr.splitlines() if s.startswith("@@ ")][-1]
    kib, seconds = line.split()[1:]
    return int(kib) / 1024, float(seconds)


def _checkpoint(arch: str, n: int, path: Path) -> None:
    import torch
    from compressai.zoo.image import model_architectures

    import compressai_lora  # noqa: F401

    torch.manual_seed(0)
    cls = model_architectures[arch]
    net = cls(n) if arch.startswith("cheng2020") else cls(n, n)
    net.update(force=True)
    torch.save({"state_dict": net.state_dict(), "meta": {"lmbda": 0.0067}}, path)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="cheng2020-attn-lora")
    parser.add_argument("--N", type=int, default=16, help="channels N (= M)")
    parser.add_argument("--width", type=int, default=3840)
    parser.add_argument("--height", type=int, default=2160)
    parser.add_argument("encode_args", nargs="*", help="extra encode flags")
    args = parser.parse_args(argv)
    encode_args = args.encode_args or ["--no-adapt"]

    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        ckpt = d / "model.pth"
        _checkpoint(args.arch, args.N, ckpt)
        with Image.open(SAMPLE) as im:
            im.convert("RGB").resize((args.width, args.height)).save(d / "big.png")
            im.convert("RGB").resize((64, 64)).save(d / "tiny.png")
        result = {
            "arch": args.arch,
            "N": args.N,
            "image": f"{args.width}x{args.height}",
            "encode_args": encode_args,
            "torch_threads": None,
        }
        common = ["-a", args.arch, "-p", str(ckpt), *encode_args]
        fixed, _ = _measure(
            ["encode", str(d / "tiny.png"), "-o", str(d / "t.clr")] + common
        )
        start = time.perf_counter()
        enc, enc_s = _measure(
            ["encode", str(d / "big.png"), "-o", str(d / "b.clr")] + common
        )
        dec, dec_s = _measure(
            ["decode", str(d / "b.clr"), "-o", str(d / "b.png"), "-p", str(ckpt)]
        )
        import torch

        result.update(
            torch_threads=torch.get_num_threads(),
            fixed_mib=round(fixed),
            encode_peak_mib=round(enc),
            decode_peak_mib=round(dec),
            encode_image_mib=round(enc - fixed),
            decode_image_mib=round(dec - fixed),
            encode_s=enc_s,
            decode_s=dec_s,
            wall_s=round(time.perf_counter() - start, 1),
            bytes=(d / "b.clr").stat().st_size,
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
