"""Per-image instance adaptation (latent refinement + gated low-rank update)."""

from .config import LAMBDAS, PRESETS, AdaptConfig, lmbda_for

__all__ = ["AdaptConfig", "LAMBDAS", "PRESETS", "lmbda_for"]
