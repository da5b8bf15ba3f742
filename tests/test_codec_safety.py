"""The file codec against hostile files and careless commands.

* every CRC-valid corruption of the payload fails the reconstruction check;
* version 1 files (first release) still decode;
* an output that is an input is refused, even with ``--force``;
* latent strings that would make the rANS decoder read past their end are
  refused or decode the same way every time;
* a header claiming a huge image is refused before anything is allocated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from compressai.zoo.image import model_architectures
from PIL import Image
from test_codec import run  # noqa: E402  (same directory: main() in-process)

from compressai_lora.utils.codec import format as fmt
from compressai_lora.utils.codec.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
ARCH = "bmshj2018-hyperprior-lora"  # two latent groups (y, z) and an update
FAST = ["--refine-steps", "2", "--adapt-steps", "2", "--lr", "0.05"]
FAST += ["--lmbda", "10", "--seed", "0", "--threads", "1"]


def clean_error(code: int, err: str, *fragments: str) -> str:
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith("compressai-lora: error: "), err
    assert "unexpected" not in lines[0], err
    for f in fragments:
        assert f in lines[0], err
    return lines[0]


@pytest.fixture(scope="module")
def enc(tmp_path_factory):
    """Two encodes (two images) of the same model, with updates sent."""
    d = tmp_path_factory.mktemp("safety")
    torch.manual_seed(0)
    net = model_architectures["bmshj2018-hyperprior"](8, 8)
    with torch.no_grad():  # latents with content: strings of many symbols
        net.g_a[-1].weight.mul_(30)
        net.g_s[-1].weight.mul_(10)
    net.update(force=True)
    ckpt = d / "w.pth"
    torch.save({"state_dict": net.state_dict(), "meta": {"lmbda": 0.01}}, ckpt)
    rng = np.random.RandomState(0)
    out = {"dir": d, "ckpt": ckpt}
    for name in ("a", "b"):
        img = rng.randint(0, 256, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(img).save(d / f"{name}.png")
        argv = ["encode", d / f"{name}.png", "-o", d / f"{name}.clr"]
        argv += ["-a", ARCH, "-p", ckpt, "--recon", d / f"{name}.rec.png", *FAST]
        main([str(a) for a in argv])
        out[name] = fmt.unpack((d / f"{name}.clr").read_bytes())
    assert len(out["a"][1][-1][0]) > 0  # an update was sent
    assert len(out["a"][1][0][0]) > 100  # y holds more than its final state
    return out


def _decode(enc, path: Path, capsys, *extra):
    dec = path.with_suffix(".dec.png")
    argv = ["decode", path, "-o", dec, "-p", enc["ckpt"], "--force", *extra]
    return run(argv, capsys), dec


def _flip(s: bytes, i: int) -> bytes:
    return s[:i] + bytes([s[i] ^ 0x5A]) + s[i + 1 :]


CORRUPTIONS = {
    "latent": lambda s, other: [[_flip(s[0][0], len(s[0][0]) // 2)], s[1], s[2]],
    "hyper-latent": lambda s, other: [s[0], [_flip(s[1][0], 4)], s[2]],
    "update replaced": lambda s, other: [s[0], s[1], other[2]],
    "update dropped": lambda s, other: [s[0], s[1], [b""]],
    "groups swapped": lambda s, other: [s[1], s[0], s[2]],
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_crc_valid_corruption_fails_the_reconstruction_check(enc, capsys, kind):
    header, strings = enc["a"]
    bad = CORRUPTIONS[kind](strings, enc["b"][1])
    path = enc["dir"] / f"bad-{kind.replace(' ', '-')}.clr"
    path.write_bytes(fmt.pack(header, bad))  # a valid CRC over the bad payload
    (code, _, err), dec = _decode(enc, path, capsys)
    line = clean_error(code, err)
    assert "does not match the encoder's" in line or "corrupted file" in line, err
    if kind != "groups swapped":  # the others parse: only the check sees them
        assert "does not match the encoder's" in line
        assert header.device in line and "decoded on cpu" in line
    assert not dec.exists()


def test_no_verify_writes_what_it_decodes(enc, capsys):
    header, strings = enc["a"]
    path = enc["dir"] / "drift.clr"
    path.write_bytes(fmt.pack(header, CORRUPTIONS["latent"](strings, None)))
    (code, _, err), dec = _decode(enc, path, capsys, "--no-verify")
    assert code == 0, err
    with Image.open(dec) as im, Image.open(enc["dir"] / "a.rec.png") as rec:
        assert im.size == rec.size and not np.array_equal(np.asarray(im), rec)


def test_valid_file_passes_the_check(enc, capsys):
    (code, _, err), dec = _decode(enc, enc["dir"] / "a.clr", capsys)
    assert code == 0 and not err
    with Image.open(dec) as im, Image.open(enc["dir"] / "a.rec.png") as rec:
        assert np.array_equal(np.asarray(im), np.asarray(rec))
        digest = fmt.reconstruction_digest(np.asarray(im))
    assert digest == enc["a"][0].recon


def test_version_1_file_still_decodes(tmp_path, capsys):
    """A file of the first release (format 1, 1-byte empty-update era)."""
    out = tmp_path / "v1.png"
    argv = ["decode", DATA / "v1-cheng2020-attn-q3.clr", "-o", out]
    code, _, err = run(
        argv + ["-p", ROOT / "weights/cheng2020-attn-N64-q3.pth.tar"], capsys
    )
    assert code == 0 and "no reconstruction check" in err
    with Image.open(out) as im, Image.open(DATA / "v1-cheng2020-attn-q3.png") as ref:
        assert np.array_equal(np.asarray(im), np.asarray(ref))


# -- outputs that are inputs ----------------------------------------------------
def test_encode_refuses_to_overwrite_its_input(enc, tmp_path, capsys):
    img = tmp_path / "in.png"
    img.write_bytes((enc["dir"] / "a.png").read_bytes())
    before = img.read_bytes()
    (tmp_path / "link.png").symlink_to(img)
    os.link(img, tmp_path / "hard.png")
    base = ["encode", img, "-a", ARCH, "-p", enc["ckpt"], "--force", *FAST]
    for out in (
        img,
        tmp_path / "link.png",
        tmp_path / "hard.png",
        tmp_path / "." / "in.png",
    ):
        clean_error(*run(base + ["-o", out], capsys)[::2], "is the input")
    recon = base + ["-o", tmp_path / "x.clr", "--recon", img]
    clean_error(*run(recon, capsys)[::2], "is the input")
    assert img.read_bytes() == before and not (tmp_path / "x.clr").exists()


def test_decode_refuses_to_overwrite_its_input(enc, tmp_path, capsys):
    path = tmp_path / "f.clr"
    path.write_bytes((enc["dir"] / "a.clr").read_bytes())
    before = path.read_bytes()
    argv = ["decode", path, "-o", path, "-p", enc["ckpt"], "--force"]
    clean_error(*run(argv, capsys)[::2], "is the input")
    argv = ["decode", path, "-o", enc["ckpt"], "-p", enc["ckpt"], "--force"]
    clean_error(*run(argv, capsys)[::2], "is the input")
    assert path.read_bytes() == before


# -- latent strings and the rANS decoder ----------------------------------------
def test_emptied_latent_string_is_refused(enc, tmp_path, capsys):
    header, strings = enc["a"]
    for bad in (b"", b"\x00" * 3, strings[0][0] + b"\x00"):
        path = tmp_path / "empty.clr"
        path.write_bytes(fmt.pack(header, [[bad], strings[1], strings[2]]))
        (code, _, err), _ = _decode(enc, path, capsys, "--no-verify")
        clean_error(code, err, "corrupted file", "rANS string")


_DECODE = """
import sys
from compressai_lora.utils.codec.__main__ import main
main(sys.argv[1:])
"""


def test_zeroed_latent_string_decodes_the_same_every_time(enc, tmp_path, capsys):
    header, strings = enc["a"]
    zeroed = [[bytes(len(strings[0][0]))], strings[1], strings[2]]
    path = tmp_path / "zero.clr"
    path.write_bytes(fmt.pack(header, zeroed))
    clean_error(*_decode(enc, path, capsys)[0][::2], "does not match")

    def decode(i: int, perturb: str) -> np.ndarray:  # heap filled differently
        out = tmp_path / f"zero{i}.png"
        argv = ["decode", path, "-o", out, "-p", enc["ckpt"], "--no-verify"]
        env = dict(os.environ, PYTHONPATH=str(ROOT), MALLOC_PERTURB_=perturb)
        cmd = [sys.executable, "-c", _DECODE, *map(str, argv)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        with Image.open(out) as im:
            return np.asarray(im)

    with ThreadPoolExecutor(3) as pool:
        images = list(pool.map(decode, range(3), ("0", "85", "170")))
    assert all(np.array_equal(images[0], im) for im in images[1:])


def test_valid_strings_decode_the_same_with_padding(enc):
    """The padding is never read by a valid string: the host's own decode."""
    from compressai_lora.latent_strings import check_and_pad
    from compressai_lora.utils.codec.__main__ import build_model

    header, strings = enc["a"]
    model, _, _ = build_model(
        ARCH.removesuffix("-lora"),
        quality=None,
        metric="mse",
        checkpoint=str(enc["ckpt"]),
        rank=2,
        form="separable",
        device="cpu",
    )
    with torch.no_grad():
        plain = model.decompress(strings[:2], list(header.shape))["x_hat"]
        padded = check_and_pad(model, strings[:2], header.shape)
        assert len(padded[0][0]) > len(strings[0][0])
        again = model.decompress(padded, list(header.shape))["x_hat"]
    assert torch.equal(plain, again)


