"""Low-rank adapter for a decoder convolution (Lv et al., ACM MM 2023).

The adapter wraps a host ``nn.Conv2d`` or ``nn.ConvTranspose2d`` and adds a
rank-``r`` update of its kernel.  Two update forms are available:

* ``"separable"`` (default): ``dW[o, i] = sum_r B[o, r] (P + A)[r, i] (E + K[r])``
  where ``E`` is the centre impulse and ``K[r]`` a ``kh x kw`` spatial kernel
  offset per rank component.  It costs ``r * (C_in + C_out + kh * kw)``
  numbers, a few more than a 1x1 update, and contains both the 1x1 update at
  the centre tap (``K = 0``, its initial value, which costs almost nothing to
  send) and the reference code's broadcast onto all taps (``E + K = 1``).
* ``"full"``: ``dW = (B @ (P + A)).view(C_out, C_in, kh, kw)`` as in PEFT's
  conv LoRA; ``A`` spans ``C_in * kh * kw`` so it costs about ``kh * kw``
  times more.

``P`` is a fixed pseudo-random +-1/sqrt(fan_in) projection that encoder and
decoder compute from an integer hash (no bits, no RNG, the same on every
platform).  Only the offsets ``A`` and ``K`` and the factor ``B`` are sent,
all starting at zero: an open layer costs almost nothing until it pays, and
``B`` gets a gradient from the first step (with a random ``A`` that had to be
transmitted, its bits would be spent before the update helps).

The factors are per-image state, not weights: they are non-persistent buffers,
never part of ``state_dict()``, and the wrapped convolution keeps its host
state-dict keys (``g_s.1.conv1.weight``), so host checkpoints load strictly.
Nothing merges implicitly: ``merge()``/``unmerge()`` are explicit and
``unmerge()`` restores the exact original weight.

For a batch of images, each with its own factors, :meth:`LoRAConv.branch`
computes the update's output ``conv(x_n, dW_n)`` image by image without
forming any ``dW_n``: the rank-``r`` structure is a 1x1 projection by
``P + A``, a per-rank spatial kernel (a grouped convolution) and a 1x1
expansion by ``B``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LoRAConv", "UPDATE_FORMS"]

UPDATE_FORMS = ("separable", "full")


class LoRAConv(nn.Module):
    """Rank-``r`` adapter around a host convolution.

    Args:
        base: the convolution to adapt (``nn.Conv2d`` or ``nn.ConvTranspose2d``)
        rank: rank of the update (default: 2, as in the paper)
        form: ``"separable"`` or ``"full"`` (see the module docstring)
    """

    def __init__(self, base: nn.Module, rank: int = 2, form: str = "separable"):
        super().__init__()
        if not isinstance(base, (nn.Conv2d, nn.ConvTranspose2d)):
            raise TypeError(f"LoRAConv wraps Conv2d/ConvTranspose2d, got {type(base)}")
        if base.groups != 1 or base.padding_mode != "zeros":
            raise ValueError("LoRAConv supports groups=1 and zero padding only")
        if form not in UPDATE_FORMS:
            raise ValueError(
                f'Invalid update form "{form}", choose from {UPDATE_FORMS}'
            )
        self.base = base
        self.form = form
        self.transposed = isinstance(base, nn.ConvTranspose2d)
        w = base.weight
        if self.transposed:
            self.in_channels, self.out_channels = w.shape[0], w.shape[1]
        else:
            self.out_channels, self.in_channels = w.shape[0], w.shape[1]
        self.kernel_size = tuple(w.shape[2:])
        self._backup: Optional[Tensor] = None
        self._projection: Optional[Tensor] = None
        self.gate = False
        self.rank = 0
        self.reset(rank)
        self._register_state_dict_hook(_save_base_keys)
        self._register_load_state_dict_pre_hook(_load_base_keys)

    # -- state -------------------------------------------------------------
    def factor_shapes(self, rank: Optional[int] = None) -> dict[str, tuple]:
        """Shapes of the factors ``A``, ``B`` (and ``K``) for ``rank``."""
        r = self.rank if rank is None else rank
        kh, kw = self.kernel_size
        if self.form == "full":
            return {"A": (r, self.in_channels * kh * kw), "B": (self.out_channels, r)}
        return {
            "A": (r, self.in_channels),
            "B": (self.out_channels, r),
            "K": (r, kh, kw),
        }

    def initial_factors(self) -> dict[str, Tensor]:
        """Trainable starting point: all zero (no update, nearly free to send)."""
        w = self.base.weight
        return {k: w.new_zeros(shape) for k, shape in self.factor_shapes().items()}

    def reset(self, rank: Optional[int] = None) -> None:
        """Drop the update: zero factors, gate closed (optionally change rank)."""
        if self._backup is not None:
            self.unmerge()
        if rank is not None:
            if not 1 <= int(rank) <= 255:
                raise ValueError(f"rank must be in [1, 255], got {rank}")
            self.rank = int(rank)
        w = self.base.weight
        for name, shape in self.factor_shapes().items():
            self.register_buffer(name, w.new_zeros(shape), persistent=False)
        if "K" not in self.factor_shapes():
            self.register_buffer("K", None, persistent=False)
        self.gate = False

    def set_factors(self, gate: bool = True, **factors: Tensor) -> None:
        """Set the factors (shapes are checked) and the gate."""
        shapes = self.factor_shapes()
        for name, value in factors.items():
            if name not in shapes:
                raise ValueError(f"Unknown factor {name!r} for form {self.form!r}")
            if tuple(value.shape) != shapes[name]:
                raise ValueError(
                    f"Factor {name} has shape {tuple(value.shape)}, "
                    f"expected {shapes[name]}"
                )
            setattr(self, name, value.detach().to(self.base.weight))
        self.gate = bool(gate)

    def factors(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in self.factor_shapes()}

    # -- delta / merge -----------------------------------------------------
    def projection(self) -> Tensor:
        """The fixed projection ``P`` (shape of ``A``), from an integer hash."""
        shape = self.factor_shapes()["A"]
        idx = torch.arange(shape[0] * shape[1], dtype=torch.int64)
        h = (idx * 2654435761 + 0x9E3779B9) % 2**32
        h = ((h ^ (h >> 16)) * 0x45D9F3B) % 2**32
        h = h ^ (h >> 16)
        sign = (h & 1).to(self.base.weight.dtype) * 2 - 1
        p = sign.view(shape) / shape[1] ** 0.5
        return p.to(self.base.weight.device)

    def delta_from(self, A: Tensor, B: Tensor, K: Optional[Tensor] = None) -> Tensor:
        """Kernel update (shaped like ``base.weight``) from explicit factors."""
        kh, kw = self.kernel_size
        if self._projection is None or self._projection.shape != A.shape:
            self._projection = self.projection()
        A = self._projection.to(A) + A
        if self.form == "full":
            d = (B @ A).view(self.out_channels, self.in_channels, kh, kw)
        else:
            centre = torch.zeros_like(K)
            centre[:, kh // 2, kw // 2] = 1.0
            d = torch.einsum("or,ri,rhw->oihw", B, A, K + centre)
        return d.transpose(0, 1) if self.transposed else d

    def branch(self, x: Tensor, A: Tensor, B: Tensor, K: Optional[Tensor] = None):
        """``conv(x[n], dW_n)`` (no bias) for per-image factors stacked on dim 0.

        ``A``, ``B`` (and ``K``) are shaped ``(n, *factor_shapes()[name])``
        for the ``n`` images of ``x``; equal to the merged kernel's result up
        to float rounding, at the cost of a rank-``r`` convolution.
        """
        n, r = x.size(0), A.size(1)
        kh, kw = self.kernel_size
        if self._projection is None or self._projection.shape != A.shape[1:]:
            self._projection = self.projection()
        A = self._projection.to(A) + A
        if self.form == "full":  # r kernels over C_in per image: n groups
            w = A.reshape(n, r, self.in_channels, kh, kw)
            w = w.transpose(1, 2) if self.transposed else w
            u = x.reshape(1, n * self.in_channels, *x.shape[2:])
            shape = (n * w.size(1), w.size(2), kh, kw)
            v = self._grouped(u, w.reshape(shape), n)
        else:  # project to r channels, one spatial kernel per rank component
            centre = torch.zeros_like(K)
            centre[:, :, kh // 2, kw // 2] = 1.0
            u = torch.einsum("nri,nihw->nrhw", A, x)
            u = u.reshape(1, n * r, *x.shape[2:])
            v = self._grouped(u, (K + centre).reshape(n * r, 1, kh, kw), n * r)
        v = v.view(n, r, *v.shape[2:])
        return torch.einsum("nor,nrhw->nohw", B, v)

    def _grouped(self, x: Tensor, weight: Tensor, groups: int) -> Tensor:
        b = self.base
        if self.transposed:
            return F.conv_transpose2d(
                x, weight, None, b.stride, b.padding, b.output_padding, groups,
                b.dilation,
            )  # fmt: skip
        return F.conv2d(x, weight, None, b.stride, b.padding, b.dilation, groups)

    def get_delta_weight(self) -> Tensor:
        """The current update ``dW`` (zero when the gate is closed)."""
        if not self.gate:
            return torch.zeros_like(self.base.weight)
        return self.delta_from(**self.factors())

    @property
    def merged(self) -> bool:
        return self._backup is not None

    @torch.no_grad()
    def merge(self) -> None:
        """Add ``dW`` into the base kernel (no per-pixel cost afterwards)."""
        if self.merged:
            raise RuntimeError("LoRAConv is already merged")
        if not self.gate:
            return
        delta = self.get_delta_weight()
        if not torch.isfinite(delta).all():
            raise ValueError("Refusing to merge a non-finite update")
        self._backup = self.base.weight.detach().clone()
        self.base.weight.add_(delta)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the exact original kernel."""
        if self._backup is not None:
            self.base.weight.copy_(self._backup)
            self._backup = None

    # -- forward -----------------------------------------------------------
    def conv(self, x: Tensor, weight: Tensor) -> Tensor:
        """The base convolution with ``weight`` in place of its kernel."""
        b = self.base
        if self.transposed:
            return F.conv_transpose2d(
                x, weight, b.bias, b.stride, b.padding, b.output_padding, 1, b.dilation
            )
        return F.conv2d(x, weight, b.bias, b.stride, b.padding, b.dilation)

    def forward(self, x: Tensor) -> Tensor:
        """The base convolution, merged or closed; else with the update of its
        factors (per image of ``x`` when they are stacked per image, as a
        trainer passes them with ``torch.func.functional_call``)."""
        if self.merged or not self.gate:
            return self.base(x)
        factors = self.factors()
        if factors["B"].dim() == 3:  # one update per image of x
            return self.base(x) + self.branch(x, **factors)
        return self.conv(x, self.base.weight + self.delta_from(**factors))

    def extra_repr(self) -> str:
        return f"rank={self.rank}, form={self.form!r}, gate={self.gate}"


def _save_base_keys(module, state_dict, prefix, local_metadata):
    """Store ``prefix.base.weight`` as ``prefix.weight`` (host layout)."""
    for key in [k for k in state_dict if k.startswith(prefix + "base.")]:
        state_dict[prefix + key[len(prefix) + 5 :]] = state_dict.pop(key)


def _load_base_keys(state_dict, prefix, *args):
    """Accept host keys ``prefix.weight``/``prefix.bias`` for the wrapped conv."""
    for name in ("weight", "bias"):
        if prefix + name in state_dict:
            state_dict[prefix + "base." + name] = state_dict.pop(prefix + name)
