"""The bench's classical anchors (Pillow's JPEG, WebP, AVIF; JPEG XL where its
plugin is installed): real bytes, PSNR of the decoded file, the cache, the
domain curves and BD against them, on tiny images."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, features

from compressai_lora.utils.bd import bd_psnr, bd_rate
from compressai_lora.utils.bench import anchors
from compressai_lora.utils.bench.compare import anchor_curve, bd_cell, bd_vs_anchors
from compressai_lora.utils.bench.errors import BenchError

AVAILABLE = [n for n, c in anchors.CODECS.items() if anchors.unavailable(c) is None]


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A gradient with a little noise: compressible, not trivial."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x + y) % 64 * 4])
    rgb = rgb.transpose(1, 2, 0) + rng.randn(h, w, 3) * 8
    return np.clip(rgb, 0, 255).round().astype(np.uint8)


def _host_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR as CompressAI's eval_model computes it (``compute_metrics``)."""
    from compressai.utils.eval_model.__main__ import psnr

    def t(x):  # the host's read_image and rounding
        x = torch.from_numpy(np.array(x)).permute(2, 0, 1)[None].float().div(255)
        return (x * 255).clamp(0, 255).round()

    return psnr(t(a), t(b)).item()


def test_jpeg_webp_avif_available_here():
    """This Pillow has them (the bench's default anchors); skip notes otherwise."""
    assert {"jpeg", "webp"} <= set(AVAILABLE)
    assert ("avif" in AVAILABLE) == bool(features.check("avif"))


@pytest.mark.parametrize("codec", AVAILABLE)
@pytest.mark.parametrize("size", [(16, 16), (24, 40)])
def test_bytes_and_psnr_of_the_file(tmp_path, codec, size):
    """bytes = the file's length, bpp from it, PSNR of the file decoded back."""
    c = anchors.CODECS[codec]
    rgb = _image(*size)
    point = anchors.code_image(rgb, c, 50)
    data = anchors.encode(rgb, c, 50)
    path = tmp_path / f"x.{codec}"
    path.write_bytes(data)
    assert point["bytes"] == len(data) == path.stat().st_size
    assert point["bpp"] == pytest.approx(8 * len(data) / (size[0] * size[1]))
    with Image.open(path) as im:  # an ordinary file Pillow reads back
        assert im.size == (size[1], size[0])
        rec = np.asarray(im.convert("RGB"))
    assert np.array_equal(rec, anchors.decode(data))
    assert point["psnr-rgb"] == pytest.approx(_host_psnr(rgb, rec), abs=1e-4)
    assert 15 < point["psnr-rgb"] < 60


@pytest.mark.parametrize("codec", AVAILABLE)
def test_higher_quality_more_bytes_higher_psnr(codec):
    c = anchors.CODECS[codec]
    rgb = _image(24, 40, seed=1)
    low, mid, high = (anchors.code_image(rgb, c, q) for q in (5, 50, 95))
    assert low["bytes"] < mid["bytes"] < high["bytes"]
    assert low["psnr-rgb"] < mid["psnr-rgb"] < high["psnr-rgb"]


def test_psnr_rgb_by_hand():
    a = np.zeros((2, 2, 3), np.uint8)
    b = a.copy()
    assert anchors.psnr_rgb(a, b) == math.inf
    b[0, 0, 0] = 12  # MSE 144 / 12
    assert anchors.psnr_rgb(a, b) == pytest.approx(10 * math.log10(255**2 / 12))


def test_unavailable_codecs_are_skipped_with_a_note(monkeypatch):
    check = features.check
    monkeypatch.setattr(features, "check", lambda f: f != "avif" and check(f))
    ghost = anchors.Codec("jxl", "JPEG XL", "JXL", {}, None, "no_such_x", "no-such-x")
    monkeypatch.setitem(anchors.CODECS, "jxl", ghost)
    codecs, skipped = anchors.select_codecs(None)
    assert [c.name for c in codecs] == ["jpeg", "webp"]
    assert skipped == {
        "avif": f"AVIF: Pillow {Image.__version__} has no avif",
        "jxl": "JPEG XL: needs `pip install no-such-x`",
    }
    codecs, skipped = anchors.select_codecs(["avif", "jpeg", "jpeg"])
    assert [c.name for c in codecs] == ["jpeg"] and list(skipped) == ["avif"]
    assert anchors.select_codecs(["none"]) == ([], {})
    with pytest.raises(BenchError, match="none cannot be combined"):
        anchors.select_codecs(["none", "jpeg"])


