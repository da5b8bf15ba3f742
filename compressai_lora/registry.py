"""Registration of the ``-lora`` models into CompressAI's registries."""

from __future__ import annotations

import compressai.registry
import compressai.zoo
import compressai.zoo.image

from .zoo import image_models, model_architectures

__all__ = ["register_models", "host_registries"]


def host_registries() -> dict[str, dict]:
    """The host dictionaries we register into, by dotted name."""
    return {
        "compressai.registry.MODELS": compressai.registry.MODELS,
        "compressai.zoo.image_models": compressai.zoo.image_models,
        "compressai.zoo.models": compressai.zoo.models,
        "compressai.zoo.image.model_architectures": (
            compressai.zoo.image.model_architectures
        ),
    }


def register_models() -> None:
    """Add every ``-lora`` model to the host registries.

    Idempotent; raises ``RuntimeError`` (and registers nothing) if a name is
    already taken by a different object.
    """
    sources = {
        "compressai.registry.MODELS": model_architectures,
        "compressai.zoo.image_models": image_models,
        "compressai.zoo.models": image_models,
        "compressai.zoo.image.model_architectures": model_architectures,
    }
    entries = [(reg, where, sources[where]) for where, reg in host_registries().items()]
    for target, where, source in entries:
        for name, obj in source.items():
            if name in target and target[name] is not obj:
                raise RuntimeError(
                    f"{where}[{name!r}] is already registered to {target[name]!r}; "
                    "compressai_lora refuses to overwrite it"
                )
    for target, _, source in entries:
        target.update(source)
