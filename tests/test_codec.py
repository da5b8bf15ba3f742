"""Tests of ``compressai-lora encode|decode|info`` (compressai_lora.utils.codec).

Round trips use small random-weight models saved as checkpoints (``-p``): the
published weights cannot be downloaded here.  The decoder always runs in
another process than the encoder: the module fixture ``batch`` encodes every
case in this process and decodes them all in one subprocess; the slow tests
run encoder and decoder as two ``python -m`` processes per case.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from compressai.zoo.image import model_architectures
from PIL import Image

import compressai_lora  # noqa: F401  (registers the -lora models)
from compressai_lora.utils.codec import format as fmt
from compressai_lora.utils.codec.__main__ import (
    CodecError,
    console_main,
    main,
    write_atomic,
)
from compressai_lora.utils.images import to_rgb8
from compressai_lora.zoo import image_models as lora_models

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "pyxel_02_jump_game_f060.png"
LORA_ARCHS = sorted(lora_models)
CHEAP = "bmshj2018-factorized-lora"
# Real adaptation, 2 + 2 steps on one thread.  On these random-weight models
# the update pays only with a large lambda and learning rate: with them every
# architecture sends one, so the round trips decode an update.
FAST = ["--refine-steps", "2", "--adapt-steps", "2", "--lr", "0.05"]
FAST += ["--lmbda", "10", "--seed", "0", "--threads", "1"]
MODES = ["rgb", "rgba", "l", "p", "i16", "1x1", "odd"]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _save_checkpoint(arch: str, path: Path, seed: int = 0, n: int = 8) -> str:
    torch.manual_seed(seed)
    cls = model_architectures[arch]
    net = cls(n) if arch.startswith("cheng2020") else cls(n, n)
    net.update(force=True)
    torch.save({"state_dict": net.state_dict(), "meta": {"lmbda": 0.01}}, path)
    return str(path)


def _make_images(d: Path) -> dict[str, Path]:
    rng = np.random.RandomState(0)
    rgb = rng.randint(0, 256, (20, 30, 3), dtype=np.uint8)
    alpha = rng.randint(0, 256, (20, 30, 1), dtype=np.uint8)
    i16 = rng.randint(0, 65536, (20, 30), dtype=np.uint16)
    images = {
        "rgb": Image.fromarray(rgb),
        "rgba": Image.fromarray(np.concatenate([rgb, alpha], axis=2)),
        "l": Image.fromarray(rgb[:, :, 0]),
        "p": Image.fromarray(rgb).quantize(16),
        "i16": Image.fromarray(i16),
        "1x1": Image.fromarray(rgb[:1, :1]),
        "odd": Image.fromarray(rng.randint(0, 256, (17, 33, 3), dtype=np.uint8)),
    }
    assert images["i16"].mode == "I;16" and images["p"].mode == "P"
    paths = {}
    for name, im in images.items():
        paths[name] = d / f"{name}.png"
        im.save(paths[name])
    return paths


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("ckpt")
    out = {arch: _save_checkpoint(arch, d / f"{arch}.pth") for arch in LORA_ARCHS}
    out["other-seed"] = _save_checkpoint(CHEAP, d / "other.pth", seed=1)
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    return _make_images(tmp_path_factory.mktemp("img"))


def run(argv, capsys) -> tuple[int, str, str]:
    """``main(argv)`` in-process: (exit code, stdout, stderr)."""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_error(code: int, err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert code == 1, err
    assert len(lines) == 1, err
    assert lines[0].startswith("compressai-lora: error: "), err
    assert "unexpected" not in lines[0], err
    for f in fragments:
        assert f in lines[0], err


def assert_no_output(d: Path, *names: str) -> None:
    for n in names:
        assert not (d / n).exists()
    assert not [p for p in os.listdir(d) if p.endswith(".part")]


# -- round trips ---------------------------------------------------------------
CASES = [f"arch-{a}" for a in LORA_ARCHS] + [f"mode-{m}" for m in MODES]


@pytest.fixture(scope="module")
def batch(tmp_path_factory, ckpts, images) -> Path:
    """Encode every case here, decode all of them in one other process."""
    d = tmp_path_factory.mktemp("batch")
    jobs = []
    for case in CASES:
        kind, name = case.split("-", 1)
        arch, image = (name, images["rgb"]) if kind == "arch" else (CHEAP, images[name])
        enc = ["encode", image, "-o", d / f"{case}.clr", "-a", arch, "-p", ckpts[arch]]
        main([str(a) for a in enc + ["--recon", d / f"{case}.enc.png", *FAST]])
        dec = ["decode", d / f"{case}.clr", "-o", d / f"{case}.dec.png"]
        jobs.append([str(a) for a in dec + ["-p", ckpts[arch]]])
    # one torch thread in the decoder, as in the encoder (see conftest)
    code = (
        "import json, sys, torch\n"
        "torch.set_num_threads(1)\n"
        "from compressai_lora.utils.codec.__main__ import main\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    main(argv)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(jobs)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d


def _assert_same_reconstruction(enc_png: Path, dec_png: Path, size) -> None:
    with Image.open(dec_png) as dec:
        assert dec.format == "PNG" and dec.mode == "RGB" and dec.size == size
        decoded = np.asarray(dec)
    with Image.open(enc_png) as enc:
        np.testing.assert_array_equal(decoded, np.asarray(enc))


@pytest.mark.parametrize("case", CASES)
def test_round_trip_in_another_process(batch, images, case):
    kind, name = case.split("-", 1)
    with Image.open(images["rgb" if kind == "arch" else name]) as im:
        size = im.size
    _assert_same_reconstruction(
        batch / f"{case}.enc.png", batch / f"{case}.dec.png", size
    )
    header, strings = fmt.unpack((batch / f"{case}.clr").read_bytes())
    assert header.rank == 2
    if kind == "arch":  # the adapted decoder was used, not only the base one
        assert len(strings[-1][0]) > 1


def _cli(*args, check=True, threads=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "compressai_lora.utils.codec", *map(str, args)]
    env = _env()
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _cli_round_trip(tmp_path, image: Path, arch: str, ckpt: str) -> None:
    out, rec, dec = tmp_path / "x.clr", tmp_path / "rec.png", tmp_path / "dec.png"
    enc = _cli(
        "encode", image, "-o", out, "-a", arch, "-p", ckpt, "--recon", rec, *FAST
    )
    assert f"-> {out}" in enc.stdout and "bpp" in enc.stdout
    # the encoder codes with torch's default threads, the decoder with one
    _cli("decode", out, "-o", dec, "-p", ckpt, threads=1)
    with Image.open(image) as im:
        size = im.size
    _assert_same_reconstruction(rec, dec, size)


@pytest.mark.slow
@pytest.mark.parametrize("arch", LORA_ARCHS)
def test_cli_round_trip_every_arch(tmp_path, ckpts, images, arch):
    _cli_round_trip(tmp_path, images["rgb"], arch, ckpts[arch])


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_cli_round_trip_every_mode(tmp_path, ckpts, images, mode):
    _cli_round_trip(tmp_path, images[mode], CHEAP, ckpts[CHEAP])


def test_base_architecture_round_trip(tmp_path, images, capsys):
    """A host architecture (no adapters) goes through the same file format."""
    ckpt = _save_checkpoint("bmshj2018-factorized", tmp_path / "base.pth")
    out, rec, dec = tmp_path / "b.clr", tmp_path / "rec.png", tmp_path / "dec.png"
    enc = ["encode", images["rgb"], "-o", out, "-a", "bmshj2018-factorized"]
    code, _, err = run(enc + ["-p", ckpt, "--recon", rec], capsys)
    assert code == 0 and not err
    assert run(["decode", out, "-o", dec, "-p", ckpt], capsys)[0] == 0
    _assert_same_reconstruction(rec, dec, (30, 20))
    header, strings = fmt.unpack(out.read_bytes())
    assert header.rank == 0 and header.form == "" and len(strings) == 1


# -- info, console script ------------------------------------------------------
@pytest.fixture(scope="module")
def sample(tmp_path_factory, ckpts) -> Path:
    """A crop of a bundled sample image, compressed (cheapest architecture)."""
    d = tmp_path_factory.mktemp("sample")
    with Image.open(SAMPLE) as im:  # a crop keeps the byte-by-byte tests short
        im.crop((100, 120, 196, 184)).save(d / "crop.png")
    path = d / "sample.clr"
    argv = ["encode", d / "crop.png", "-o", path, "-a", CHEAP, "-p", ckpts[CHEAP]]
    argv += ["--recon", d / "sample.rec.png", *FAST]
    main([str(a) for a in argv])
    return path


def test_info(sample, capsys):
    code, out, err = run(["info", sample], capsys)
    assert code == 0 and not err
    assert CHEAP in out and "96x64" in out and "rank 2" in out
    code, out, _ = run(["info", sample, "--json"], capsys)
    d = json.loads(out)
    assert d["architecture"] == CHEAP and (d["width"], d["height"]) == (96, 64)
    assert d["bytes"] == sample.stat().st_size
    assert d["weights"] == f"{CHEAP}.pth" and d["quality"] is None
    assert d["bpp"] == pytest.approx(d["bytes"] * 8 / (96 * 64))


def test_console_script(sample, capsys, monkeypatch):
    setup_py = (ROOT / "setup.py").read_text()
    assert "compressai-lora = compressai_lora.utils.codec.__main__:console_main" in (
        setup_py
    )
    monkeypatch.setattr(sys, "argv", ["compressai-lora", "info", str(sample)])
    console_main()
    assert CHEAP in capsys.readouterr().out


# -- file format ---------------------------------------------------------------
def _header(**changes) -> fmt.Header:
    fields = dict(
        arch="cheng2020-attn-lora",
        metric="mse",
        quality=3,
        weights=bytes(range(8)),
        weights_label="q3-mse",
        rank=2,
        form="separable",
        width=321,
        height=1,
        shape=(1, 6),
        cuda=True,
        device="cuda NVIDIA Test, torch 0",
        recon=bytes(range(8, 16)),
    )
    return fmt.Header(**{**fields, **changes})


def test_format_round_trip():
    strings = [[b"abc"], [b""], [b"\x00" * 300, b"x"], [bytes([0x10])]]
    data = fmt.pack(_header(), strings)
    assert data[:4] == fmt.MAGIC and data[4] == fmt.FORMAT_VERSION
    assert zlib.crc32(data[:-4]) == int.from_bytes(data[-4:], "big")
    header, got = fmt.unpack(data)
    assert header == _header() and got == strings


@pytest.mark.parametrize(
    "changes", [{"width": 0}, {"height": 2**21}, {"shape": ()}, {"rank": 256}]
)
def test_format_rejects_invalid_header(changes):
    with pytest.raises(fmt.FormatError):
        _header(**changes)


def _with_crc(body: bytes) -> bytes:
    return body + zlib.crc32(body).to_bytes(4, "big")


def test_format_other_version():
    data = bytearray(fmt.pack(_header(), [[b"a"]]))
    data[4] = 3
    with pytest.raises(fmt.FormatError, match="format version 3"):
        fmt.unpack(_with_crc(bytes(data[:-4])))


def test_format_reads_version_1_headers():
    """Version 1 headers end after the latent shape (no device, no check)."""
    data = fmt.pack(_header(), [[b"a"]])
    head_len = data[5]  # 1-byte varint here
    head = data[6 : 6 + head_len]
    extra = 1 + len(_header().device) + fmt.DIGEST_BYTES
    v1 = fmt.MAGIC + bytes([1, head_len - extra]) + head[:-extra]
    header, strings = fmt.unpack(_with_crc(v1 + data[6 + head_len : -4]))
    assert header == _header(version=1, device="", recon=b"")
    assert strings == [[b"a"]]
    with pytest.raises(fmt.FormatError, match="trailing"):  # v2 fields in a v1 file
        fmt.unpack(_with_crc(fmt.MAGIC + bytes([1]) + data[5:-4]))


def test_format_trailing_bytes_after_crc_fix():
    data = fmt.pack(_header(), [[b"a"]])
    with pytest.raises(fmt.FormatError, match="trailing"):
        fmt.unpack(_with_crc(data[:-4] + b"\x00"))


# -- image modes ---------------------------------------------------------------
def _rgb8(im: Image.Image) -> tuple[np.ndarray, list[str]]:
    warnings: list[str] = []
    out = to_rgb8(im, warnings.append)
    assert out.dtype == np.uint8 and out.shape == (im.height, im.width, 3)
    return out, warnings


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16bit_is_scaled_not_clipped(mode):
    values = np.array([[0, 128, 129, 257, 1000, 32896, 65535]])
    im = Image.fromarray(values.astype(np.uint16 if mode == "I;16" else np.int32))
    assert im.mode == mode
    out, warnings = _rgb8(im)
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 1, 1, 4, 128, 255])
    assert (out[..., 0] == out[..., 2]).all() and not warnings


def test_int_out_of_16bit_range_is_rescaled_with_warning():
    im = Image.fromarray(np.array([[-10, 0, 100000]], dtype=np.int32))
    out, warnings = _rgb8(im)
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 255])
    assert len(warnings) == 1 and "rescaled" in warnings[0]


def test_float_image():
    im = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    out, warnings = _rgb8(im)
    np.testing.assert_array_equal(out[0, :, 1], [0, 128, 255])
    assert not warnings


#: RGBA pixels of distinct colours and alphas (fully transparent among them)
_RGBA = np.array(
    [
        [(10, 20, 30, 0), (200, 100, 50, 255), (0, 255, 128, 77)],
        [(255, 255, 255, 128), (10, 20, 30, 255), (1, 2, 3, 4)],
    ],
    dtype=np.uint8,
)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA"])
def test_alpha_is_dropped_with_warning(mode):
    im = Image.fromarray(_RGBA).convert(mode)
    assert im.mode == mode
    out, warnings = _rgb8(im)
    assert len(warnings) == 1 and "alpha" in warnings[0]
    a = np.asarray(im)
    if mode == "RGBA":
        expected = a[..., :3]
    elif mode == "LA":  # the gray level in every channel
        expected = np.repeat(a[..., :1], 3, axis=2)
    else:  # each index's palette entry, looked up here
        palette = np.array(im.getpalette("RGB"), dtype=np.uint8).reshape(-1, 3)
        expected = palette[a[..., 0]]
    np.testing.assert_array_equal(out, expected)


def test_palette_with_transparency_warns():
    im = Image.new("P", (2, 2), 1)
    im.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    out, warnings = _rgb8(im)
    assert (out == [200, 100, 50]).all() and not warnings
    im.info["transparency"] = 0
    _, warnings = _rgb8(im)
    assert len(warnings) == 1


@pytest.mark.parametrize("mode", ["L", "1", "CMYK", "YCbCr", "RGB"])
def test_other_modes(mode):
    out, warnings = _rgb8(Image.new("RGB", (4, 3), (255, 255, 255)).convert(mode))
    assert not warnings and (out > 250).all()


def test_rgba_input_warns_on_stderr(tmp_path, ckpts, images, capsys):
    out = tmp_path / "a.clr"
    argv = ["encode", images["rgba"], "-o", out, "-a", CHEAP, "-p", ckpts[CHEAP]]
    code, _, err = run(argv + ["--no-adapt"], capsys)
    assert code == 0 and out.exists()
    assert err.count("warning") == 1 and "alpha" in err


# -- bad input -----------------------------------------------------------------
@pytest.fixture
def enc_argv(ckpts):
    def make(image, out):
        return ["encode", image, "-o", out, "-a", CHEAP, "-p", ckpts[CHEAP], *FAST]

    return make


def test_missing_input(tmp_path, enc_argv, capsys):
    code, _, err = run(enc_argv(tmp_path / "nope.png", tmp_path / "o.clr"), capsys)
    assert_clean_error(code, err, "nope.png", "no such file")
    assert_no_output(tmp_path, "o.clr")


def test_directory_input(tmp_path, enc_argv, capsys):
    code, _, err = run(enc_argv(tmp_path, tmp_path / "o.clr"), capsys)
    assert_clean_error(code, err, "directory")
    assert_no_output(tmp_path, "o.clr")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_input(tmp_path, enc_argv, images, capsys):
    img = tmp_path / "secret.png"
    img.write_bytes(images["rgb"].read_bytes())
    img.chmod(0)
    code, _, err = run(enc_argv(img, tmp_path / "o.clr"), capsys)
    assert_clean_error(code, err, "permission denied")


@pytest.mark.parametrize(
    "content", [b"", b"hello, world\n", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20]
)
def test_not_an_image(tmp_path, enc_argv, content, capsys):
    img = tmp_path / "x.png"
    img.write_bytes(content)
    code, _, err = run(enc_argv(img, tmp_path / "o.clr"), capsys)
    assert_clean_error(code, err, str(img))
    assert_no_output(tmp_path, "o.clr")


def test_truncated_image(tmp_path, enc_argv, capsys):
    img = tmp_path / "cut.png"
    img.write_bytes(SAMPLE.read_bytes()[:1500])
    code, _, err = run(enc_argv(img, tmp_path / "o.clr"), capsys)
    assert_clean_error(code, err, "cut.png")
    assert_no_output(tmp_path, "o.clr")


def test_existing_output_needs_force(tmp_path, enc_argv, images, sample, ckpts, capsys):
    out = tmp_path / "o.clr"
    out.write_bytes(b"keep me")
    code, _, err = run(enc_argv(images["rgb"], out), capsys)
    assert_clean_error(code, err, "exists", "--force")
    assert out.read_bytes() == b"keep me"
    png = tmp_path / "o.png"
    png.write_bytes(b"keep me too")
    code, _, err = run(["decode", sample, "-o", png, "-p", ckpts[CHEAP]], capsys)
    assert_clean_error(code, err, "exists")
    assert png.read_bytes() == b"keep me too"
    assert run(enc_argv(images["rgb"], out) + ["--force"], capsys)[0] == 0
    fmt.unpack(out.read_bytes())
    assert_no_output(tmp_path)


def test_output_directory_missing(tmp_path, enc_argv, images, capsys):
    code, _, err = run(enc_argv(images["rgb"], tmp_path / "no" / "o.clr"), capsys)
    assert_clean_error(code, err, "does not exist")


def test_recon_same_as_output(tmp_path, enc_argv, images, capsys):
    out = tmp_path / "o.clr"
    code, _, err = run(enc_argv(images["rgb"], out) + ["--recon", out], capsys)
    assert_clean_error(code, err, "same file")


@pytest.mark.parametrize("content", [None, b"not a checkpoint", b"PK\x03\x04"])
def test_bad_checkpoint(tmp_path, images, content, capsys):
    ckpt = tmp_path / "w.pth"
    if content is not None:
        ckpt.write_bytes(content)
    argv = ["encode", images["rgb"], "-o", tmp_path / "o.clr", "-a", CHEAP]
    code, _, err = run(argv + ["-p", ckpt], capsys)
    assert_clean_error(code, err, "w.pth")
    assert_no_output(tmp_path, "o.clr")


def test_checkpoint_of_another_architecture(tmp_path, sample, ckpts, capsys):
    argv = ["decode", sample, "-o", tmp_path / "o.png"]
    code, _, err = run(argv + ["-p", ckpts["cheng2020-attn-lora"]], capsys)
    assert_clean_error(code, err, "does not fit", CHEAP)
    assert_no_output(tmp_path, "o.png")


def test_mismatched_weights(tmp_path, sample, ckpts, capsys):
    argv = ["decode", sample, "-o", tmp_path / "o.png"]
    code, _, err = run(argv + ["-p", ckpts["other-seed"]], capsys)
    assert_clean_error(code, err, "weights do not match", f"{CHEAP}.pth")
    assert_no_output(tmp_path, "o.png")


def test_decode_needs_the_checkpoint(tmp_path, sample, capsys):
    code, _, err = run(["decode", sample, "-o", tmp_path / "o.png"], capsys)
    assert_clean_error(code, err, "pass them with -p")
    assert_no_output(tmp_path, "o.png")


def test_lambda_required_for_checkpoint_without_meta(tmp_path, images, capsys):
    torch.manual_seed(0)
    net = model_architectures[CHEAP](8, 8)
    torch.save(net.state_dict(), tmp_path / "bare.pth")
    argv = ["encode", images["rgb"], "-o", tmp_path / "o.clr", "-a", CHEAP]
    code, _, err = run(argv + ["-p", tmp_path / "bare.pth"], capsys)
    assert_clean_error(code, err, "--lmbda")
    assert run(argv + ["-p", tmp_path / "bare.pth", "--no-adapt"], capsys)[0] == 0


@pytest.mark.parametrize(
    "content", [None, b"", b"CALR", b"\x89PNG\r\n\x1a\n....", b"CALR\x09" + bytes(20)]
)
def test_decode_not_a_compressed_file(tmp_path, ckpts, content, capsys):
    f = tmp_path / "x.clr"
    if content is not None:
        f.write_bytes(content)
    code, _, err = run(
        ["decode", f, "-o", tmp_path / "o.png", "-p", ckpts[CHEAP]], capsys
    )
    assert_clean_error(code, err, "x.clr")
    assert_no_output(tmp_path, "o.png")


def test_decode_other_format_version(tmp_path, sample, ckpts, capsys):
    data = bytearray(sample.read_bytes())
    data[4] = fmt.FORMAT_VERSION + 1
    for name, blob in [("raw", bytes(data)), ("crc", _with_crc(bytes(data[:-4])))]:
        f = tmp_path / f"{name}.clr"
        f.write_bytes(blob)
        argv = ["decode", f, "-o", tmp_path / "o.png", "-p", ckpts[CHEAP]]
        code, _, err = run(argv, capsys)
        assert_clean_error(code, err, f"format version {fmt.FORMAT_VERSION + 1}")
    assert_no_output(tmp_path, "o.png")


def _decode_bytes(tmp_path, blob, ckpt, capsys):
    f = tmp_path / "bad.clr"
    f.write_bytes(blob)
    return run(["decode", f, "-o", tmp_path / "o.png", "-p", ckpt], capsys)


def test_every_truncation_and_deletion(tmp_path, sample, ckpts, capsys):
    data = sample.read_bytes()
    variants = [data[:n] for n in range(len(data))]
    variants += [data[:i] + data[i + 1 :] for i in range(len(data))]
    for blob in variants:
        code, _, err = _decode_bytes(tmp_path, blob, ckpts[CHEAP], capsys)
        assert_clean_error(code, err)
    assert_no_output(tmp_path, "o.png")


def test_fuzz_bit_flips(tmp_path, sample, ckpts, capsys):
    data = sample.read_bytes()
    rng = random.Random(1234)
    for _ in range(300):
        blob = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            blob[rng.randrange(len(blob))] ^= 1 << rng.randrange(8)
        if blob == data:
            continue
        code, _, err = _decode_bytes(tmp_path, bytes(blob), ckpts[CHEAP], capsys)
        assert_clean_error(code, err)
    assert_no_output(tmp_path, "o.png")


def test_fuzz_header_past_the_crc(tmp_path, sample, ckpts, capsys):
    """Header bit flips with a valid CRC: each file is refused with one line,
    or (a flip in what decoding does not use, such as the weights' label)
    decodes to exactly the encoder's reconstruction."""
    data = sample.read_bytes()
    with Image.open(sample.with_suffix(".rec.png")) as im:
        recon = np.asarray(im)
    head_end = 6 + data[5]  # magic, version, 1-byte header length, header
    rng = random.Random(99)
    refused = decoded = 0
    for _ in range(40):
        body = bytearray(data[:-4])
        body[rng.randrange(5, head_end)] ^= 1 << rng.randrange(8)
        (tmp_path / "o.png").unlink(missing_ok=True)
        code, _, err = _decode_bytes(
            tmp_path, _with_crc(bytes(body)), ckpts[CHEAP], capsys
        )
        if code:
            assert_clean_error(code, err)
            assert_no_output(tmp_path, "o.png")
            refused += 1
        else:
            assert not err
            with Image.open(tmp_path / "o.png") as im:
                assert im.mode == "RGB"
                np.testing.assert_array_equal(np.asarray(im), recon)
            decoded += 1
    # both kinds of flip occur among these 40
    assert refused > 0 and decoded > 0, (refused, decoded)


def test_write_atomic_leaves_nothing_on_failure(tmp_path):
    def broken(f):
        f.write(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_atomic(str(tmp_path / "o.png"), broken, force=False)
    assert os.listdir(tmp_path) == []
    (tmp_path / "o.png").write_bytes(b"old")
    with pytest.raises(CodecError, match="exists"):
        write_atomic(str(tmp_path / "o.png"), lambda f: f.write(b"new"), force=False)
    write_atomic(str(tmp_path / "o.png"), lambda f: f.write(b"new"), force=True)
    assert (tmp_path / "o.png").read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["o.png"]


def test_pretrained_weights_unavailable(tmp_path, images, monkeypatch, capsys):
    """No download possible: one line, no output (torch.hub's chatter hidden)."""
    import urllib.error

    import compressai_lora.zoo.image as zoo_image

    def offline(url, *args, **kwargs):
        sys.stderr.write(f'Downloading: "{url}"\n')
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(zoo_image, "load_state_dict_from_url", offline)
    argv = ["encode", images["rgb"], "-o", tmp_path / "o.clr", "-a", CHEAP, "-q", 1]
    code, _, err = run(argv, capsys)
    assert_clean_error(code, err, "pretrained", "-p")
    assert_no_output(tmp_path, "o.clr")
