"""The strings of a batch, per image and together.

As the host's ``compress`` gives them, a batch's ``strings`` hold one entry
per latent group plus, for the ``-lora`` models, the update entry (the last);
each entry holds one string per image.  Adaptation off, the update entry
holds one update for the whole batch.
"""

from __future__ import annotations

__all__ = ["batch_strings", "image_strings"]


def batch_strings(per_image: list[list]) -> list[list]:
    """The batch's entries from each image's own ``[[s], [s], ...]``."""
    return [[s for one in group for s in one] for group in zip(*per_image)]


def image_strings(strings: list) -> list[list]:
    """Each image's own strings (for ``decompress``); an update entry of one
    string (the last entry) goes to every image.

    Raises:
        ValueError: the entries do not hold one string per image.
    """
    if not all(isinstance(g, (list, tuple)) and g for g in strings):
        raise ValueError("every strings entry must be a non-empty list")
    n = max(len(g) for g in strings)
    if any(len(g) != n for g in strings[:-1]) or len(strings[-1]) not in (1, n):
        raise ValueError(
            f"the last strings entry and every other must hold {n} strings, one "
            "per image"
        )
    return [[[g[i if len(g) > 1 else 0]] for g in strings] for i in range(n)]
