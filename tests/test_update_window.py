"""The update trained on random windows of the image (``update_window``).

The factors are shared by every pixel, so each step may train on a random
window: its cost does not grow with the image.  The windows follow the seed
(same seed, same bytes), a window as large as the image is the whole image,
and each window's loss is the image's own pixels in it, less a margin.
"""

from __future__ import annotations

import pytest
import torch
from test_batched import _alone, _assert_same_result, _compress
from test_determinism import NAMES, _image, _model  # noqa: E402  (same directory)

from compressai_lora.adapt.candidates import Target
from compressai_lora.adapt.update import WINDOW_MARGIN, ImageUpdate

SETTINGS = dict(refine_steps=3, adapt_steps=25, gate_steps=8, lmbda=2.0)


def _run(model, x, **changes) -> tuple[list, list[float], dict]:
    """Strings, the update's per-step losses and the stats."""
    losses: list[float] = []
    changes.setdefault("update_window", None)  # not the last run's
    model.adapt_config = model.adapt_config.replace(
        **SETTINGS,
        **changes,
        callback=lambda i: i["phase"] == "adapt" and losses.append(i["loss"]),
    )
    with torch.no_grad():
        out = model.compress(x)
    return out["strings"], losses, dict(model.last_adaptation)


@pytest.mark.parametrize("name", NAMES)
def test_windowed_update_follows_the_seed(name):
    model, x = _model(name), _image(0, 128)  # 8 x 8 latents; windows of 4 x 4
    first, losses, stats = _run(model, x, update_window=64, seed=1)
    again, losses_again, _ = _run(model, x, update_window=64, seed=1)
    assert again == first and losses_again == losses
    assert len(losses) == stats["adapt_iters"] > 8
    _, other, _ = _run(model, x, update_window=64, seed=2)
    _, whole, _ = _run(model, x, seed=1)
    assert other != losses and whole != losses  # the windows move with the seed


def test_a_window_as_large_as_the_image_is_the_whole_image():
    model, x = _model("mbt2018-mean-lora"), _image(0, 64)
    whole = _run(model, x)[:2]  # strings and losses
    assert _run(model, x, update_window=64)[:2] == whole
    assert _run(model, x, update_window=10_000)[:2] == whole


def test_windows_stay_on_the_grid_and_leave_their_margin_out():
    x = _image(0, 128)  # 8 x 8 latents of 16 pixels
    s = ImageUpdate.__new__(ImageUpdate)  # only what window() reads
    s.gen, s.target = torch.Generator().manual_seed(0), Target(x, (0, 0), 1.0, "mse")
    seen, m = set(), WINDOW_MARGIN * 16
    for _ in range(200):
        (r, c), t = s.window((4, 5), (8, 8), 16)
        assert 0 <= r <= 4 and 0 <= c <= 3
        seen.add((r, c))
        top, left = (m if r > 0 else 0), (m if c > 0 else 0)
        bottom, right = (m if r + 4 < 8 else 0), (m if c + 5 < 8 else 0)
        assert t.offset == (top, left)
        rows = slice(r * 16 + top, (r + 4) * 16 - bottom)
        cols = slice(c * 16 + left, (c + 5) * 16 - right)
        assert torch.equal(t.x, x[..., rows, cols])
    assert len(seen) == 5 * 4  # every place drawn


def test_window_target_is_the_images_own_pixels():
    x = torch.rand(1, 3, 40, 50)
    target = Target(x, (8, 6), 1.0, "mse")  # the image sits at (8, 6) padded
    t = target.window(range(0, 32), range(16, 64), origin=(0, 16))
    assert t.offset == (8, 0)  # the window's first own row is its 9th
    assert torch.equal(t.x, x[..., 0:24, 10:50])
    with pytest.raises(ValueError, match="own pixels"):
        target.window(range(0, 8), range(0, 64), origin=(0, 0))  # padding only


def test_batched_windows_give_each_image_its_unbatched_result():
    model = _model("bmshj2018-hyperprior-lora")
    x = torch.cat([_image(s, 128) for s in (0, 1)])
    model.adapt_config = model.adapt_config.replace(
        refine_steps=4, adapt_steps=20, gate_steps=6, lmbda=0.05, update_window=64
    )
    alone = _alone(model, x)
    _, stats, _ = _compress(model, x, batch_size=2)
    for n, (_, st, _) in enumerate(alone):
        _assert_same_result(stats[n], st)
