"""Per-image instance adaptation (latent refinement + gated low-rank update)."""

from ..lambdas import LAMBDAS, lmbda_for
from .config import PRESETS, AdaptConfig, Tuning

__all__ = ["AdaptConfig", "LAMBDAS", "PRESETS", "Tuning", "lmbda_for"]
