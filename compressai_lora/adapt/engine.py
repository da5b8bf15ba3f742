"""Per-image adaptation inside ``compress()`` (Lv et al., ACM MM 2023).

:func:`adapt_batch` is the method: the base codec, then (1) latent refinement
with SGA, every adapted layer's update training along (:mod:`.refine`), (2)
the gated low-rank decoder update on the ``y_hat`` the real decoder sees, from
the update of (1) (:mod:`.update`), both in one loop
(:mod:`.loop`), and (3) never worse: base, refined-only and refined + update
are coded for real and the lowest RD cost ``J`` is sent (:mod:`.candidates`).
Images of one size can be adapted together: the steps run on the batch,
everything else per image.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor

from ..latents import analyse
from ..padding import Padding, own_pixels, pad_to_multiple, per_image_paddings
from .candidates import Candidate, Target, latent_candidate
from .config import AdaptConfig
from .heap import kept_heap
from .loop import Deadline, run_phase
from .refine import Refinement
from .update import UpdatePhase

__all__ = ["adapt_batch", "adapt_images", "frozen", "torch_threads"]


@contextlib.contextmanager
def torch_threads(n: Optional[int]) -> Iterator[None]:
    """Use ``n`` threads inside and restore afterwards (None: leave torch's setting)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """Network weights need no gradient while adapting; restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def adapt_images(
    model,
    x: Tensor,
    cfg: AdaptConfig,
    callback: Optional[Callable] = None,
    paddings: Sequence = (0, 0, 0, 0),
) -> list[tuple[Candidate, dict[str, Any]]]:
    """Adapt to each image of ``x`` (Bx3xHxW), ``cfg.batch_size`` at a time:
    each image's cheapest candidate and stats.  ``paddings``: one for every
    image or one per image.  The callback's ``"image"`` is the index in ``x``.
    """
    if x.dim() != 4:
        raise ValueError(f"expected Bx3xHxW images, got shape {tuple(x.shape)}")
    pads = per_image_paddings(paddings, x.size(0))
    cb = callback or cfg.callback
    out: list[tuple[Candidate, dict[str, Any]]] = []
    for start in range(0, x.size(0), cfg.batch_size):
        chunk = x[start : start + cfg.batch_size]
        chunk_cb = cb
        if cb and x.size(0) > 1:  # name the image in x
            chunk_cb = lambda i, s=start: cb({**i, "image": i.get("image", 0) + s})  # noqa: E731
        out += adapt_batch(
            model, chunk, cfg, chunk_cb, pads[start : start + len(chunk)]
        )
    return out


def _run(phase, model, cfg: AdaptConfig, seconds: Optional[float], cb) -> int:
    """Run ``phase`` with gradients on and the network frozen; its steps."""
    with torch.enable_grad(), frozen(model), torch_threads(cfg.threads):
        return run_phase(phase, Deadline(seconds), cb)


def _targets(model, x: Tensor, cfg: AdaptConfig, paddings) -> list[Target]:
    """Each image's own pixels and RD trade-off (the input checked)."""
    if x.dim() != 4 or x.size(0) < 1:
        raise ValueError(
            f"adaptation needs a batch of images, got input of shape "
            f"{tuple(x.shape)} (expected Bx3xHxW)"
        )
    if not torch.isfinite(x).all():
        raise ValueError("input image contains NaN or inf")
    lmbda = cfg.lmbda if cfg.lmbda is not None else model.default_lmbda
    if lmbda is None:
        raise ValueError(
            "adaptation needs lambda: set AdaptConfig(lmbda=...) (models built "
            "from a checkpoint do not know their quality level)"
        )
    pads = paddings or [(0, 0, 0, 0)] * x.size(0)
    return [Target(i, at, float(lmbda), cfg.metric) for i, at in own_pixels(x, pads)]


