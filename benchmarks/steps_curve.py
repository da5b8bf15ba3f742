"""Real RD cost against encoder steps: does more encoder time give a better file?

For every image of a set and every schedule (``fast``, ``default``, ``medium``,
300+300, ``slow``, 1000+1000, ``paper`` by default, in order of encoder time),
encode with a ``-lora`` model, decode for real and report
``J = bpp + lambda * 255^2 * MSE`` (bytes from the range coder, distortion from
the decoder's 8-bit output), its change against the base codec, what was sent
and the encoding time.  Each (code, image, schedule) job runs in its own
process; ``--code`` adds another checkout (for example today's main) so that
both are measured in the same run.  Results are cached per job in ``--out``
(rerun to resume) under a key of what decides the bytes: the hash of the
checkout's code that the job runs (the package outside its tools, without
``adapt/config.py``), the resolved ``AdaptConfig``, the hashes of image and
checkpoint, torch's version and the CPU (its model and the instruction set
torch's kernels use: an AVX2 and an AVX-512 machine round differently, and an
adaptation of hundreds of steps amplifies that into other bytes); a cached job
whose key differs runs again, so a cache can be kept in a working folder and
resumed later on the same kind of machine.  The caches (``OUT/jobs/``) and the
dev-set crops (``OUT/images/``) are not for git (``.gitignore``); what a run
leaves to commit is its summary, ``OUT/steps_curve.md`` (the tables) and
``OUT/steps_curve.json`` (every cell's result with its job's key), one file
each per run.

    python benchmarks/steps_curve.py --dev-set --out steps-out \\
        --checkpoint ../shared/weights/cheng2020-attn-N64-q3.pth.tar --jobs 2
    python benchmarks/steps_curve.py --images a.png b.png --schedules fast 300+300 \\
        --code main=/path/to/main/checkout --out steps-out
    python benchmarks/steps_curve.py --dev-set --out steps-out \\
        --cached-only    # the table of what is cached, nothing run

``--reuse new=main:fast,slow`` fills ``new``'s cells at those schedules
with ``main``'s jobs (marked ``+``), for a change that runs the same steps
there; check that claim on a few images before you lean on it.

The table flags, per image, where J rose along the schedules by more than 0.5%
against the best shorter schedule, and the schedules that sent no update where
a shorter one sent one.  With ``default`` and ``paper`` both measured, a line
per code gives the share of ``paper``'s mean J gain that ``default`` reaches
and the share of ``paper``'s mean time it takes (the crops with both).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
#: schedule name -> (preset, overrides), in order of encoder time; J should
#: not rise along it.  300+300, ``slow``, 1000+1000 and ``paper`` are one
#: trajectory (same rates, same annealing spans) cut short or continued; they are
#: written as ``paper`` cut short, which a checkout from before ``slow`` has too
SCHEDULES = {
    "fast": ("fast", {}),
    "default": ("default", {}),
    "medium": ("medium", {}),
    "300+300": ("paper", {"refine_steps": 300, "adapt_steps": 300}),
    "slow": ("paper", {"refine_steps": 400, "adapt_steps": 350}),
    "1000+1000": ("paper", {"refine_steps": 1000, "adapt_steps": 1000}),
    "paper": ("paper", {}),
}
OOD = ("pixel", "screen", "line", "vector", "painting", "comic")

_CHILD = r"""
import json, sys, time
import numpy as np, torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
from PIL import Image
from compressai.ops import compute_padding
import compressai_lora
from compressai_lora.adapt import AdaptConfig
from compressai_lora.utils.codec.__main__ import build_model
model, _, _ = build_model("cheng2020-attn-lora", quality=None, metric="mse",
    checkpoint=args["checkpoint"], rank=2, form="separable", device="cpu")
rgb = np.asarray(Image.open(args["image"]).convert("RGB"))
h, w = rgb.shape[:2]
x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255
pad, _ = compute_padding(h, w, min_div=64)
xp = torch.nn.functional.pad(x, pad, value=0)
left, _, top, _ = pad

