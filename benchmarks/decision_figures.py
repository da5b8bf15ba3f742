"""The figures behind every gate decision of one adaptation run.

``last_adaptation`` keeps the figures of the decision that stood; this script
records every decision of a run (a retry overwrites the stats): for each, the
refined latents' real ``J``, the warm update's real bytes and distortion at
the training step, its nonzero symbols and differentiable bits per layer, the
real ``J`` at every step code the decision tries, each layer's ``dJ``, and
the real ``J`` and bytes of every checkpoint after it.
Use it to see why an update was or was not sent, e.g. on the images where a
short schedule sends an update and a longer one does not:

    python benchmarks/decision_figures.py IMAGE \\
        --checkpoint ../shared/weights/cheng2020-attn-N64-q3.pth.tar \\
        --preset paper --set refine_steps=300 adapt_steps=300

One JSON line per decision, then one for the run (its choice and real ``J``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set takes KEY=VALUE, got {item!r}")
        out[key] = json.loads(value)
    return out


@contextlib.contextmanager
def record_decisions(out: list[dict]) -> Iterator[None]:
    """Within the block, each gate decision appends its figures to ``out``
    (``ImageUpdate.choose_step`` and ``decide`` wrapped, restored after)."""
    from compressai_lora.adapt import update as U
    from compressai_lora.priors import tensor_bits

    choose, decide = U.ImageUpdate.choose_step, U.ImageUpdate.decide
    better = U.ImageUpdate.better

    def choose_step(self):
        with torch.no_grad():
            warm = self.real(self.open)
            layers = {}
            for i in self.open:
                q = [torch.round(v / self.step) for v in self.factors[i].values()]
                layers[self.names[i]] = {
                    "nonzero": int(sum((t != 0).sum() for t in q)),
                    "bits": round(float(sum(tensor_bits(t) for t in q)), 1),
                }
        refined, t = self.refined, self.target
        out.append(
            {
                "step": self.decide_at,
                "refined_J": refined.J,
                "warm_update_bytes": 0 if warm is None else len(warm.update),
                "warm_update_bpp": 0 if warm is None else warm.bpp - refined.bpp,
                "warm_distortion_gain": 0
                if warm is None
                else t.lmbda * (refined.dist - warm.dist),
                "layers": layers,
            }
        )
        result = choose(self)
        out[-1]["step_J"] = self.stats["step_J"]
        out[-1]["step_code"] = self.step_code
        return result

    def decide_(self):
        result = decide(self)
        out[-1]["dJ"] = {k: v["dJ"] for k, v in self.stats["gates"].items()}
        out[-1]["open"] = [self.names[i] for i in self.open]
        out[-1]["J"] = None if result is None else result.J
        return result

    def better_(self):
        c = self.real(self.open)
        if c is not None:  # the checkpoint's own real J and bytes
            out[-1].setdefault("checkpoints", []).append([c.J, len(c.update)])
        self.real = lambda layers, code=None: c  # coded once, not again
        try:
            return better(self)
        finally:
            del self.real

    U.ImageUpdate.choose_step, U.ImageUpdate.decide = choose_step, decide_
    U.ImageUpdate.better = better_
    try:
        yield
    finally:
        U.ImageUpdate.choose_step, U.ImageUpdate.decide = choose, decide
        U.ImageUpdate.better = better


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("image", type=Path)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--model", default="cheng2020-attn-lora")
    p.add_argument("--preset", default="default")
    p.add_argument("--set", nargs="*", default=[], help="AdaptConfig KEY=VALUE")
    p.add_argument("--lmbda", type=float, default=0.0067)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    from compressai.ops import compute_padding
    from PIL import Image

    from compressai_lora.adapt import AdaptConfig
    from compressai_lora.utils.codec.__main__ import build_model

    model, _, _ = build_model(
        args.model,
        quality=None,
        metric="mse",
        checkpoint=str(args.checkpoint),
        rank=2,
        form="separable",
        device="cpu",
    )
    rgb = np.asarray(Image.open(args.image).convert("RGB"))
    h, w = rgb.shape[:2]
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255
    pad, _ = compute_padding(h, w, min_div=64)
    xp = torch.nn.functional.pad(x, pad, value=0)
    model.adapt_config = AdaptConfig.preset(
        args.preset,
        lmbda=args.lmbda,
        threads=args.threads,
        **_parse_set(args.set),
    )
    decisions: list[dict] = []
    start = time.perf_counter()
    with record_decisions(decisions), torch.no_grad(), model.input_padding(pad):
        model.compress(xp)
    seconds = time.perf_counter() - start
    for d in decisions:
        print(json.dumps(d))
    stats = model.last_adaptation
    run = {k: stats.get(k) for k in ("choice", "J", "open_gates", "step_code")}
    print(json.dumps({**run, "decisions": len(decisions), "seconds": seconds}))


if __name__ == "__main__":
    main(sys.argv[1:])