def adapt_batch(
    model,
    x: Tensor,
    cfg: AdaptConfig,
    callback: Optional[Callable] = None,
    paddings: Optional[Sequence[Padding]] = None,
) -> list[tuple[Candidate, dict[str, Any]]]:
    """Adapt ``model`` to the images of ``x`` (Bx3xHxW) together: per image,
    the cheapest candidate and its stats.

    Each image gets its unbatched result up to float rounding; only the steps
    run on the batch.  ``paddings``: per image, the caller's (left, right,
    top, bottom) padding, left out of the loss and the RD cost.  A batch
    shares the wall time and the budget.  Large blocks stay in the heap
    meanwhile (:func:`.heap.kept_heap`).
    """
    with kept_heap():
        return _adapt(model, x, cfg, callback, paddings)


def _adapt(model, x, cfg, callback, paddings):
    targets = _targets(model, x, cfg, paddings)
    xp = pad_to_multiple(x, model.downsampling_factor)
    cb, budget, size = callback or cfg.callback, cfg.time_budget, len(targets)
    stats = [{"lmbda": t.lmbda, "diverged": [], "stopped": []} for t in targets]
    # 0. the base codec
    base = [_base(model, t, xp[n : n + 1], stats[n]) for n, t in enumerate(targets)]
    refined, updates, t0 = list(base), [None] * size, time.perf_counter()
    starts, warm = None, 0
    # 1. latent refinement (SGA), the update of every layer training along
    if cfg.refine_steps > 0:
        y0, z0 = [c.y for c in base], [c.z for c in base]
        phase = Refinement(model, targets, y0, z0, cfg)
        share = cfg.refine_steps / (cfg.refine_steps + cfg.adapt_steps)
        # its share of the budget less the refined latents' real coding, which
        # costs what the base codec's did
        coding = sum(st["base_time"] for st in stats)
        seconds = None if budget is None else max(budget * share - coding, 0.0)
        warm = _run(phase, model, cfg, seconds, cb)
        starts = phase.trained_updates()
        for n, s in enumerate(phase.states):
            c = latent_candidate(model, "refined", targets[n], xp[n : n + 1], *s.best)
            refined[n] = c
            _record(stats[n], s, refine_loss=s.best_loss, refine_iters=s.iters)
    refine_time = time.perf_counter() - t0
    # 2. the gated low-rank decoder update, on the refined latents
    if cfg.adapt_steps > 0:
        phase = UpdatePhase(model, refined, targets, cfg, starts, warm)
        left = None if budget is None else max(budget - refine_time, 0.0)
        _run(phase, model, cfg, left, cb)
        for n, s in enumerate(phase.states):
            updates[n] = s.result()
            _record(stats[n], s, **s.report())
    adapt_time = time.perf_counter() - t0 - refine_time
    # 3. never worse: the lowest real RD cost is sent
    for st in stats:
        st.update(refine_time=refine_time, adapt_time=adapt_time)
    return [
        _choose(model, c, st, size) for c, st in zip(zip(base, refined, updates), stats)
    ]


def _base(model, target: Target, xp: Tensor, stats: dict[str, Any]) -> Candidate:
    """The base codec's candidate of one image."""
    t0 = time.perf_counter()
    with torch.no_grad():
        y, z = analyse(model, xp)
    base = latent_candidate(model, "base", target, xp, y, z)
    stats["base_time"] = time.perf_counter() - t0
    return base


def _record(stats: dict[str, Any], s, **values: Any) -> None:
    """A phase's figures of one image, and why it ended early, if it did."""
    stats.update(values)
    stats["diverged"] += [s.diverged] if s.diverged else []
    stats["stopped"] += [s.stopped] if s.stopped else []


def _choose(model, cands, stats: dict[str, Any], size: int):
    """The cheapest of an image's candidates (real ``J``) and its stats."""
    cands = list({id(c): c for c in cands if c is not None}.values())
    best = min(cands, key=lambda c: c.J)
    layer_names = list(model.adapters())
    stats.update(
        choice=best.name,
        J={c.name: c.J for c in cands},
        bpp={c.name: c.bpp for c in cands},
        dist={c.name: c.dist for c in cands},
        update_bits=8 * len(best.update),
        open_gates=[layer_names[i] for i in best.extra.get("open_gates", [])],
    )
    if size > 1:
        stats["batch_size"] = size
    return best, stats