def code(cfg):
    model.adapt_config = cfg
    padding = getattr(model, "input_padding", None)
    start = time.perf_counter()
    with torch.no_grad():
        if padding:
            with padding(pad):
                out = model.compress(xp)
        else:
            out = model.compress(xp)
        seconds = time.perf_counter() - start
        x_hat = model.decompress(out["strings"], out["shape"])["x_hat"]
    rec = (x_hat[0, :, top:top + h, left:left + w].clamp(0, 1) * 255).round()
    mse = float(((rec - x[0] * 255).double() ** 2).mean())
    n = sum(len(s[0]) for s in out["strings"])
    bpp = 8 * n / (h * w)
    stats = dict(model.last_adaptation)
    return {"bpp": bpp, "psnr": 10 * np.log10(255**2 / max(mse, 1e-10)),
            "J": bpp + args["lmbda"] * mse, "seconds": seconds,
            "choice": stats.get("choice"), "update_bytes": len(out["strings"][-1][0]),
            "open_gates": len(stats.get("open_gates") or []),
            "candidates": stats.get("J"),  # real J of base, refined, update
            "stopped": bool(stats.get("stopped")),  # the budget ended a phase
            "steps": [stats.get("refine_iters"), stats.get("adapt_iters")]}

base = code(AdaptConfig(enabled=False, lmbda=args["lmbda"]))
cfg = AdaptConfig.preset(args["preset"], lmbda=args["lmbda"], seed=args["seed"],
                         threads=args["threads"], **args["overrides"])
