"""Batched adaptation (issue 12, item 2): images adapted together.

Each image of a batch gets its unbatched result up to float rounding (the
same choice, gates, stops; ``J`` within a small relative tolerance), and
decodes, from its own strings alone and in a fresh process, to exactly the
reconstruction the encoder reported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_determinism import _image, _model  # noqa: E402  (same directory)

from compressai_lora.models import batch_strings, image_strings

ROOT = Path(__file__).resolve().parents[1]
#: long enough for gate decisions and real-cost checkpoints
SETTINGS = dict(refine_steps=30, adapt_steps=25, gate_steps=10)
SETTINGS.update(lmbda=0.05)
FAST = dict(refine_steps=4, adapt_steps=15, gate_steps=5)  # an update pays
REL = 2e-3  # J of batched vs unbatched: float reduction order only


def _images(*seeds: int) -> torch.Tensor:
    return torch.cat([_image(s) for s in seeds])


def _compress(model, x, **changes):
    model.adapt_config = model.adapt_config.replace(**changes)
    with torch.no_grad():
        out = model.compress(x)
    return out, list(model.last_adaptations), model.last_reconstruction


def _alone(model, x, paddings=None):
    """Each image of ``x`` compressed on its own: (strings, stats, x_hat)."""
    runs = []
    for n in range(x.size(0)):
        with model.input_padding(paddings[n] if paddings else (0, 0, 0, 0)):
            out, stats, x_hat = _compress(model, x[n : n + 1], batch_size=1)
        runs.append((out["strings"], stats[0], x_hat))
    return runs


def _untimed(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if not k.endswith("_time")}


def _assert_same_result(batched: dict, alone: dict) -> None:
    """The same decisions, and costs equal up to float reduction order."""
    for key in ("choice", "open_gates", "refine_iters", "adapt_iters", "stopped"):
        assert batched.get(key) == alone.get(key), key
    assert [d["phase"] for d in batched["diverged"]] == [
        d["phase"] for d in alone["diverged"]
    ]
    gates, gates0 = batched.get("gates", {}), alone.get("gates", {})
    assert {k: g["open"] for k, g in gates.items()} == {
        k: g["open"] for k, g in gates0.items()
    }
    for name, g in gates.items():
        assert g["dJ"] == pytest.approx(
            gates0[name]["dJ"], abs=REL * alone["J"]["base"]
        )
    assert batched["J"].keys() == alone["J"].keys()
    for name, j in batched["J"].items():
        assert j == pytest.approx(alone["J"][name], rel=REL), name


@pytest.mark.parametrize(
    "name, form", [("bmshj2018-hyperprior-lora", "separable"), ("mbt2018-lora", "full")]
)
def test_batch_gives_each_image_its_unbatched_result(name, form):
    model, x = _model(name), _images(0, 1, 2)
    model.adapt_config = model.adapt_config.replace(**SETTINGS, form=form)
    alone = _alone(model, x)
    out, stats, x_hat = _compress(model, x, batch_size=3)
    assert len(stats) == 3 and model.last_adaptation == {"batch_size": 3}
    for n, (strings, st, rec) in enumerate(alone):
        _assert_same_result(stats[n], st)
        assert stats[n]["batch_size"] == 3
        with torch.no_grad():  # each image decodes from its own strings
            own = model.decompress(image_strings(out["strings"])[n], out["shape"])
        assert torch.equal(own["x_hat"], x_hat[n : n + 1])
    with torch.no_grad():  # and the batch from the batch's strings
        assert torch.equal(
            model.decompress(out["strings"], out["shape"])["x_hat"], x_hat
        )
    assert {st["choice"] for st in stats} == {"update"}


_CHILD = """
import sys, torch
from compressai_lora.zoo import model_architectures
name, ckpt, coded = sys.argv[1:]
model = model_architectures[name].from_state_dict(torch.load(ckpt)).eval()
model.update(force=True)
data = torch.load(coded)
with torch.no_grad():
    for strings, x_hat in zip(data["strings"], data["x_hat"]):
        got = model.decompress(strings, data["shape"])["x_hat"]
        assert torch.equal(got, x_hat), (got - x_hat).abs().max()