# -- decompression bombs ----------------------------------------------------------
_BOMB = """
import resource, sys, time
from compressai_lora.utils.codec.__main__ import main
ckpt, files = sys.argv[1], sys.argv[2:]
for path in files:
    start = time.perf_counter()
    try:
        main(["decode", path, "-o", path + ".png", "-p", ckpt])
    except SystemExit as e:
        code = e.code
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB
    print(f"@@ {code} {time.perf_counter() - start:.3f} {rss:.0f}")
"""


def test_huge_headers_are_refused_at_once(enc, tmp_path):
    """100000x100000 and 2^20 x 2^20 claimed by files of under 200 bytes."""
    files = []
    for side in (100_000, 2**20):
        claim = {**enc["a"][0].__dict__, "width": side, "height": side}
        claim["shape"] = (side // 64 + 1, side // 64 + 1)
        path = tmp_path / f"bomb{side}.clr"
        path.write_bytes(fmt.pack(fmt.Header(**claim), [[bytes(8)], [bytes(8)], [b""]]))
        assert path.stat().st_size < 200
        files.append(str(path))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-c", _BOMB, str(enc["ckpt"]), *files]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    lines = [line.split()[1:] for line in proc.stdout.splitlines() if "@@" in line]
    assert len(lines) == 2 and proc.stderr.count("budget") == 2, proc.stderr
    for code, seconds, rss in lines:
        assert code == "1" and float(seconds) < 1.0 and float(rss) < 1024, lines
    assert not [f for f in files if Path(f + ".png").exists()]


def test_max_pixels(enc, tmp_path, capsys):
    argv = ["encode", enc["dir"] / "a.png", "-o", tmp_path / "m.clr", "-a", ARCH]
    argv += ["-p", enc["ckpt"], "--max-pixels", "1000", *FAST]
    clean_error(*run(argv, capsys)[::2], "1920 pixels", "--max-pixels")
    argv = ["decode", enc["dir"] / "a.clr", "-o", tmp_path / "m.png"]
    argv += ["-p", enc["ckpt"], "--max-pixels", "1919"]
    clean_error(*run(argv, capsys)[::2], "budget")
    assert run(argv[:-1] + ["1920"], capsys)[0] == 0


def test_info_shows_the_check(enc, capsys):
    code, out, _ = run(["info", enc["dir"] / "a.clr", "--json"], capsys)
    d = json.loads(out)
    assert (
        d["format_version"] == 2
        and d["reconstruction_check"] == enc["a"][0].recon.hex()
    )
    assert d["device_name"].startswith("cpu ")