print(json.dumps({"base": base, **code(cfg)}))
"""


def dev_set(data: Path, out: Path) -> list[Path]:
    """First 2 sorted images of each out-of-domain domain and of Kodak, 256 px
    centre crops (the bench's subset rule), written to ``out``."""
    sys.path.insert(0, str(ROOT))
    from compressai_lora.utils.bench.subset import plan_subset, write_subset

    ns = argparse.Namespace(full=False, images_per_domain=2, crop=256, data=data)
    subset = plan_subset(ns, ("kodak", *OOD))
    write_subset(data, out, subset)
    return [out / d / e["image"] for d, entries in subset.items() for e in entries]


#: parts of a checkout that a job's bytes do not depend on (the job builds
#: its AdaptConfig itself, not from command-line flags)
_TOOLS = ("utils/bench", "utils/eval_model", "utils/train", "utils/adapt_args.py")


@functools.lru_cache(maxsize=None)
def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@functools.lru_cache(maxsize=None)
def code_hash(code: Path) -> str:
    """Hash of the package files a job runs, less ``adapt/config.py`` (the
    resolved config is keyed instead) and the tools."""
    pkg = Path(code) / "compressai_lora"
    digest = hashlib.sha256(_CHILD.encode())
    for f in sorted(pkg.rglob("*.py")):
        rel = f.relative_to(pkg).as_posix()
        if rel == "adapt/config.py" or rel.startswith(_TOOLS):
            continue
        digest.update(rel.encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()


@functools.lru_cache(maxsize=None)
def _config_module(code: Path):
    """The checkout's ``adapt/config.py`` (it imports nothing of the package,
    so it loads alone)."""
    path = Path(code) / "compressai_lora" / "adapt" / "config.py"
    name = "_steps_curve_config"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def resolved_config(code: Path, job: dict) -> dict:
    """The job's ``AdaptConfig`` as the checkout resolves it."""
    cfg = _config_module(code).AdaptConfig.preset(
        job["preset"],
        lmbda=job["lmbda"],
        seed=job["seed"],
        threads=job["threads"],
        **job["overrides"],
    )
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k != "callback"}


@functools.lru_cache(maxsize=None)
def machine() -> str:
    """The CPU model and the instruction set of torch's CPU kernels."""
    import torch

    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {torch.backends.cpu.get_cpu_capability()}"


def job_key(code: Path, job: dict) -> dict:
    """What decides a job's result (see the module's docstring)."""
    import torch

    return {
        "code": code_hash(code),
        "config": resolved_config(code, job),
        "image": _sha(job["image"]),
        "checkpoint": _sha(job["checkpoint"]),
        "torch": torch.__version__,
        "machine": machine(),
    }


def run_job(code: Path, job: dict, cache: Path, key: dict, cached_only: bool):
    """The job's result, from ``cache`` when its ``key`` matches; else run it
    (or, ``cached_only``, None)."""
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached["result"]
        print(f"stale cache: {cache}", file=sys.stderr)
    if cached_only:
        return None
    env = dict(os.environ, PYTHONPATH=str(code))
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(job)],
        env=env,
        capture_output=True,
        text=True,
        cwd=str(code),
    )
    if proc.returncode:
        raise SystemExit(f"job failed: {job}\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "result": result}, indent=1))
    os.replace(tmp, cache)
    return result


SLACK = 0.005  # J may rise this much (relative) along the schedules


def rises(cells: list, schedules: list[str]) -> list[str]:
    """Steps along ``schedules`` where J rose by more than ``SLACK`` (against
    the lowest J of the shorter schedules measured)."""
    out, best = [], None
    for s, c in zip(schedules, cells):
        if c is None:
            continue
        if best is not None and c["J"] > best[1] * (1 + SLACK):
            out.append(f"{best[0]}->{s} {100 * (c['J'] / best[1] - 1):+.1f}%")
        if best is None or c["J"] < best[1]:
            best = (s, c["J"])
    return out


def dropped(cells: list, schedules: list[str]) -> list[str]:
    """Schedules that sent no update where a shorter one sent one, with what
    that update saved there (its J against the refined latents alone)."""
    out, sent = [], None
    for s, c in zip(schedules, cells):
        if c is None:
            continue
        if c["choice"] == "update":
            sent = (s, c)
        elif sent is not None:
            cand = sent[1]["candidates"]
            gain = 100 * (cand["update"] / cand["refined"] - 1)
            out.append(f"{s} (sent at {sent[0]}: {gain:+.1f}%)")
    return out


def gain_ratio(
    cells: list[tuple[dict, dict]], short: str = "default", long: str = "paper"
) -> Optional[str]:
    """``short`` against ``long`` over ``cells`` (per image, their results):
    the share of ``long``'s mean J gain over the base codec that ``short``
    reaches, and the share of ``long``'s mean time it takes."""
    if not cells:
        return None

    def mean(k: int, f) -> float:
        return sum(f(c[k]) for c in cells) / len(cells)

    gain = [mean(k, lambda c: 1 - c["J"] / c["base"]["J"]) for k in (0, 1)]
    sec = [mean(k, lambda c: c["seconds"]) for k in (0, 1)]
    if gain[1] <= 0 or sec[1] <= 0:
        return None
    return (
        f"{short} against {long} ({len(cells)} images with both): "
        f"{100 * gain[0] / gain[1]:.1f}% of the mean J gain "
        f"({-100 * gain[0]:+.2f}% vs {-100 * gain[1]:+.2f}%) in "
        f"{100 * sec[0] / sec[1]:.1f}% of the mean time "
        f"({sec[0]:.0f} s vs {sec[1]:.0f} s)"
    )


def table(results: dict, images: list[Path], schedules: list[str], codes) -> str:
    """Per code: J against the base codec and seconds per image and schedule
    (``-`` not measured), where J rose along the schedules, and the means."""
    lines = []
    for label in codes:
        lines.append(f"\n### {label}: J vs base (%), seconds; * = no update sent\n")
        head = " | ".join(schedules)
        lines.append(f"| image | base J | {head} | J rises | update dropped |")
        lines.append("|---|---|" + "---|" * (len(schedules) + 2))
        sums = {s: [] for s in schedules}
        for img in images:
            row = [f"{img.parent.name}/{img.stem}"]
            cells = [results.get((label, img, s)) for s in schedules]
            known = [c for c in cells if c is not None]
            row.append(f"{known[0]['base']['J']:.4f}" if known else "-")
            for s, c in zip(schedules, cells):
                if c is None:
                    row.append("-")
                    continue
                mark = ("" if c["choice"] == "update" else "*") + (
                    "+" if "from" in c else ""
                )
                rel = 100 * (c["J"] / c["base"]["J"] - 1)
                sums[s].append((rel, c["seconds"]))
                row.append(f"{rel:+.1f}%{mark} {c['seconds']:.0f}s")
            row.append(", ".join(rises(cells, schedules)) or "none")
            row.append(", ".join(dropped(cells, schedules)) or "none")
            lines.append("| " + " | ".join(row) + " |")
        mean = ["mean (images)", ""]
        for s in schedules:
            v = sums[s]
            if not v:
                mean.append("-")
                continue
            rel, sec = (sum(x) / len(v) for x in zip(*v))
            mean.append(f"{rel:+.2f}% {sec:.0f}s ({len(v)})")
        lines.append("| " + " | ".join(mean) + " | | |")
        if "default" in schedules and "paper" in schedules:
            pairs = [
                (results[label, img, "default"], results[label, img, "paper"])
                for img in images
                if (label, img, "default") in results
                and (label, img, "paper") in results
            ]
            ratio = gain_ratio(pairs)
            if ratio:
                lines.append(f"\n{ratio}")
        lent = sorted(
            {c["from"] for k, c in results.items() if k[0] == label and "from" in c}
        )
        for other in lent:
            lines.append(f"\n+ = {other}'s job (`--reuse`: the same steps there)")
    return "\n".join(lines) + "\n"


def summary(results: dict, keys: dict) -> list[dict]:
    """``steps_curve.json``'s rows: one per cell, with the key of the job that
    made it (a reused cell carries its lender's), so that the file alone says
    which code, config, image, checkpoint, torch and CPU each figure is from."""
    return [
        {
            "code": k[0],
            "image": str(k[1]),
            "schedule": k[2],
            **v,
            "key": keys.get((v.get("from", k[0]), k[1], k[2])),
        }
        for k, v in results.items()
    ]


def parse_reuse(items: list[str], codes: dict, schedules: list[str], p) -> dict:
    """``--reuse`` as {(label, schedule): other}."""
    out = {}
    for item in items:
        label, _, rest = item.partition("=")
        other, _, names = rest.partition(":")
        if label not in codes or other not in codes or label == other:
            p.error(f"--reuse {item}: give two different measured labels")
        for s in filter(None, names.split(",")):
            if s not in schedules:
                p.error(f"--reuse {item}: schedule {s} is not measured")
            out[label, s] = other
    return out


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", nargs="*", type=Path, default=[])
    p.add_argument("--dev-set", action="store_true", help="the shared dev set")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--schedules", nargs="+", default=list(SCHEDULES))
    p.add_argument(
        "--checkpoint",
        default=str(DATA.parent / "weights/cheng2020-attn-N64-q3.pth.tar"),
    )
    p.add_argument("--lmbda", type=float, default=0.0067)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--jobs", type=int, default=1, help="processes at a time")
    p.add_argument(
        "--code",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="another checkout to measure in the same run",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL=KEY=VALUE[,KEY=VALUE]",
        help="this checkout with AdaptConfig overrides (JSON values), e.g. "
        'const=lr_schedule="constant"',
    )
    p.add_argument(
        "--reuse",
        action="append",
        default=[],
        metavar="LABEL=OTHER:SCHEDULE[,SCHEDULE]",
        help="LABEL's cells at these schedules are OTHER's jobs, marked + in the "
        "table (for a code that runs the same steps there: check it on a few)",
    )
    p.add_argument("--skip-this", action="store_true", help="only the --code ones")
    p.add_argument(
        "--cached-only",
        action="store_true",
        help="run nothing: tabulate the jobs cached in --out",
    )
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    unknown = [s for s in args.schedules if s not in SCHEDULES]
    if unknown:
        p.error(f"unknown schedules {unknown}; choose from {list(SCHEDULES)}")
    images = list(args.images)
    if args.dev_set:
        images += dev_set(args.data, args.out / "images")
    if not images:
        p.error("give --images or --dev-set")
    codes = {} if args.skip_this else {"this": ROOT}
    extra: dict[str, dict] = {label: {} for label in codes}
    for item in args.code:
        label, _, path = item.partition("=")
        codes[label], extra[label] = Path(path).resolve(), {}
    for item in args.variant:
        label, _, settings = item.partition("=")
        codes[label], extra[label] = ROOT, {}
        for pair in filter(None, settings.split(",")):
            key, _, value = pair.partition("=")
            extra[label][key] = json.loads(value)
    reuse = parse_reuse(args.reuse, codes, args.schedules, p)
    jobs = []
    for label, code in codes.items():
        for img in images:
            for s in args.schedules:
                if (label, s) in reuse:
                    continue
                preset, overrides = SCHEDULES[s]
                job = {
                    "image": str(img.resolve()),
                    "checkpoint": args.checkpoint,
                    "lmbda": args.lmbda,
                    "seed": args.seed,
                    "threads": args.threads,
                    "preset": preset,
                    "overrides": {**overrides, **extra[label]},
                }
                cache = (
                    args.out / "jobs" / label / f"{img.parent.name}-{img.stem}-{s}.json"
                )
                # keyed here, in one thread: loading config.py is not thread-safe
                jobs.append(((label, img, s), code, job, cache, job_key(code, job)))
    # interleave the codes so that both see the same machine load
    jobs.sort(key=lambda j: (args.schedules.index(j[0][2]), str(j[0][1]), j[0][0]))
    with ThreadPoolExecutor(args.jobs) as pool:
        done = list(pool.map(lambda j: run_job(*j[1:], args.cached_only), jobs))
    results = {j[0]: r for j, r in zip(jobs, done) if r is not None}
    for (label, s), other in reuse.items():
        for img in images:
            if (other, img, s) in results:
                results[label, img, s] = {**results[other, img, s], "from": other}
    text = table(results, images, args.schedules, codes)
    (args.out / "steps_curve.md").write_text(text)
    keys = {j[0]: j[4] for j in jobs}
    (args.out / "steps_curve.json").write_text(
        json.dumps(summary(results, keys), indent=1)
    )
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
