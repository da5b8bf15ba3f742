"""Command-line flags of the per-image adaptation, shared by our tools.

``add_adaptation_args(parser)`` adds the group; ``adapt_config_from_args``
turns the parsed flags into an :class:`~compressai_lora.adapt.AdaptConfig`:
the preset first, then the tool's defaults (metric, lambda), then the flags
the user gave (``--lr`` sets both learning rates, ``--refine-lr`` and
``--adapt-lr`` override one phase).
"""

from __future__ import annotations

import argparse
from typing import Any

from ..adapt.config import LR_SCHEDULES, PRESETS, AdaptConfig
from ..host import ArgumentGroup
from ..layers import UPDATE_FORMS
from . import distributed

__all__ = [
    "add_adaptation_args",
    "adapt_config_from_args",
    "adaptation_flags_given",
    "default_threads",
]

#: flag dest -> AdaptConfig field (flags left at None keep the preset's value)
_FIELDS = {
    "refine_steps": "refine_steps",
    "adapt_steps": "adapt_steps",
    "refine_lr": "refine_lr",
    "adapt_lr": "adapt_lr",
    "lr_schedule": "lr_schedule",
    "rank": "rank",
    "form": "form",
    "lmbda": "lmbda",
    "seed": "seed",
    "threads": "threads",
    "budget": "time_budget",
    "batch_size": "batch_size",  # eval_model's --batch-size
}


def add_adaptation_args(parser: argparse.ArgumentParser) -> ArgumentGroup:
    """Add the adaptation argument group (used only by ``-lora`` models).

    Every flag defaults to None (``--no-adapt``: False), so that the preset's
    values apply and a tool can tell which flags were given.
    """
    g = parser.add_argument_group(
        "instance adaptation (-lora architectures)",
        "per-image adaptation of -lora models (Lv et al., ACM MM 2023); "
        "unset flags take the preset's value",
    )
    g.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="named adaptation settings: default (100 + 25 steps), fast "
        "(20 + 30), medium (100 + 150), slow (400 + 350) or paper (2000 + 2000 "
        "steps, rank 2: slow's trajectory, continued) (default: default)",
    )
    g.add_argument(
        "--no-adapt",
        action="store_true",
        help="no refinement and no update: the -lora model codes as its base codec",
    )
    g.add_argument(
        "--refine-steps", type=int, metavar="N", help="latent refinement steps"
    )
    g.add_argument("--adapt-steps", type=int, metavar="N", help="decoder-update steps")
    g.add_argument(
        "--lr",
        type=float,
        metavar="LR",
        help="learning rate of both phases (see --refine-lr, --adapt-lr)",
    )
    g.add_argument(
        "--refine-lr", type=float, metavar="LR", help="learning rate of refinement"
    )
    g.add_argument(
        "--adapt-lr", type=float, metavar="LR", help="learning rate of the update"
    )
    g.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        help="learning rate over each phase: constant, or cosine (held for the "
        "first half of its span, then decayed to a tenth) (default: the "
        "preset's; constant in fast, cosine in the others)",
    )
    g.add_argument(
        "--anneal",
        type=int,
        nargs=2,
        metavar=("R", "A"),
        help="steps over which the refinement's temperature and rate (R) and "
        "the update's rate after its warm-up (A) anneal, whatever the phase's "
        "length: more steps continue the same trajectory; 0 stretches a "
        "schedule over its phase (default: the preset's; 100 25 in default, "
        "400 250 in slow and paper, 0 0 in fast and medium)",
    )
    g.add_argument("--rank", type=int, metavar="R", help="rank of the decoder update")
    g.add_argument("--form", choices=UPDATE_FORMS, help="update form of the adapters")
    g.add_argument(
        "--lmbda",
        type=float,
        metavar="L",
        help="RD trade-off of the adaptation loss (default: the quality's "
        "lambda; with a checkpoint its meta['lmbda'])",
    )
    g.add_argument(
        "--seed", type=int, metavar="S", help="random seed (same seed, same bytes)"
    )
    g.add_argument(
        "--budget",
        type=float,
        metavar="SECONDS",
        help="time for the adaptation: stop there and send the best found so far",
    )
    g.add_argument(
        "--threads",
        type=int,
        metavar="T",
        help="torch threads while adapting (default: the CPUs this process may "
        "run on, shared by the ranks of a node; the bytes depend on it)",
    )
    return g


def adaptation_flags_given(args: argparse.Namespace) -> bool:
    """Whether any adaptation flag was given (to warn when they do nothing)."""
    dests = (*_FIELDS, "lr", "anneal")
    given = (getattr(args, dest, None) is not None for dest in dests)
    return getattr(args, "no_adapt", False) or (
        getattr(args, "preset", None) is not None or any(given)
    )


def default_threads() -> int:
    """The adaptation's threads when ``--threads`` is not given: the CPUs this
    process may run on, shared by the node's torchrun ranks."""
    return distributed.rank_share(distributed.cpu_count())


def adapt_config_from_args(args: argparse.Namespace, **defaults: Any) -> AdaptConfig:
    """AdaptConfig from the preset, then ``defaults``, then the flags given.

    Raises:
        ValueError: an invalid value (from :class:`AdaptConfig`).
    """
    changes = dict(defaults)
    if getattr(args, "lr", None) is not None:
        changes["refine_lr"] = changes["adapt_lr"] = args.lr
    for dest, field in _FIELDS.items():
        value = getattr(args, dest, None)
        if value is not None:
            changes[field] = value
    if getattr(args, "anneal", None) is not None:
        refine, adapt = args.anneal
        if min(refine, adapt) < 0:
            raise ValueError(f"--anneal steps must be >= 0, got {refine} {adapt}")
        changes["refine_anneal"] = refine or None
        changes["adapt_anneal"] = adapt or None
    if getattr(args, "no_adapt", False):
        changes["enabled"] = False
    if changes.get("threads") is None:  # the host's own work keeps one thread
        changes["threads"] = default_threads()
    return AdaptConfig.preset(getattr(args, "preset", None) or "default", **changes)
