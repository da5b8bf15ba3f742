"""Per-image adaptation inside ``compress()`` (Lv et al., ACM MM 2023).

1. Latent refinement: ``y`` (and ``z``) optimized with SGA under the RD loss,
   network frozen, best checkpoint kept (:mod:`.refine`).
2. Low-rank decoder update on the ``y_hat`` the real decoder sees, layers
   opened or closed by their measured RD value, best real cost kept
   (:mod:`.update`); past twice the refinement's annealing span, the
   updates the schedules of half (a quarter, ...) the steps train on the
   best latents of the first half (quarter, ...) compete
   (:func:`.update_loop.train_updates`).
3. Never worse: base, refined-only and refined + update are coded for real
   (bytes from the range coder, distortion from the real decoder output) and
   the cheapest RD cost ``J`` is sent (:mod:`.candidates`).

Images of one size can be adapted together (:func:`adapt_batch`): the steps
of both phases run on the batch, everything else (coding, checkpoints, gate
decisions, early stops, the choice) per image, so each image gets its
unbatched result up to float rounding.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .candidates import Candidate, Target, latent_candidate
from .clock import Deadline
from .config import AdaptConfig
from .latents import analyse
from .objective import finite
from .refine import refine_batch
from .update_loop import train_updates

#: (left, right, top, bottom) pixels of an input that are the caller's padding
Padding = tuple[int, int, int, int]

__all__ = [
    "adapt_and_compress",
    "adapt_batch",
    "adapt_images",
    "per_image_paddings",
    "frozen",
    "pad_to_multiple",
    "torch_threads",
]


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


def pad_to_multiple(x: Tensor, factor: int) -> Tensor:
    """Replicate-pad ``x`` on the bottom/right to a multiple of ``factor``.

    The host's autoregressive coders need it; the loss only sees ``x``'s own
    pixels, so the padding just has to be cheap to code.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % factor, (-w) % factor
    if not ph and not pw:
        return x
    mode = "replicate" if h > 1 and w > 1 else "constant"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def _lmbda(model, cfg: AdaptConfig) -> float:
    """The run's lambda: the config's, else the model's zoo default."""
    lmbda = cfg.lmbda if cfg.lmbda is not None else model.default_lmbda
    if lmbda is None:
        raise ValueError(
            "adaptation needs lambda: set AdaptConfig(lmbda=...) (models built "
            "from a checkpoint do not know their quality level)"
        )
    return float(lmbda)


def adapt_and_compress(
    model,
    x: Tensor,
    cfg: AdaptConfig,
    callback: Optional[Callable] = None,
    padding: Padding = (0, 0, 0, 0),
) -> tuple[Candidate, dict[str, Any]]:
    """Adapt ``model`` to ``x`` (1 image) and return the cheapest candidate.

    ``padding`` (left, right, top, bottom, as ``compute_padding`` gives it)
    says how much of ``x`` is padding the caller added: the loss, the
    distortion and the bpp count only the image's own pixels.
    """
    if x.dim() != 4 or x.size(0) != 1:
        raise ValueError(
            f"adaptation works on one image at a time, got input of shape "
            f"{tuple(x.shape)} (expected 1x3xHxW)"
        )
    return adapt_batch(model, x, cfg, callback, [padding])[0]


def per_image_paddings(padding: Sequence, n: Optional[int] = None):
    """``padding`` checked: one ``(left, right, top, bottom)`` for every image
    (returned as a tuple) or a sequence of them, one per image (a list).
    With ``n``, the list of the ``n`` images' paddings.

    Raises:
        ValueError: a padding is not 4 values >= 0, or not one per image.
    """
    per_image = len(padding) > 0 and hasattr(padding[0], "__len__")
    pads = [tuple(int(v) for v in p) for p in (padding if per_image else [padding])]
    if any(len(p) != 4 or min(p) < 0 for p in pads):
        raise ValueError(f"padding must be 4 values >= 0, got {padding}")
    if n is None:
        return pads if per_image else pads[0]
    if not per_image:
        return pads * n
    if len(pads) != n:
        raise ValueError(f"{len(pads)} paddings for {n} images")
    return pads


def adapt_images(
    model,
    x: Tensor,
    cfg: AdaptConfig,
    callback: Optional[Callable] = None,
    paddings: Sequence = (0, 0, 0, 0),
) -> list[tuple[Candidate, dict[str, Any]]]:
    """Adapt to each image of ``x`` (Bx3xHxW), ``cfg.batch_size`` at a time.

    ``paddings``: one padding for every image or one per image (see
    :func:`adapt_batch`).  Returns each image's cheapest candidate and stats,
    in order; with several images in ``x`` the callback's ``"image"`` is the
    index in ``x``.
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


def _targets(x: Tensor, paddings, lmbda: float, metric: str) -> list[Target]:
    """Each image's own pixels (``x`` less its padding) and where they sit."""
    targets = []
    for n, padding in enumerate(paddings):
        left, right, top, bottom = padding
        h, w = x.size(-2) - top - bottom, x.size(-1) - left - right
        if min(padding) < 0 or h < 1 or w < 1:
            raise ValueError(
                f"padding {padding} does not fit an input of {tuple(x.shape)}"
            )
        image = x[n : n + 1, :, top : top + h, left : left + w]
        targets.append(Target(image, (top, left), lmbda, metric))
    return targets


