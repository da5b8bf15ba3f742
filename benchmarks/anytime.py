"""The best file for the time given: real RD gain against the encoder's budget.

Each dev crop is encoded by this checkout with ``time_budget`` = B for every
B of ``--budgets`` and by another checkout (``--main``, e.g. today's main)
at ``--factor`` times each B, one process and one torch thread per job, the
jobs of both interleaved so that they see the same machine load.  The table
gives, per budget, the mean real J gain over the base codec (bytes from the
range coder, distortion from the decoder's output) of both and whether this
checkout at B reaches main at ``factor`` x B.  ``--presets`` adds runs without
a budget (each code's own preset, e.g. ``default``) with their mean seconds,
so that the table also says how much of main's time this checkout takes for
its gain.  Jobs are cached and keyed like ``steps_curve.py``'s (rerun to
resume); a run leaves ``anytime.md`` and ``anytime.json`` in ``--out``.

    python benchmarks/anytime.py --dev-set --data ../shared/data --jobs 2 \\
        --main /path/to/main/checkout --out anytime-out
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import steps_curve as sc  # noqa: E402

CODES = ("this", "main")


def gain(cell: dict) -> float:
    """Real J gain over the base codec, in percent (negative: cheaper)."""
    return 100 * (cell["J"] / cell["base"]["J"] - 1)


def _mean(cells: list[dict], f) -> float:
    return sum(f(c) for c in cells) / len(cells)


def _versus(this: list[dict], main: list[dict]) -> str:
    """Mean gain and seconds of both, whether this reaches main, on how many
    images (table cells)."""
    g = [_mean(c, gain) for c in (this, main)]
    t = [_mean(c, lambda c: c["seconds"]) for c in (this, main)]
    stop = sum(c["stopped"] for c in main)
    wins = sum(gain(a) <= gain(b) for a, b in zip(this, main))
    return (
        f"{g[0]:+.2f}% ({t[0]:.0f} s) | {g[1]:+.2f}% ({t[1]:.0f} s, {stop} stopped "
        f"by the budget) | {'yes' if g[0] <= g[1] else 'no'} | {wins}/{len(this)}"
    )


def table(results: dict, images: list[Path], args) -> str:
    """The anytime table, the presets' line and the per-image figures."""
    lines = [
        f"mean real J vs base over {len(images)} images "
        f"(seconds: mean encode time per image)\n",
        f"| budget B | this @ B | main @ {args.factor:g}B | this >= main "
        "| images this >= main |",
        "|---|---|---|---|---|",
    ]
    for b in args.budgets:
        this = [results.get(("this", i, f"{args.preset}@{b:g}")) for i in images]
        main = [
            results.get(("main", i, f"{args.preset}@{args.factor * b:g}"))
            for i in images
        ]
        if None in this or None in main:
            lines.append(f"| {b:g} s | - | - | - | - |")
            continue
        lines.append(f"| {b:g} s | " + _versus(this, main) + " |")
    same = [  # budgets both codes ran: the plan against main's cut
        n for n in sorted({k[2] for k in results if k[0] == "this"}, key=_order)
        if all(results.get((c, i, n)) for c in CODES for i in images)
    ]  # fmt: skip
    for n in same:
        this, main = ([results[c, i, n] for i in images] for c in CODES)
        lines.append(f"\nthe same budget, `{n}`: this / main | {_versus(this, main)}")
    for preset in args.presets:
        cells = [[results.get((c, i, preset)) for i in images] for c in CODES]
        if any(None in c for c in cells):
            continue
        g = [_mean(c, gain) for c in cells]
        t = [_mean(c, lambda c: c["seconds"]) for c in cells]
        lines.append(
            f"\n`{preset}` without a budget: this {g[0]:+.2f}% in {t[0]:.0f} s, main "
            f"{g[1]:+.2f}% in {t[1]:.0f} s: time ratio {t[0] / t[1]:.2f}"
        )
    names = sorted({k[2] for k in results}, key=_order)
    lines += ["", "| image | " + " | ".join(names) + " |"]
    lines.append("|---|" + "---|" * len(names))
    for img in images:
        row = [f"{img.parent.name}/{img.stem[:24]}"]
        for n in names:
            cells = [results.get((code, img, n)) for code in CODES]
            row.append(
                " / ".join(
                    "-" if c is None else f"{gain(c):+.1f}% {c['seconds']:.0f}s"
                    for c in cells
                )
            )
        lines.append("| " + " | ".join(row) + " |")
    lines.append("\ncells: this / main")
    return "\n".join(lines) + "\n"


