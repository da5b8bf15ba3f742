"""Per-image adaptation inside ``compress()`` (Lv et al., ACM MM 2023).

1. Latent refinement: ``y`` (and ``z``) optimized with SGA under the RD loss,
   network frozen, best iterate kept (:func:`refine_latents`).
2. Gated low-rank decoder update on the ``y_hat`` the real decoder sees:
   straight-through quantized factors, gate networks that train early and
   then freeze, rate of the update in the loss; only ``g_s`` runs, its layers
   before the first adapter are cached (:func:`train_update`).  A greedy pass
   on real coded costs then closes layers whose update does not pay.
3. Never worse: base, refined-only and refined + update are coded for real
   (bytes from the range coder, distortion from the real decoder output) and
   the cheapest RD cost ``J`` is sent (:func:`adapt_and_compress`).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from pytorch_msssim import ms_ssim, ssim
from torch import Tensor

from .. import update_stream
from ..priors import tensor_bits
from .config import AdaptConfig
from .gates import init_gates
from .latents import analyse, fixed_latents, latent_terms
from .sga import sga_round, temperature

__all__ = ["Candidate", "adapt_and_compress", "refine_latents", "train_update"]

EVAL_EVERY = 10


@dataclass
class Candidate:
    """One codable result with its real RD cost."""

    name: str
    strings: list
    shape: Any
    update: bytes
    x_hat: Tensor  # decoder output (uncropped, clamped), as decompress returns it
    y: Tensor
    z: Optional[Tensor]
    bpp: float = 0.0
    dist: float = 0.0
    J: float = math.inf
    extra: dict = field(default_factory=dict)


# -- helpers ---------------------------------------------------------------
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


def distortion(x_hat: Tensor, x: Tensor, metric: str) -> Tensor:
    """Differentiable distortion term: 255^2 * MSE, or 1 - MS-SSIM."""
    if metric == "mse":
        return F.mse_loss(x_hat, x) * 255**2
    side = min(x.shape[-2:])
    if side > 160:
        return 1 - ms_ssim(x_hat, x, data_range=1.0)
    win = min(11, side - (1 - side % 2))  # largest odd window that fits
    if win < 3:
        return F.mse_loss(x_hat, x)  # too small for any SSIM window
    return 1 - ssim(x_hat, x, data_range=1.0, win_size=win)


def crop_to(t: Tensor, x: Tensor, offset: tuple[int, int] = (0, 0)) -> Tensor:
    """The part of decoder output ``t`` that covers image ``x`` (at ``offset``)."""
    top, left = offset
    return t[..., top : top + x.size(-2), left : left + x.size(-1)]


def coded_distortion(
    x_hat: Tensor, x: Tensor, metric: str, offset: tuple[int, int] = (0, 0)
) -> float:
    """Distortion of 8-bit rounded images, as eval_model measures it."""
    a = (x * 255).clamp(0, 255).round() / 255
    b = (crop_to(x_hat, x, offset) * 255).clamp(0, 255).round() / 255
    return float(distortion(b, a, metric))


def rate_bpp(likelihoods: dict[str, Tensor], pixels: int) -> Tensor:
    return sum(-torch.log2(v).sum() for v in likelihoods.values()) / pixels


def _finite(t: Tensor) -> bool:
    return bool(torch.isfinite(t).all())


#: refined latents beyond this magnitude are treated as diverged (real latents
#: stay within a few hundred; the range coder's escape codes grow with |value|)
LATENT_LIMIT = 2.0**15


def _sane(*tensors: Optional[Tensor], limit: float = LATENT_LIMIT) -> bool:
    """Finite and within ``limit``: safe to code."""
    return all(
        t is None or bool(torch.isfinite(t).all() and t.abs().max() <= limit)
        for t in tensors
    )


# -- phase 1 ---------------------------------------------------------------
def refine_latents(
    model,
    x: Tensor,
    y0: Tensor,
    z0: Optional[Tensor],
    lmbda: float,
    cfg,
    gen,
    cb,
    offset: tuple[int, int] = (0, 0),
) -> tuple[Tensor, Optional[Tensor], dict]:
    """SGA refinement of ``y``/``z``; returns the best iterate (hard-rounded loss).

    ``x`` holds the image's own pixels; they sit at ``offset`` in the decoder
    output (the rest is padding and costs nothing).
    """
    pixels = x.size(-2) * x.size(-1)
    y = y0.detach().clone().requires_grad_(True)
    z = None if z0 is None else z0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([t for t in (y, z) if t is not None], lr=cfg.refine_lr)

    def loss_fn(rnd):
        y_hat, liks = latent_terms(model, y, z, rnd)
        x_hat = crop_to(model.g_s(y_hat), x, offset)
        bpp = rate_bpp(liks, pixels)
        return lmbda * distortion(x_hat, x, cfg.metric) + bpp, bpp, x_hat

    with torch.no_grad():
        best_loss = float(loss_fn(torch.round)[0])
    best = (y0.detach(), None if z0 is None else z0.detach())
    since, steps = 0, cfg.refine_steps
    stats: dict[str, Any] = {}
    for t in range(steps):
        tau = temperature(t, steps)
        loss, bpp, x_hat = loss_fn(lambda v: sga_round(v, tau, gen))
        if not _finite(loss):
            stats["diverged"] = _diverged("refine", t, "non-finite loss")
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
        if not _sane(y, z):  # diverged: keep the best state so far
            stats["diverged"] = _diverged("refine", t, "latents out of range")
            break
        since += 1
        if (t + 1) % EVAL_EVERY == 0 or t == steps - 1:
            with torch.no_grad():
                hard = float(loss_fn(torch.round)[0])
            if math.isfinite(hard) and hard < best_loss:
                best_loss, since = hard, 0
                best = (y.detach().clone(), None if z is None else z.detach().clone())
        if cb:
            cb(_progress("refine", t, steps, loss, bpp, x_hat, x, None))
        if cfg.patience and since >= cfg.patience:
            break
    stats.update(refine_loss=best_loss, refine_iters=t + 1)
    return best[0], best[1], stats


def _diverged(phase: str, t: int, why: str) -> dict[str, Any]:
    """What ``stats["diverged"]`` records: the phase, the step and why."""
    return {"phase": phase, "step": t + 1, "reason": why}


def _progress(phase, t, steps, loss, bpp, x_hat, x, gates) -> dict[str, Any]:
    mse = F.mse_loss(x_hat.detach().clamp(0, 1), x).item()
    return {
        "phase": phase,
        "step": t + 1,
        "steps": steps,
        "loss": loss.item(),
        "bpp": bpp.item(),
        "psnr": 10 * math.log10(1 / max(mse, 1e-10)),
        "gates": gates,
    }


# -- phase 2 ---------------------------------------------------------------
def _split_g_s(model, paths=None) -> int:
    """Index of the first ``g_s`` block that holds one of the adapters ``paths``."""
    paths = model.lora_layers if paths is None else paths
    for i in range(len(model.g_s)):
        if any(p == f"g_s.{i}" or p.startswith(f"g_s.{i}.") for p in paths):
            return i
    return len(model.g_s)


def _ste_round(t: Tensor) -> Tensor:
    return t + (torch.round(t) - t).detach()


def train_update(
    model,
    x: Tensor,
    y_hat: Tensor,
    lmbda: float,
    cfg: AdaptConfig,
    gen,
    cb,
    offset: tuple[int, int] = (0, 0),
) -> tuple[dict[int, update_stream.LayerUpdate], dict]:
    """Optimize gated, quantized low-rank factors for fixed ``y_hat``.

    Returns the quantized updates of the open layers (``{layer index: ...}``)
    and statistics.  ``x`` and ``offset`` as in :func:`refine_latents`.
    """
    pixels = x.size(-2) * x.size(-1)
    adapters = list(model.adapters().values())
    step = update_stream.step_from_code(cfg.step_code)
    names = list(model.lora_layers)
    split = feat = None

    def cache_prefix() -> None:
        """Run the blocks before the first open adapter once, keep the output."""
        nonlocal split, feat
        split = _split_g_s(model, [names[i] for i in open_layers()])
        with torch.no_grad():
            feat = model.g_s[:split](y_hat)

    factors = []
    for m in adapters:
        f = m.initial_factors()
        factors.append({k: v.to(x.device).requires_grad_(True) for k, v in f.items()})
    gates = init_gates([m.in_channels for m in adapters], gen, x.device)
    opt = torch.optim.Adam(
        [
            {"params": [t for f in factors for t in f.values()], "lr": cfg.adapt_lr},
            {"params": [p for g in gates for p in g.parameters()], "lr": cfg.gate_lr},
        ]
    )
    gate_steps = min(cfg.gate_steps, cfg.adapt_steps)
    decisions: Optional[list[bool]] = None  # set when gates freeze
    gate_vals: dict[int, Tensor] = {}

    def delta_fn(i):
        m = adapters[i]

        def fn(inp: Tensor) -> Tensor:
            q = {k: _ste_round(v / step) * step for k, v in factors[i].items()}
            d = m.delta_from(**q)
            if decisions is None:
                g = gates[i](inp.detach())
                gate_vals[i] = g
                return g * d
            return d

        return fn

    def open_layers() -> list[int]:
        if decisions is None:
            return list(range(len(adapters)))
        return [i for i, d in enumerate(decisions) if d]

    def install() -> None:
        for i, m in enumerate(adapters):
            on = decisions is None or decisions[i]
            m.delta_fn = delta_fn(i) if on else None

    limit = step * update_stream.MAX_SYMBOL / 4
    best_loss, best_state, since = math.inf, None, 0
    diverged = None
    t = -1
    try:
        install()
        cache_prefix()
        for t in range(cfg.adapt_steps):
            if t == gate_steps:
                with torch.no_grad():
                    decisions = [bool(gate_vals[i] > 0.5) for i in range(len(adapters))]
                if not any(decisions):
                    break
                install()
                cache_prefix()
                best_loss, best_state, since = math.inf, None, 0
            gate_vals.clear()
            x_hat = crop_to(model.g_s[split:](feat), x, offset)
            upd_bits = x.new_zeros(())
            for i in open_layers():
                b = sum(tensor_bits(_ste_round(v / step)) for v in factors[i].values())
                upd_bits = upd_bits + (gate_vals[i] * b if i in gate_vals else b)
            bpp = upd_bits / pixels
            loss = lmbda * distortion(x_hat, x, cfg.metric) + bpp
            if not _finite(loss):
                diverged = _diverged("adapt", t, "non-finite loss")
                break
            if decisions is not None and loss.item() < best_loss:
                best_loss, since = loss.item(), 0
                best_state = [
                    {k: v.detach().clone() for k, v in f.items()} for f in factors
                ]
            since += 1
            opt.zero_grad()
            loss.backward()
            opt.step()
            if not _sane(*(v for f in factors for v in f.values()), limit=limit):
                # diverged: fall back to the best state so far
                diverged = _diverged("adapt", t, "factors out of range")
                break
            if cb:
                if decisions is None:
                    n_open = sum(g.item() > 0.5 for g in gate_vals.values())
                else:
                    n_open = len(open_layers())
                cb(_progress("adapt", t, cfg.adapt_steps, loss, bpp, x_hat, x, n_open))
            if decisions is not None and cfg.patience and since >= cfg.patience:
                break
    finally:
        for m in adapters:
            m.delta_fn = None
    if decisions is None:  # gates never froze (adapt_steps <= gate_steps)
        decisions = [bool(gate_vals.get(i, 0) > 0.5) for i in range(len(adapters))]
    final = best_state or [{k: v.detach() for k, v in f.items()} for f in factors]
    updates = {
        i: update_stream.quantize(final[i], cfg.step_code)
        for i in range(len(adapters))
        if decisions[i]
        and _sane(*final[i].values(), limit=limit)
        and any(torch.round(v / step).abs().sum() > 0 for v in final[i].values())
    }
    stats = {
        "adapt_iters": t + 1,
        "gates_after_training": sum(decisions),
        "split": split,
    }
    if diverged is not None:
        stats["diverged"] = diverged
    return updates, stats


# -- real coded costs --------------------------------------------------------
class _Capture:
    """Records the input of ``g_s`` (the ``y_hat`` the decoder really used)."""

    def __init__(self, module):
        self.value = None
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, _module, args):
        self.value = args[0].detach().clone()

    def close(self):
        self.handle.remove()


@dataclass(frozen=True)
class Target:
    """What a candidate is costed against: the image's own pixels ``x``, where
    they sit in the decoder output (``offset``), and the RD trade-off."""

    x: Tensor
    offset: tuple[int, int]
    lmbda: float
    metric: str

    @property
    def pixels(self) -> int:
        return self.x.size(-2) * self.x.size(-1)

    def cost(self, c: Candidate) -> Candidate:
        """Set ``c``'s real bpp, distortion and ``J`` (all bytes, real pixels)."""
        n_bytes = sum(len(s[0]) for s in c.strings) + len(c.update)
        c.bpp = 8.0 * n_bytes / self.pixels
        c.dist = coded_distortion(c.x_hat, self.x, self.metric, self.offset)
        c.J = c.bpp + self.lmbda * c.dist
        return c


