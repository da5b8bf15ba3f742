"""Zoo of the ``-lora`` models (registered into CompressAI's zoo on import)."""

from .image import (
    bmshj2018_factorized_lora,
    bmshj2018_hyperprior_lora,
    cheng2020_anchor_lora,
    cheng2020_attn_lora,
    image_models,
    mbt2018_lora,
    mbt2018_mean_lora,
    model_architectures,
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