def test_image_points_cache_and_resume(tmp_path, monkeypatch):
    img, cache = tmp_path / "a.png", tmp_path / "anchors" / "a-jpeg.json"
    Image.fromarray(_image(16, 16)).save(img)
    jpeg = anchors.CODECS["jpeg"]
    first = anchors.image_points(img, cache, jpeg, [10, 50], (16, 16))
    assert list(first) == [10, 50]
    stored = json.loads(cache.read_text())
    assert stored["key"]["codec"] == "jpeg" and stored["key"]["size"] == [16, 16]
    coded = []
    real = anchors.code_image

    def counting(rgb, codec, q):
        coded.append(q)
        return real(rgb, codec, q)

    monkeypatch.setattr(anchors, "code_image", counting)
    again = anchors.image_points(img, cache, jpeg, [10, 50, 90], (16, 16))
    assert coded == [90]  # only the new quality is coded
    assert again[10] == first[10] and again[50] == first[50]
    assert list(json.loads(cache.read_text())["points"]) == ["10", "50", "90"]
    # without compute: what the cache holds, nothing coded
    assert list(anchors.image_points(img, cache, jpeg, [5, 90], (16, 16), False)) == [
        90
    ]
    assert coded == [90]
    # other settings (here: the size) or --overwrite: coded again
    coded.clear()
    anchors.image_points(img, cache, jpeg, [10], (16, 16), overwrite=True)
    assert coded == [10]
    with pytest.raises(BenchError, match="is not 17x16"):
        anchors.image_points(img, cache, jpeg, [10], (16, 17))


def test_failed_encode_is_reported_not_cached(tmp_path, monkeypatch):
    img, cache = tmp_path / "a.png", tmp_path / "a-webp.json"
    Image.fromarray(_image(16, 16)).save(img)

    def broken(rgb, codec, quality):
        raise OSError("encoder error -2")

    monkeypatch.setattr(anchors, "encode", broken)
    points = anchors.image_points(img, cache, anchors.CODECS["webp"], [10], (16, 16))
    assert points == {10: {"error": "encoder error -2"}}
    assert json.loads(cache.read_text())["points"] == {}


def _pt(bpp, psnr):
    return {"bpp": bpp, "psnr-rgb": psnr, "encoding_time": 0.1, "decoding_time": 0.0}


def test_anchor_curve_averages_and_leaves_out():
    a = {10: _pt(0.5, 30.0), 20: _pt(1.0, 33.0), 30: _pt(2.0, 36.0), 40: _pt(3, 40)}
    b = {10: _pt(0.7, 28.0), 20: _pt(1.4, 31.0), 30: {"error": "x"}}
    a[50], b[50] = {**_pt(9.0, None), "lossless": True}, _pt(9.0, 60.0)
    curve = anchor_curve([a, b], [10, 20, 30, 40, 50])
    assert curve["qualities"] == [10, 20]
    assert curve["curves"]["bpp"] == pytest.approx([0.6, 1.2])
    assert curve["curves"]["psnr-rgb"] == pytest.approx([29.0, 32.0])
    assert curve["errors"] == ["q30: x"]
    assert curve["missing"] == [40] and curve["lossless"] == [50]
    same = anchor_curve([{10: _pt(1.0, 30.0), 20: _pt(1.0, 31.0)}], [10, 20])
    assert same["qualities"] == [10] and same["repeated"] == [20]


def test_bd_vs_anchors_and_cells():
    psnr = [28.0, 30.0, 32.0, 34.0]
    ours = {"bpp": [0.1, 0.2, 0.4, 0.8], "psnr-rgb": psnr}
    anchor = {"curves": {"bpp": [0.2, 0.4, 0.8, 1.6], "psnr-rgb": psnr}}
    far = {"curves": {"bpp": [0.1, 0.2, 0.4, 0.8], "psnr-rgb": [40, 41, 42, 43]}}
    bd = bd_vs_anchors({"base": ours, "full": ours}, {"jpeg": anchor, "webp": far})
    assert bd["jpeg"]["full"]["value"] == pytest.approx(-50.0)
    assert bd_cell(bd["jpeg"]["base"]) == "-50.0%"
    # no shared PSNR range: BD-PSNR instead, marked
    assert bd["webp"]["full"]["value"] is None
    expected = bd_psnr(*far["curves"].values(), *ours.values())
    assert bd["webp"]["full"]["psnr"] == pytest.approx(expected)
    assert bd_cell(bd["webp"]["full"]) == f"{expected:+.2f} dB*"
    with pytest.raises(ValueError):
        bd_rate(*far["curves"].values(), *ours.values())
    assert bd_cell({"value": None, "psnr": None}) == "n/a" == bd_cell(None)


def test_bad_anchor_flags_are_one_line_errors(tmp_path, capsys):
    from compressai_lora.utils.bench import __main__ as bench

    for bad in ("5,x", "50,101", "10,10", ""):
        with pytest.raises(SystemExit) as exc:
            bench.main(["--anchor-qualities", bad, "-o", str(tmp_path / "o")])
        assert exc.value.code == 1
        err = capsys.readouterr().err
        assert (
            err.startswith("Error: invalid --anchor-qualities") and err.count("\n") == 1
        ), err
    with pytest.raises(SystemExit) as exc:
        bench.main(["--anchors", "none", "webp", "-o", str(tmp_path / "o")])
    assert exc.value.code == 1
    assert capsys.readouterr().err == (
        "Error: --anchors none cannot be combined with codecs\n"
    )
    assert not Path(tmp_path / "o").exists()