def _order(name: str) -> tuple:
    preset, _, budget = name.partition("@")
    return (1, 0) if not budget else (0, float(budget))


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", nargs="*", type=Path, default=[])
    p.add_argument("--dev-set", action="store_true", help="the shared dev set")
    p.add_argument("--data", type=Path, default=sc.DATA)
    p.add_argument("--main", type=Path, required=True, help="the checkout to beat")
    p.add_argument("--budgets", nargs="+", type=float, default=[15, 30, 60])
    p.add_argument("--factor", type=float, default=4, help="main's budget over ours")
    p.add_argument("--preset", default="default", help="the preset both budget")
    p.add_argument(
        "--presets", nargs="*", default=["default"], help="also run without budget"
    )
    p.add_argument(
        "--checkpoint",
        default=str(sc.DATA.parent / "weights/cheng2020-attn-N64-q3.pth.tar"),
    )
    p.add_argument("--lmbda", type=float, default=0.0067)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="processes at a time")
    p.add_argument("--only", choices=CODES, help="run this code's jobs alone")
    p.add_argument("--cached-only", action="store_true", help="tabulate the cache")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if any(b <= 0 for b in args.budgets) or args.factor <= 0:
        p.error("budgets and --factor must be positive")
    images = list(args.images)
    if args.dev_set:
        images += sc.dev_set(args.data, args.out / "images")
    if not images:
        p.error("give --images or --dev-set")
    runs = {"this": [], "main": []}  # (name, preset, budget)
    for b in args.budgets:
        runs["this"].append((f"{args.preset}@{b:g}", args.preset, b))
        m = args.factor * b
        runs["main"].append((f"{args.preset}@{m:g}", args.preset, m))
    for preset in args.presets:
        for code in runs:
            runs[code].append((preset, preset, None))
    codes = {"this": sc.ROOT, "main": args.main.resolve()}
    if args.only:
        runs = {args.only: runs[args.only]}
    jobs = []
    for code, items in runs.items():
        for img in images:
            for name, preset, budget in items:
                job = {
                    "image": str(img.resolve()),
                    "checkpoint": args.checkpoint,
                    "lmbda": args.lmbda,
                    "seed": args.seed,
                    "threads": 1,
                    "preset": preset,
                    "overrides": {} if budget is None else {"time_budget": budget},
                }
                stem = f"{img.parent.name}-{img.stem}-{name}.json"
                cache = args.out / "jobs" / code / stem
                key = sc.job_key(codes[code], job)
                jobs.append(((code, img, name), codes[code], job, cache, key))
    jobs.sort(key=lambda j: (str(j[0][1]), j[0][2], j[0][0]))  # codes interleaved
    with ThreadPoolExecutor(args.jobs) as pool:
        done = list(pool.map(lambda j: sc.run_job(*j[1:], args.cached_only), jobs))
    results = {j[0]: r for j, r in zip(jobs, done) if r is not None}
    text = table(results, images, args)
    rows = [
        {"code": k[0], "image": str(k[1]), "run": k[2], **results[k], "key": key}
        for k, _, _, _, key in jobs
        if k in results
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "anytime.md").write_text(text)
    (args.out / "anytime.json").write_text(json.dumps(rows, indent=1))
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
