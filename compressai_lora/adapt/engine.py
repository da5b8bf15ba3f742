"""Per-image adaptation inside ``compress()`` (Lv et al., ACM MM 2023).

1. Latent refinement: ``y`` (and ``z``) optimized with SGA under the RD loss,
   network frozen, best checkpoint kept (:mod:`.refine`).
2. Low-rank decoder update on the ``y_hat`` the real decoder sees, layers
   opened or closed by their measured RD value, best real cost kept
   (:mod:`.update`).
3. Never worse: base, refined-only and refined + update are coded for real
   (bytes from the range coder, distortion from the real decoder output) and
   the cheapest RD cost ``J`` is sent (:mod:`.candidates`).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .candidates import Candidate, Target, latent_candidate
from .clock import Deadline
from .config import AdaptConfig
from .latents import analyse
from .objective import finite
from .refine import refine_latents
from .update import UpdateTrainer

__all__ = ["adapt_and_compress", "frozen", "pad_to_multiple", "torch_threads"]


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
    padding: tuple[int, int, int, int] = (0, 0, 0, 0),
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
    lmbda = _lmbda(model, cfg)
    if not finite(x):
        raise ValueError("input image contains NaN or inf")
    left, right, top, bottom = padding
    h, w = x.size(-2) - top - bottom, x.size(-1) - left - right
    if min(padding) < 0 or h < 1 or w < 1:
        raise ValueError(f"padding {padding} does not fit an input of {tuple(x.shape)}")
    image = x[..., top : top + h, left : left + w]
    target = Target(image, (top, left), lmbda, cfg.metric)
    cb = callback or cfg.callback
    xp = pad_to_multiple(x, model.downsampling_factor)
    gen = torch.Generator().manual_seed(cfg.seed)
    stats: dict[str, Any] = {"lmbda": lmbda}
    diverged, stopped = [], []  # why phases ended early (divergence, budget)
    t0 = time.perf_counter()
    with torch.no_grad():
        y0, z0 = analyse(model, xp)
    base = latent_candidate(model, "base", target, xp, y0, z0)
    candidates = [base]
    stats["base_time"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    budget = cfg.time_budget
    refined = base
    if cfg.refine_steps > 0:
        share = cfg.refine_steps / (cfg.refine_steps + cfg.adapt_steps)
        deadline = Deadline(None if budget is None else budget * share)
        with torch.enable_grad(), frozen(model), torch_threads(cfg.threads):
            y, z, s = refine_latents(
                model, image, y0, z0, lmbda, cfg, gen, cb, (top, left), deadline
            )
        diverged += [s.pop("diverged")] if "diverged" in s else []
        stopped += [s.pop("stopped")] if "stopped" in s else []
        stats.update(s)
        refined = latent_candidate(model, "refined", target, xp, y, z)
        candidates.append(refined)
    stats["refine_time"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    if cfg.adapt_steps > 0:
        left_s = None if budget is None else max(budget - (t1 - t0), 0.0)
        with torch.enable_grad(), frozen(model), torch_threads(cfg.threads):
            trainer = UpdateTrainer(model, refined, target, cfg, cb)
            update, s = trainer.run(Deadline(left_s))
        diverged += [s.pop("diverged")] if "diverged" in s else []
        stopped += [s.pop("stopped")] if "stopped" in s else []
        stats.update(s)
        if update is not None:
            candidates.append(update)
    stats["adapt_time"] = time.perf_counter() - t1

    best = min(candidates, key=lambda c: c.J)
    layer_names = list(model.adapters())
    stats.update(
        {
            "choice": best.name,
            "J": {c.name: c.J for c in candidates},
            "bpp": {c.name: c.bpp for c in candidates},
            "dist": {c.name: c.dist for c in candidates},
            "update_bits": 8 * len(best.update),
            "open_gates": [layer_names[i] for i in best.extra.get("open_gates", [])],
            "diverged": diverged,
            "stopped": stopped,
        }
    )
    return best, stats
