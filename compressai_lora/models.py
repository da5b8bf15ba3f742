"""Adapter-enabled variants of CompressAI's image codecs.

Each ``<Host>LoRA`` class subclasses the host model and wraps chosen decoder
convolutions (``g_s``) in :class:`~compressai_lora.layers.LoRAConv`.  Its
bitstream carries one more ``strings`` entry, ``[update_bytes]``, holding the
per-image low-rank decoder update (see :mod:`compressai_lora.update_stream`),
so the host's ``sum(len(s[0]) for s in strings)`` counts it.  With no update
the latent strings and reconstruction are the host's, bit for bit.

Method: Lv et al., "Dynamic Low-Rank Instance Adaptation for Universal Neural
Image Compression", ACM MM 2023.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional, Sequence

import torch
from compressai.models import (
    Cheng2020Anchor,
    Cheng2020Attention,
    FactorizedPrior,
    JointAutoregressiveHierarchicalPriors,
    MeanScaleHyperprior,
    ScaleHyperprior,
)
from torch import Tensor

from . import latent_strings, update_stream
from .adapt.config import AdaptConfig
from .adapt.engine import adapt_images
from .latents import latent_terms
from .layers import LoRAConv
from .padding import per_image_paddings
from .strings import batch_strings, image_strings

__all__ = [
    "LoRAModelMixin",
    "batch_strings",
    "image_strings",
    "FactorizedPriorLoRA",
    "ScaleHyperpriorLoRA",
    "MeanScaleHyperpriorLoRA",
    "JointAutoregressiveHierarchicalPriorsLoRA",
    "Cheng2020AnchorLoRA",
    "Cheng2020AttentionLoRA",
]

#: The four (transposed) convolutions of the bmshj2018/mbt2018 decoders.
_BALLE_G_S = ("g_s.0", "g_s.2", "g_s.4", "g_s.6")


def _cheng_g_s(res_blocks: Sequence[int], up_blocks: Sequence[int]) -> tuple:
    convs = [f"g_s.{i}.conv{j}" for i in res_blocks for j in (1, 2)]
    return tuple(sorted(convs + [f"g_s.{i}.conv" for i in up_blocks]))


class LoRAModelMixin:
    """Adapter plumbing shared by every ``-lora`` model.

    Subclasses list the adapted layers in ``lora_layers`` (dotted module
    paths).  Keyword arguments ``rank`` and ``form`` configure the adapters.
    """

    lora_layers: tuple[str, ...] = ()
    #: zoo name of the host architecture; ours is ``f"{host_arch}-lora"``
    host_arch: str = ""

    def __init__(
        self,
        *args: Any,
        rank: int = 2,
        form: str = "separable",
        adapt: Optional[AdaptConfig] = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        cfg = adapt if adapt is not None else AdaptConfig(rank=rank).replace(form=form)
        for path in self.lora_layers:
            parent_path, _, attr = path.rpartition(".")
            parent = self.get_submodule(parent_path)
            setattr(parent, attr, LoRAConv(getattr(parent, attr), cfg.rank, cfg.form))
        self.adapt_config = cfg
        #: lambda of the quality level the zoo built this model for (or None)
        self.default_lmbda: Optional[float] = None
        #: statistics of the last ``compress()`` call (choice, bits, times...);
        #: for a batch only ``{"batch_size": B}``, see ``last_adaptations``
        self.last_adaptation: dict[str, Any] = {}
        #: per image, the statistics of the last ``compress()`` call
        self.last_adaptations: list[dict[str, Any]] = []
        #: what ``decompress`` gives for the last adapted ``compress()``
        #: (decoded from the real strings while choosing them; None when the
        #: last call did not adapt)
        self.last_reconstruction: Optional[Tensor] = None
        self._input_padding: tuple = (0, 0, 0, 0)  # or one per image

    @property
    def adapt_config(self) -> AdaptConfig:
        """Adaptation settings used by ``compress()``; rank/form shape the adapters."""
        return self._adapt_config

    @adapt_config.setter
    def adapt_config(self, cfg: AdaptConfig) -> None:
        if not isinstance(cfg, AdaptConfig):
            raise TypeError(f"adapt_config must be an AdaptConfig, got {type(cfg)}")
        adapters = self.adapters().values()
        if any(m.rank != cfg.rank or m.form != cfg.form for m in adapters):
            self.configure_adapters(cfg.rank, cfg.form)
        self._adapt_config = cfg

    @classmethod
    def from_state_dict(
        cls,
        state_dict,
        rank: int = 2,
        form: str = "separable",
        adapt: Optional[AdaptConfig] = None,
    ):
        """Host ``from_state_dict`` (base checkpoints load strictly), then adapters."""
        net = super().from_state_dict(state_dict)
        net.adapt_config = (
            adapt if adapt is not None else AdaptConfig(rank=rank).replace(form=form)
        )
        return net

    def configure_adapters(self, rank: int = 2, form: str = "separable") -> None:
        """Set rank and update form of every adapter (drops any update).

        Prefer setting ``adapt_config``, which calls this and keeps both in step.
        """
        for path, m in self.adapters().items():
            if m.form == form:
                m.reset(rank)  # unmerges first
                continue
            m.unmerge()  # the new adapter must wrap the exact original kernel
            parent_path, _, attr = path.rpartition(".")
            setattr(self.get_submodule(parent_path), attr, LoRAConv(m.base, rank, form))

    # -- adapters ----------------------------------------------------------
    def adapters(self) -> dict[str, LoRAConv]:
        """Adapted layers, in bitstream order."""
        return {path: self.get_submodule(path) for path in self.lora_layers}

    @property
    def lora_rank(self) -> int:
        return next(iter(self.adapters().values())).rank

    def reset_adapters(self, rank: Optional[int] = None) -> None:
        """Close every gate and zero every factor (optionally change rank)."""
        for m in self.adapters().values():
            m.reset(rank)

    def update_fingerprint(self) -> int:
        return update_stream.fingerprint(self.host_arch, self.adapters())

    def quantized_update(self, step_code: int) -> dict[int, update_stream.LayerUpdate]:
        """Current factors of the open layers, quantized as they are sent."""
        return {
            i: update_stream.quantize(m.factors(), step_code)
            for i, m in enumerate(self.adapters().values())
            if m.gate
        }

    def encode_update(self, step_code: int = update_stream.DEFAULT_STEP_CODE) -> bytes:
        """Serialize the current adapter state (quantized) to update bytes."""
        return self.encode_update_from(self.quantized_update(step_code), step_code)

    def encode_update_from(
        self, updates: dict[int, update_stream.LayerUpdate], step_code: int
    ) -> bytes:
        """Serialize quantized ``{layer index: update}`` for this model."""
        return update_stream.encode_update(
            self.update_fingerprint(),
            self.lora_rank,
            len(self.lora_layers),
            updates,
            step_code,
        )

    def decode_update(self, data: bytes) -> dict[int, update_stream.LayerUpdate]:
        """Parse update bytes made for this model; raises ValueError if invalid."""
        adapters = list(self.adapters().values())
        return update_stream.decode_update(
            data,
            self.update_fingerprint(),
            self.lora_rank,
            [m.factor_shapes() for m in adapters],
        )

    def load_update(self, updates: dict[int, update_stream.LayerUpdate]) -> None:
        """Set the adapters to dequantized ``updates`` (other gates closed)."""
        for i, m in enumerate(self.adapters().values()):
            m.reset()
            if i in updates:
                m.set_factors(gate=True, **updates[i].dequantized())

    def _adapter_state(self) -> list[tuple[bool, dict[str, Tensor]]]:
        return [(m.gate, m.factors()) for m in self.adapters().values()]

    def _restore_adapter_state(self, state) -> None:
        for m, (gate, factors) in zip(self.adapters().values(), state):
            m.unmerge()
            m.set_factors(gate=gate, **factors)

    def merge_adapters(self) -> None:
        for m in self.adapters().values():
            m.merge()

    # -- host API ----------------------------------------------------------
    def host_compress(self, x: Tensor) -> dict[str, Any]:
        """The host model's ``compress`` (latent strings only)."""
        return super().compress(x)

    def host_decompress(self, strings: list, shape) -> dict[str, Tensor]:
        """The host model's ``decompress`` of latent strings."""
        return super().decompress(strings, shape)

    @contextlib.contextmanager
    def input_padding(self, padding: Sequence) -> Iterator[None]:
        """Within the block, inputs carry ``padding`` (left, right, top, bottom).

        The padding CompressAI's tools add (``compute_padding(h, w,
        min_div=2**6)``); the adaptation then optimizes and costs only the
        image's own pixels.  Outside any block the whole input is the image.
        For a batch, ``padding`` is one such tuple for every image or a
        sequence of them, one per image.
        """
        saved = self._input_padding
        self._input_padding = per_image_paddings(padding)  # checks the values
        try:
            yield
        finally:
            self._input_padding = saved

    def adapts(self) -> bool:
        """Whether ``compress``/eval ``forward`` run the per-image adaptation."""
        cfg = self.adapt_config
        return cfg.enabled and (cfg.refine_steps > 0 or cfg.adapt_steps > 0)

    def _adapt(self, x: Tensor) -> list:
        """Each image's cheapest candidate (``adapt_config.batch_size`` images
        adapted together); sets ``last_adaptation(s)``/``last_reconstruction``."""
        state = self._adapter_state()
        self.reset_adapters()
        try:
            results = adapt_images(
                self, x, self.adapt_config, paddings=self._input_padding
            )
        finally:
            self._restore_adapter_state(state)
        bests = [best for best, _ in results]
        self.last_adaptations = [stats for _, stats in results]
        if len(results) == 1:
            self.last_adaptation = self.last_adaptations[0]
            self.last_reconstruction = bests[0].x_hat
        else:
            self.last_adaptation = {"batch_size": len(results)}
            self.last_reconstruction = torch.cat([b.x_hat for b in bests])
        return bests

    def compress(self, x: Tensor) -> dict[str, Any]:
        """Adapt to ``x`` (if enabled) and code it: host strings + ``[update]``.

        With adaptation disabled (or 0 steps) this is the host's ``compress``
        plus the current adapter state (normally no update: 0 bytes), one
        update entry for the whole batch.  An adapted batch (Bx3xHxW) gives,
        as the host's, one string per image in each entry, the update entry
        too (:func:`image_strings`: each image's own strings).
        """
        if not self.adapts():
            out = super().compress(x)
            out["strings"].append([self.encode_update()])
            self.last_adaptation = {"choice": "disabled"}
            self.last_adaptations = [{"choice": "disabled"} for _ in x]
            self.last_reconstruction = None
            return out
        bests = self._adapt(x)
        strings = batch_strings([b.strings + [[b.update]] for b in bests])
        return {"strings": strings, "shape": bests[0].shape}

    def forward(self, x: Tensor) -> dict[str, Any]:
        """Host ``forward``; in eval mode with adaptation, the adapted result.

        The adapted result's likelihoods include ``"update"`` (1/256 per byte
        of the update), so the host's entropy-estimation bpp counts it.
        """
        if self.training or not self.adapts():
            return super().forward(x)
        bests = self._adapt(x)
        y = torch.cat([b.y for b in bests])
        z = None if bests[0].z is None else torch.cat([b.z for b in bests])
        with torch.no_grad():
            _, likelihoods = latent_terms(self, y, z, torch.round)
        n_bytes = sum(len(b.update) for b in bests)
        likelihoods["update"] = x.new_full((n_bytes,), 1 / 256)
        x_hat = torch.cat([b.x_hat for b in bests])[..., : x.size(-2), : x.size(-1)]
        return {"x_hat": x_hat, "likelihoods": likelihoods}

    def decompress(self, strings: list, shape) -> dict[str, Tensor]:
        """Parse and apply the update (merged weights), decode, restore.

        The latent strings are length-checked and zero-padded first (see
        :mod:`compressai_lora.latent_strings`): corrupted strings raise
        ``ValueError`` or decode the same way every time.
        """
        if not isinstance(strings, (list, tuple)) or len(strings) < 2:
            raise ValueError(
                "strings must be the host's latent strings plus one update entry"
            )
        entry = strings[-1]
        if isinstance(entry, (list, tuple)) and len(entry) > 1:  # one per image
            each = [self.decompress(s, shape) for s in image_strings(strings)]
            return {"x_hat": torch.cat([d["x_hat"] for d in each])}
        if not isinstance(entry, (list, tuple)) or len(entry) != 1:
            raise ValueError("the last strings entry must be [update_bytes]")
        updates = self.decode_update(entry[0])
        latent = latent_strings.check_and_pad(self, list(strings[:-1]), shape)
        state = self._adapter_state()
        try:
            self.load_update(updates)
            self.merge_adapters()
            with torch.no_grad():
                return super().decompress(latent, shape)
        finally:
            self._restore_adapter_state(state)


