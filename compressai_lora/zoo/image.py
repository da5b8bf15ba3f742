"""Zoo factories of the ``-lora`` models, with the host's signatures and errors.

``pretrained=True`` loads CompressAI's published weights of the base
architecture through ``torch.hub`` (a file already in the hub cache works
offline) into the ``-lora`` model; the adapters start empty.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from torch.hub import load_state_dict_from_url

from .. import host
from ..adapt.config import TUNING_FIELDS, AdaptConfig
from ..lambdas import lmbda_for
from ..models import (
    Cheng2020AnchorLoRA,
    Cheng2020AttentionLoRA,
    FactorizedPriorLoRA,
    JointAutoregressiveHierarchicalPriorsLoRA,
    LoRAModelMixin,
    MeanScaleHyperpriorLoRA,
    ScaleHyperpriorLoRA,
)

__all__ = [
    "image_models",
    "model_architectures",
    "bmshj2018_factorized_lora",
    "bmshj2018_hyperprior_lora",
    "mbt2018_mean_lora",
    "mbt2018_lora",
    "cheng2020_anchor_lora",
    "cheng2020_attn_lora",
]

model_architectures = {
    f"{cls.host_arch}-lora": cls
    for cls in (
        FactorizedPriorLoRA,
        ScaleHyperpriorLoRA,
        MeanScaleHyperpriorLoRA,
        JointAutoregressiveHierarchicalPriorsLoRA,
        Cheng2020AnchorLoRA,
        Cheng2020AttentionLoRA,
    )
}

_CONFIG_FIELDS = {f.name for f in dataclasses.fields(AdaptConfig)} | set(TUNING_FIELDS)


def _adapt_config(metric: str, kwargs: dict) -> AdaptConfig:
    """``adapt=`` and/or AdaptConfig fields given as kwargs (popped)."""
    cfg = kwargs.pop("adapt", None)
    if cfg is not None and not isinstance(cfg, AdaptConfig):
        raise TypeError(f"adapt must be an AdaptConfig, got {type(cfg).__name__}")
    fields = {k: kwargs.pop(k) for k in list(kwargs) if k in _CONFIG_FIELDS}
    cfg = (cfg or AdaptConfig(metric=metric)).replace(**fields)
    return cfg


def _load_model(
    architecture: str,
    metric: str,
    quality: int,
    pretrained: bool = False,
    progress: bool = True,
    **kwargs: Any,
) -> LoRAModelMixin:
    if architecture not in model_architectures:
        raise ValueError(f'Invalid architecture name "{architecture}"')
    cls = model_architectures[architecture]
    host_arch = cls.host_arch
    if metric not in ("mse", "ms-ssim"):
        raise ValueError(f'Invalid metric "{metric}"')
    qualities = sorted(host.zoo_sizes()[host_arch])
    if quality not in qualities:
        raise ValueError(
            f'Invalid quality "{quality}", should be between (1, {qualities[-1]})'
        )
    cfg = _adapt_config(metric, kwargs)
    if pretrained:
        urls = host.zoo_urls().get(host_arch, {}).get(metric, {})
        if quality not in urls:
            raise RuntimeError("Pre-trained model not yet available")
        if kwargs:
            raise TypeError(
                f"unexpected arguments with pretrained=True: {list(kwargs)}"
            )
        state_dict = load_state_dict_from_url(urls[quality], progress=progress)
        model = cls.from_state_dict(host.load_pretrained_state(state_dict), adapt=cfg)
    else:
        model = cls(*host.zoo_sizes()[host_arch][quality], adapt=cfg, **kwargs)
    model.default_lmbda = lmbda_for(quality, metric)
    return model


def _factory(arch: str, cls_name: str, max_quality: int) -> Callable[..., Any]:
    """The zoo function of ``arch``, with the host's signature."""

    def factory(quality, metric="mse", pretrained=False, progress=True, **kwargs):
        return _load_model(arch, metric, quality, pretrained, progress, **kwargs)

    factory.__name__ = factory.__qualname__ = arch.replace("-", "_")
    factory.__doc__ = f"""{arch[: -len("-lora")]} with instance adaptation
    (``{cls_name}``).

    Args:
        quality (int): Quality levels (1: lowest, highest: {max_quality})
        metric (str): Optimized metric, choose from ('mse', 'ms-ssim')
        pretrained (bool): If True, loads the host's pre-trained base weights
        progress (bool): If True, displays a progress bar of the download to stderr
        **kwargs: ``adapt=AdaptConfig(...)`` and/or AdaptConfig fields
            (``refine_steps=100``, ``rank=2``...), then host model options
    """
    return factory


bmshj2018_factorized_lora = _factory(
    "bmshj2018-factorized-lora", "FactorizedPriorLoRA", 8
)
bmshj2018_hyperprior_lora = _factory(
    "bmshj2018-hyperprior-lora", "ScaleHyperpriorLoRA", 8
)
mbt2018_mean_lora = _factory("mbt2018-mean-lora", "MeanScaleHyperpriorLoRA", 8)
mbt2018_lora = _factory("mbt2018-lora", "JointAutoregressiveHierarchicalPriorsLoRA", 8)
cheng2020_anchor_lora = _factory("cheng2020-anchor-lora", "Cheng2020AnchorLoRA", 6)
cheng2020_attn_lora = _factory("cheng2020-attn-lora", "Cheng2020AttentionLoRA", 6)

image_models = {
    "bmshj2018-factorized-lora": bmshj2018_factorized_lora,
    "bmshj2018-hyperprior-lora": bmshj2018_hyperprior_lora,
    "mbt2018-mean-lora": mbt2018_mean_lora,
    "mbt2018-lora": mbt2018_lora,
    "cheng2020-anchor-lora": cheng2020_anchor_lora,
    "cheng2020-attn-lora": cheng2020_attn_lora,
}
