"""Codable candidates and their real RD cost (bytes from the range coder,
distortion from the real decoder output)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

from .. import host, update_stream
from ..latents import fixed_latents, is_autoregressive
from .objective import coded_distortion, crop_to, distortion

__all__ = [
    "Candidate",
    "Target",
    "latent_candidate",
    "prune_by_real_cost",
    "update_candidate",
]


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

    def loss(self, out: Tensor, bpp: Tensor) -> tuple[Tensor, ...]:
        """``(loss, bpp, x_hat, x)`` of this image's decoder output ``out``."""
        x_hat = crop_to(out, self.x, self.offset).clamp(0, 1)  # as decoded
        dist = self.lmbda * distortion(x_hat, self.x, self.metric)
        return dist + bpp, bpp, x_hat, self.x

    def window(self, rows: range, cols: range, origin: tuple[int, int]) -> "Target":
        """The target of a decoder output whose first pixel is the full
        output's ``origin``, costed on the image's own pixels among ``rows``
        and ``cols`` of the full output."""
        top, left = self.offset
        r0, c0 = max(rows.start, top), max(cols.start, left)
        r1 = min(rows.stop, top + self.x.size(-2))
        c1 = min(cols.stop, left + self.x.size(-1))
        if r1 <= r0 or c1 <= c0:
            raise ValueError("the window holds none of the image's own pixels")
        x = self.x[..., r0 - top : r1 - top, c0 - left : c1 - left]
        return Target(x, (r0 - origin[0], c0 - origin[1]), self.lmbda, self.metric)

    def cost(self, c: Candidate) -> Candidate:
        """Set ``c``'s real bpp, distortion and ``J`` (all bytes, real pixels)."""
        n_bytes = sum(len(s[0]) for s in c.strings) + len(c.update)
        c.bpp = 8.0 * n_bytes / self.pixels
        c.dist = coded_distortion(c.x_hat, self.x, self.metric, self.offset)
        c.J = c.bpp + self.lmbda * c.dist
        return c


def latent_candidate(model, name, target: Target, xp, y, z) -> Candidate:
    """Code ``y``/``z`` with the host's coder and cost the image as decoded:
    ``g_s`` of the decoder's ``y_hat`` (an autoregressive model's from its
    serial coder, which builds the decoder's; the others' from decoding)."""
    with torch.no_grad():
        if is_autoregressive(model):
            with fixed_latents(model, y, z), host.coded_y_hat(model) as seen:
                out = model.host_compress(xp)
            y_hat = torch.cat(seen)
            x_hat = model.g_s(y_hat).clamp_(0, 1)
        else:
            with fixed_latents(model, y, z):
                out = model.host_compress(xp)
            seen = []  # the input of g_s: the y_hat the decoder really used
            hook = model.g_s.register_forward_pre_hook(lambda _, a: seen.append(a[0]))
            try:
                x_hat = model.host_decompress(out["strings"], out["shape"])["x_hat"]
            finally:
                hook.remove()
            y_hat = seen[0]
    empty = update_stream.encode_update(0, 0, 0, {}, 0)
    c = Candidate(name, out["strings"], out["shape"], empty, x_hat, y, z)
    c.extra["y_hat"] = y_hat
    return target.cost(c)


def update_candidate(model, refined, updates, step_code, target: Target):
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
    c.extra["updates"] = dict(updates)
    return target.cost(c)


def prune_by_real_cost(model, refined, best: Candidate, step_code, target: Target):
    """Greedily close layers of ``best``'s update that do not pay for their bits
    (``best``: an :func:`update_candidate`); never costlier than ``best``."""
    updates = best.extra["updates"]
    for i in sorted(updates):
        trial = {k: v for k, v in updates.items() if k != i}
        if not trial:
            break
        c = update_candidate(model, refined, trial, step_code, target)
        if c.J < best.J:
            best, updates = c, trial
    return best