def adapt_batch(
    model,
    x: Tensor,
    cfg: AdaptConfig,
    callback: Optional[Callable] = None,
    paddings: Optional[Sequence[Padding]] = None,
) -> list[tuple[Candidate, dict[str, Any]]]:
    """Adapt ``model`` to the images of ``x`` (Bx3xHxW) together.

    Each image gets its unbatched result up to float rounding: its own base
    codec, refinement, update, gate decisions and never-worse choice; the
    steps of both phases run on the batch.  ``paddings`` (one per image, see
    :func:`adapt_and_compress`; default none) may differ between images.  A
    batch shares the wall time: each image's ``refine_time``/``adapt_time``
    (and the time budget) are the batch's, and its stats say ``batch_size``
    when B > 1.
    """
    if x.dim() != 4 or x.size(0) < 1:
        raise ValueError(
            f"adaptation needs a batch of images, got input of shape "
            f"{tuple(x.shape)} (expected Bx3xHxW)"
        )
    lmbda = _lmbda(model, cfg)
    if not finite(x):
        raise ValueError("input image contains NaN or inf")
    size = x.size(0)
    targets = _targets(x, paddings or [(0, 0, 0, 0)] * size, lmbda, cfg.metric)
    cb = callback or cfg.callback
    xp = pad_to_multiple(x, model.downsampling_factor)
    stats: list[dict[str, Any]] = [{"lmbda": lmbda} for _ in range(size)]
    # per image, why phases ended early (divergence, budget)
    diverged: list[list] = [[] for _ in range(size)]
    stopped: list[list] = [[] for _ in range(size)]
    candidates = []
    for n in range(size):
        t0 = time.perf_counter()
        with torch.no_grad():
            y0, z0 = analyse(model, xp[n : n + 1])
        candidates.append(
            [latent_candidate(model, "base", targets[n], xp[n : n + 1], y0, z0)]
        )
        stats[n]["base_time"] = time.perf_counter() - t0

    def record(n: int, s: dict[str, Any]) -> None:
        diverged[n] += [s.pop("diverged")] if "diverged" in s else []
        stopped[n] += [s.pop("stopped")] if "stopped" in s else []
        stats[n].update(s)

    t0 = time.perf_counter()
    budget = cfg.time_budget
    refined = [c[0] for c in candidates]
    early: list[dict[int, Candidate]] = [{} for _ in range(size)]  # further starts
    if cfg.refine_steps > 0:
        share = cfg.refine_steps / (cfg.refine_steps + cfg.adapt_steps)
        deadline = Deadline(None if budget is None else budget * share)
        gens = [_generator(x.device, cfg.seed) for _ in range(size)]
        with torch.enable_grad(), frozen(model), torch_threads(cfg.threads):
            results = refine_batch(
                model, [t.x for t in targets], [c.y for c in refined],
                [c.z for c in refined], lmbda, cfg, gens, cb,
                [t.offset for t in targets], deadline, early_steps=cfg.early_steps(),
            )  # fmt: skip
        for n, (y, z, s) in enumerate(results):
            starts = s.pop("early", {})
            record(n, s)
            c = latent_candidate(model, "refined", targets[n], xp[n : n + 1], y, z)
            refined[n] = c
            candidates[n].append(c)
            for step, (ye, ze) in starts.items():
                name = f"refined@{step}"
                e = latent_candidate(model, name, targets[n], xp[n : n + 1], ye, ze)
                early[n][step] = e
                candidates[n].append(e)
    refine_time = time.perf_counter() - t0
    for st in stats:
        st["refine_time"] = refine_time

    t1 = time.perf_counter()
    if cfg.adapt_steps > 0:
        left_s = None if budget is None else max(budget - (t1 - t0), 0.0)
        with torch.enable_grad(), frozen(model), torch_threads(cfg.threads):
            updates = train_updates(
                model, refined, early, targets, cfg, cb, Deadline(left_s)
            )
        for n, (update, s) in enumerate(updates):
            record(n, s)
            candidates[n] += [] if update is None else [update]
    adapt_time = time.perf_counter() - t1
    for st in stats:
        st["adapt_time"] = adapt_time

    out = []
    layer_names = list(model.adapters())
    for n, cands in enumerate(candidates):
        best = min(cands, key=lambda c: c.J)
        stats[n].update(
            {
                "choice": best.name,
                "J": {c.name: c.J for c in cands},
                "bpp": {c.name: c.bpp for c in cands},
                "dist": {c.name: c.dist for c in cands},
                "update_bits": 8 * len(best.update),
                "open_gates": [
                    layer_names[i] for i in best.extra.get("open_gates", [])
                ],
                "diverged": diverged[n],
                "stopped": stopped[n],
            }
        )
        if size > 1:
            stats[n]["batch_size"] = size
        out.append((best, stats[n]))
    return out


def _generator(device: torch.device, seed: int) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` (the SGA noise)."""
    return torch.Generator(device=device).manual_seed(seed)
