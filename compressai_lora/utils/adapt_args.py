"""Command-line flags of the per-image adaptation, shared by our tools.

``add_adaptation_args(parser)`` adds the group; ``adapt_config_from_args``
turns the parsed flags into an :class:`~compressai_lora.adapt.AdaptConfig`:
the preset first, then the tool's defaults (metric, lambda), then the flags
the user gave.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..adapt.config import PRESETS, AdaptConfig
from ..layers import UPDATE_FORMS

__all__ = ["add_adaptation_args", "adapt_config_from_args"]

#: flag dest -> AdaptConfig field (flags left at None keep the preset's value)
_FIELDS = {
    "refine_steps": "refine_steps",
    "adapt_steps": "adapt_steps",
    "rank": "rank",
    "form": "form",
    "lmbda": "lmbda",
    "seed": "seed",
    "threads": "threads",
}


def add_adaptation_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add the ``adaptation`` argument group (used only by ``-lora`` models)."""
    g = parser.add_argument_group(
        "adaptation",
        "per-image instance adaptation of -lora models (Lv et al., ACM MM 2023); "
        "unset flags take the preset's value",
    )
    g.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="default",
        help="named adaptation settings (default: %(default)s)",
    )
    g.add_argument(
        "--no-adapt",
        action="store_true",
        help="no refinement and no update: the base codec's bitstream",
    )
    g.add_argument("--refine-steps", type=int, help="latent refinement steps")
    g.add_argument("--adapt-steps", type=int, help="decoder-update steps")
    g.add_argument(
        "--lr",
        type=float,
        help="learning rate of the latent refinement and the decoder update",
    )
    g.add_argument("--rank", type=int, help="rank of the decoder update")
    g.add_argument("--form", choices=UPDATE_FORMS, help="update form of the adapters")
    g.add_argument(
        "--lmbda",
        type=float,
        help="RD trade-off (default: the quality's, or the checkpoint's meta)",
    )
    g.add_argument("--seed", type=int, help="seed (same seed, same bytes)")
    g.add_argument(
        "--threads", type=int, help="torch threads while adapting (default: all)"
    )
    return g


def adapt_config_from_args(args: argparse.Namespace, **defaults: Any) -> AdaptConfig:
    """AdaptConfig from the preset, then ``defaults``, then the flags given.

    Raises:
        ValueError: an invalid value (from :class:`AdaptConfig`).
    """
    changes = dict(defaults)
    for dest, field in _FIELDS.items():
        value = getattr(args, dest, None)
        if value is not None:
            changes[field] = value
    if getattr(args, "lr", None) is not None:
        changes["refine_lr"] = changes["adapt_lr"] = args.lr
    if getattr(args, "no_adapt", False):
        changes["enabled"] = False
    return AdaptConfig.preset(getattr(args, "preset", None) or "default", **changes)