def _latent_candidate(model, name, target: Target, xp, y, z) -> Candidate:
    """Code ``y``/``z`` with the host's coder, decode, and cost the image."""
    with torch.no_grad():
        with fixed_latents(model, y, z):
            out = model.host_compress(xp)
        cap = _Capture(model.g_s)
        try:
            x_hat = model.host_decompress(out["strings"], out["shape"])["x_hat"]
        finally:
            cap.close()
    empty = update_stream.encode_update(0, 0, 0, {}, 0)
    c = Candidate(name, out["strings"], out["shape"], empty, x_hat, y, z)
    c.extra["y_hat"] = cap.value
    return target.cost(c)


def _update_candidate(model, refined, updates, step_code, target: Target):
    """Refined latents plus ``updates``, decoded as ``decompress`` would."""
    data = model.encode_update_from(updates, step_code)
    state = model._adapter_state()
    try:
        model.load_update(model.decode_update(data))
        model.merge_adapters()
        with torch.no_grad():
            x_hat = model.g_s(refined.extra["y_hat"]).clamp_(0, 1)
    finally:
        model._restore_adapter_state(state)
    c = Candidate(
        "update", refined.strings, refined.shape, data, x_hat, refined.y, refined.z
    )
    c.extra["open_gates"] = sorted(updates)
    return target.cost(c)