class FactorizedPriorLoRA(LoRAModelMixin, FactorizedPrior):
    """bmshj2018-factorized with low-rank adapters.

    Adapts all four transposed convolutions of ``g_s`` (``g_s.0/2/4/6``): the
    decoder has no other convolutions, and the gates decide per image which
    ones pay for their bits (the last, ``N -> 3``, is the cheapest and moves
    colours directly; the first ones reshape textures).
    """

    host_arch = "bmshj2018-factorized"
    lora_layers = _BALLE_G_S


class ScaleHyperpriorLoRA(LoRAModelMixin, ScaleHyperprior):
    """bmshj2018-hyperprior with low-rank adapters on ``g_s.0/2/4/6``.

    Same choice as :class:`FactorizedPriorLoRA`: the four transposed
    convolutions are the whole synthesis transform.
    """

    host_arch = "bmshj2018-hyperprior"
    lora_layers = _BALLE_G_S


class MeanScaleHyperpriorLoRA(LoRAModelMixin, MeanScaleHyperprior):
    """mbt2018-mean with low-rank adapters on ``g_s.0/2/4/6``.

    Same choice as :class:`FactorizedPriorLoRA`.
    """

    host_arch = "mbt2018-mean"
    lora_layers = _BALLE_G_S


class JointAutoregressiveHierarchicalPriorsLoRA(
    LoRAModelMixin, JointAutoregressiveHierarchicalPriors
):
    """mbt2018 with low-rank adapters on ``g_s.0/2/4/6``.

    Same choice as :class:`FactorizedPriorLoRA`; only ``g_s`` changes, so the
    autoregressive entropy model and its latent strings are the host's.
    """

    host_arch = "mbt2018"
    lora_layers = _BALLE_G_S


class Cheng2020AnchorLoRA(LoRAModelMixin, Cheng2020Anchor):
    """cheng2020-anchor with the paper's 11 adapted convolutions of ``g_s``.

    ``conv1``/``conv2`` of the four ResidualBlocks (``g_s.0/2/4/6``) and
    ``conv`` of the three ResidualBlockUpsample (``g_s.1/3/5``): the same
    layers as in cheng2020-attn, which has attention blocks in between.
    """

    host_arch = "cheng2020-anchor"
    lora_layers = _cheng_g_s((0, 2, 4, 6), (1, 3, 5))


class Cheng2020AttentionLoRA(LoRAModelMixin, Cheng2020Attention):
    """cheng2020-attn with the paper's 11 adapted convolutions of ``g_s``.

    ``conv1``/``conv2`` of the ResidualBlocks ``g_s.1/3/6/8`` and ``conv`` of
    the ResidualBlockUpsample ``g_s.2/4/7`` (Lv et al., ACM MM 2023).
    """

    host_arch = "cheng2020-attn"
    lora_layers = _cheng_g_s((1, 3, 6, 8), (2, 4, 7))