print(len(data["strings"]))
"""


def test_batched_bitstreams_decode_in_a_fresh_process(tmp_path):
    """Every image's strings of a batch decode alone, in another process, to
    the reconstruction the encoder reported (an autoregressive model)."""
    name = "cheng2020-anchor-lora"
    model, x = _model(name), torch.cat([_image(3, 32), _image(4, 32)])
    out, stats, x_hat = _compress(model, x, batch_size=2, **FAST)
    assert all(st["choice"] == "update" for st in stats)
    per_image = image_strings(out["strings"])
    assert all(len(s[-1][0]) > 10 for s in per_image)  # updates were sent
    torch.save(model.state_dict(), tmp_path / "w.pth")
    coded = {"strings": per_image, "shape": out["shape"], "x_hat": list(x_hat.split(1))}
    torch.save(coded, tmp_path / "coded.pt")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = [name, str(tmp_path / "w.pth"), str(tmp_path / "coded.pt")]
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, *args], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "2"


def test_batch_size_splits_a_larger_batch():
    """batch_size=2 on 3 images: a batch of 2, then the last image alone,
    which is exactly (bytes) its unbatched result."""
    model, x = _model("bmshj2018-factorized-lora"), _images(0, 1, 2)
    model.adapt_config = model.adapt_config.replace(**FAST)
    seen = []
    callback = lambda info: seen.append(info.get("image"))  # noqa: E731
    alone = _alone(model, x[2:])
    out, stats, x_hat = _compress(model, x, batch_size=2, callback=callback)
    assert [st.get("batch_size") for st in stats] == [2, 2, None]
    assert image_strings(out["strings"])[2] == alone[0][0]
    assert _untimed(stats[2]) == _untimed(alone[0][1])
    assert torch.equal(x_hat[2:], alone[0][2])
    assert set(seen) == {0, 1, 2}  # the callbacks name the image


def test_batch_size_one_codes_each_image_as_alone():
    model, x = _model("bmshj2018-factorized-lora"), _images(5, 6)
    model.adapt_config = model.adapt_config.replace(**FAST)
    alone = _alone(model, x)
    out, stats, x_hat = _compress(model, x, batch_size=1)
    for n, (strings, st, rec) in enumerate(alone):
        assert image_strings(out["strings"])[n] == strings
        assert _untimed(stats[n]) == _untimed(st)
        assert torch.equal(x_hat[n : n + 1], rec)


def test_each_image_has_its_own_padding():
    """Images of other sizes padded to one size: each costs its own pixels."""
    from compressai.ops import compute_padding
    from torch.nn.functional import pad

    model = _model("bmshj2018-hyperprior-lora")
    sizes = [(40, 50), (64, 56)]
    pads = [compute_padding(h, w, min_div=64)[0] for h, w in sizes]
    x = torch.cat(
        [
            pad(_image(n)[..., :h, :w], p)
            for n, ((h, w), p) in enumerate(zip(sizes, pads))
        ]
    )
    alone = _alone(model, x, pads)
    with model.input_padding(pads):
        out, stats, _ = _compress(model, x, batch_size=2)
    for n, (strings, st, _) in enumerate(alone):
        _assert_same_result(stats[n], st)
        n_bytes = sum(len(s[0]) for s in image_strings(out["strings"])[n])
        h, w = sizes[n]
        assert stats[n]["bpp"][stats[n]["choice"]] == pytest.approx(
            8 * n_bytes / (h * w)
        )
    with pytest.raises(ValueError, match="2 paddings for 3 images"):
        with model.input_padding(pads):
            _compress(model, _images(0, 1, 2), batch_size=3)


def test_same_seed_same_bytes_and_rng_untouched():
    model, x = _model("bmshj2018-factorized-lora"), _images(0, 1)
    model.adapt_config = model.adapt_config.replace(**FAST)
    state = torch.random.get_rng_state()
    first = _compress(model, x, batch_size=2)[0]["strings"]
    torch.manual_seed(123)
    assert _compress(model, x, batch_size=2)[0]["strings"] == first
    torch.random.set_rng_state(state)
    _compress(model, x, batch_size=2)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_budget_and_divergence_are_recorded_per_image():
    """A budget stops every image of the batch (each keeps its best); a
    diverged image falls back to its best state, as alone."""
    model, x = _model("bmshj2018-factorized-lora"), _images(0, 1)
    steps = dict(refine_steps=100_000, adapt_steps=100_000, gate_steps=5)
    _, stats, _ = _compress(model, x, batch_size=2, time_budget=1.5, **steps)
    for st in stats:
        assert [s["reason"] for s in st["stopped"]] == ["budget", "budget"]
        assert st["refine_time"] + st["adapt_time"] < 1.5 + 1.0
    _, stats, x_hat = _compress(
        model, x, batch_size=2, time_budget=None, refine_lr=1e30, adapt_lr=1e30, **FAST
    )
    assert torch.isfinite(x_hat).all()
    for st, (_, st_alone, _) in zip(stats, _alone(model, x)):
        assert [d["phase"] for d in st["diverged"]] == ["refine", "adapt"]
        assert st["J"][st["choice"]] <= st["J"]["base"]
        _assert_same_result(st, st_alone)


def test_batch_strings_and_image_strings():
    per_image = [[[b"y0"], [b"z0"], [b"u0"]], [[b"y1"], [b"z1"], [b"u1"]]]
    joined = batch_strings(per_image)
    assert joined == [[b"y0", b"y1"], [b"z0", b"z1"], [b"u0", b"u1"]]
    assert image_strings(joined) == per_image
    shared = [[b"y0", b"y1"], [b"u"]]  # adaptation off: one update for all
    assert image_strings(shared) == [[[b"y0"], [b"u"]], [[b"y1"], [b"u"]]]
    for bad in ([[b"y0"], [b"u0", b"u1"]], [[b"y0", b"y1"], []]):
        with pytest.raises(ValueError, match="strings entry"):
            image_strings(bad)


def test_nothing_hard_codes_a_device():
    """Generators and tensors follow the model's device (CPU by default)."""
    package = ROOT / "compressai_lora"
    sources = [*sorted((package / "adapt").glob("*.py"))]
    sources += [package / "models.py", package / "layers.py"]
    for path in sources:
        text = path.read_text()
        for word in ('"cpu"', "'cpu'", ".cpu()", "cuda"):
            assert word not in text, (path.name, word)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_batched_adaptation_on_cuda():
    model, x = _model("bmshj2018-hyperprior-lora").cuda(), _images(0, 1).cuda()
    model.update(force=True)
    out, stats, x_hat = _compress(model, x, batch_size=2)
    assert x_hat.is_cuda and all(st["choice"] for st in stats)
    with torch.no_grad():
        for n, strings in enumerate(image_strings(out["strings"])):
            own = model.decompress(strings, out["shape"])["x_hat"]
            assert torch.equal(own, x_hat[n : n + 1])