def prune_by_real_cost(model, refined, updates, step_code, target: Target):
    """Greedily close layers whose update does not pay for its bits."""
    best = _update_candidate(model, refined, updates, step_code, target)
    for i in sorted(updates):
        trial = {k: v for k, v in updates.items() if k != i}
        if not trial:
            break
        c = _update_candidate(model, refined, trial, step_code, target)
        if c.J < best.J:
            best, updates = c, trial
    return best


# -- orchestration -----------------------------------------------------------
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


def resolve_lmbda(model, cfg: AdaptConfig) -> float:
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
    lmbda = resolve_lmbda(model, cfg)
    if not _finite(x):
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
    diverged = []
    t0 = time.perf_counter()
    with torch.no_grad():
        y0, z0 = analyse(model, xp)
    base = _latent_candidate(model, "base", target, xp, y0, z0)
    candidates = [base]
    stats["base_time"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    refined = base
    if cfg.refine_steps > 0:
        with torch.enable_grad(), frozen(model), torch_threads(cfg.threads):
            y, z, s = refine_latents(
                model, image, y0, z0, lmbda, cfg, gen, cb, (top, left)
            )
        diverged += [s.pop("diverged")] if "diverged" in s else []
        stats.update(s)
        refined = _latent_candidate(model, "refined", target, xp, y, z)
        candidates.append(refined)
    stats["refine_time"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if cfg.adapt_steps > 0:
        y_hat = refined.extra["y_hat"]
        with torch.enable_grad(), frozen(model), torch_threads(cfg.threads):
            updates, s = train_update(
                model, image, y_hat, lmbda, cfg, gen, cb, (top, left)
            )
        diverged += [s.pop("diverged")] if "diverged" in s else []
        stats.update(s)
        if updates:
            candidates.append(
                prune_by_real_cost(model, refined, updates, cfg.step_code, target)
            )
    stats["adapt_time"] = time.perf_counter() - t0

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
        }
    )
    return best, stats
