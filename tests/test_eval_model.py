"""python -m compressai_lora.utils.eval_model: parity with the host, outputs,
resume, bad input.  Tiny random models (N = M = 8) and small images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import compressai.zoo.image as host_zoo
import matplotlib
import numpy as np
import pytest
import torch
import torch.hub
from compressai.models import FactorizedPrior, ScaleHyperprior, ScaleHyperpriorVbr
from compressai.utils.eval_model import __main__ as host
from PIL import Image

import compressai_lora.host as seam
import compressai_lora.zoo as lora_zoo
from compressai_lora.utils.eval_model import __main__ as ours
from compressai_lora.utils.eval_model.evaluate import StepBar

HOST_KEYS = ("psnr-rgb", "ms-ssim-rgb", "bpp", "encoding_time", "decoding_time")
COMPARED = ("psnr-rgb", "ms-ssim-rgb", "bpp")
LMBDA = 0.0018


def _save_image(path: Path, h: int, w: int, seed: int, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    # smooth-ish content: random low-frequency field plus a little noise
    base = rng.rand(h // 8 + 1, w // 8 + 1, 3)
    img = np.kron(base, np.ones((8, 8, 1)))[:h, :w] * 200 + rng.rand(h, w, 3) * 55
    Image.fromarray(img.astype(np.uint8)).convert(mode).save(path)


def _tiny(cls, seed: int):
    torch.manual_seed(seed)
    net = cls(8, 8).eval()
    net.update(force=True)
    return net


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data = root / "data"
    # > 160 px (the host's MS-SSIM needs it); b.png is not a multiple of 64
    _save_image(data / "parity" / "a.png", 192, 192, 0)
    _save_image(data / "parity" / "sub" / "b.png", 176, 200, 1)
    # entropy estimation: the host runs forward() unpadded, so multiples of 64
    _save_image(data / "ee" / "a.png", 192, 192, 0)
    _save_image(data / "small" / "a.png", 64, 64, 2)
    _save_image(data / "small" / "b.png", 24, 40, 3)

    ckpt = root / "ckpt"
    ckpt.mkdir()
    fact = _tiny(FactorizedPrior, 0)
    torch.save(
        {"state_dict": fact.state_dict(), "meta": {"lmbda": LMBDA}},
        ckpt / "fact.pth.tar",
    )
    hyper = _tiny(ScaleHyperprior, 1)
    torch.save({"state_dict": hyper.state_dict()}, ckpt / "hyper.pth.tar")

    # torch hub cache with the host's file names: pretrained mode works offline
    hub = root / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    for arch, cls in (
        ("bmshj2018-factorized", FactorizedPrior),
        ("bmshj2018-hyperprior", ScaleHyperprior),
    ):
        for q in (1, 2, 3, 4):
            name = Path(host_zoo.model_urls[arch]["mse"][q]).name
            torch.save(_tiny(cls, 10 * q).state_dict(), hub / "checkpoints" / name)
    return {"root": root, "data": data, "ckpt": ckpt, "hub": hub}


@pytest.fixture(autouse=True)
def hub_cache(env, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(env["hub"]))


def run(main, argv, capsys):
    capsys.readouterr()
    main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return json.loads(out), err


def fails(argv, capsys, code=1):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        ours.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert exc.value.code == code
    assert "Traceback" not in err
    return err


def source_args(env, mode, arch_file="fact"):
    if mode == "pretrained":
        return ["pretrained"], ["-q", "1,2"]
    return ["checkpoint"], ["-p", env["ckpt"] / f"{arch_file}.pth.tar"]


# -- parity with the host -----------------------------------------------------
@pytest.mark.parametrize("entropy_estimation", [False, True])
@pytest.mark.parametrize("mode", ["pretrained", "checkpoint"])
def test_parity_with_host(env, tmp_path, capsys, mode, entropy_estimation):
    data = env["data"] / ("ee" if entropy_estimation else "parity")
    head, tail = source_args(env, mode)
    ee = ["--entropy-estimation"] if entropy_estimation else []
    common = ["-a", "bmshj2018-factorized", *tail, *ee, "--per-image"]

    expected, _ = run(host.main, [*head, data, *common, "-d", tmp_path / "h"], capsys)
    got, _ = run(ours.main, [*head, data, *common, "-d", tmp_path / "o"], capsys)
    assert got["name"] == expected["name"]
    assert got["description"] == expected["description"]
    assert list(got["results"]) == list(HOST_KEYS)
    for key in COMPARED:
        assert got["results"][key] == pytest.approx(expected["results"][key], abs=1e-4)

    # the same files, with the same content
    files = sorted(p.relative_to(tmp_path / "h") for p in (tmp_path / "h").rglob("*"))
    assert files == sorted(
        p.relative_to(tmp_path / "o") for p in (tmp_path / "o").rglob("*")
    )
    for rel in files:
        if rel.suffix == ".json":
            a = json.loads((tmp_path / "h" / rel).read_text())
            b = json.loads((tmp_path / "o" / rel).read_text())
            assert list(a) == list(b)
            assert {k: a[k] for k in a if k != "results"} == {
                k: b[k] for k in b if k != "results"
            }
            for key in COMPARED:
                assert b["results"][key] == pytest.approx(a["results"][key], abs=1e-4)

    # the -lora model without adaptation codes as its base codec, byte for byte
    # (no update costs 0 bytes): the host's numbers exactly
    lora = ["-a", "bmshj2018-factorized-lora", *tail, *ee, "--no-adapt"]
    got, _ = run(ours.main, [*head, data, *lora], capsys)
    assert got["name"] == "bmshj2018-factorized-lora-mse"
    assert got["description"] == expected["description"]
    assert list(got["results"])[:5] == list(HOST_KEYS)
    for key in COMPARED:
        assert got["results"][key] == expected["results"][key], key
    if mode == "checkpoint":
        assert got["adaptation"]["lmbda"] == [LMBDA]  # from checkpoint["meta"]
        assert got["adaptation"]["enabled"] is False


@pytest.mark.parametrize("arch", ["bmshj2018-factorized", "bmshj2018-hyperprior"])
def test_no_adapt_is_the_host_exactly_on_a_small_image(
    env, tmp_path, capsys, monkeypatch, arch
):
    """On 24x40 pixels one byte is 0.0083 bpp: the counts must be equal."""
    data = tmp_path / "tiny"
    _save_image(data / "t.png", 24, 40, 5)
    ckpt = ["-p", env["ckpt"] / ("fact" if "factorized" in arch else "hyper")]
    ckpt[-1] = ckpt[-1].with_suffix(".pth.tar")
    metrics = host.compute_metrics

    def psnr_only(org, rec, max_val=255):  # the host's MS-SSIM fails below 161 px
        org = (org * max_val).clamp(0, max_val).round()
        rec = (rec * max_val).clamp(0, max_val).round()
        return {"psnr-rgb": host.psnr(org, rec).item(), "ms-ssim-rgb": 0.0}

    monkeypatch.setattr(host, "compute_metrics", psnr_only)
    expected, _ = run(host.main, ["checkpoint", data, "-a", arch, *ckpt], capsys)
    monkeypatch.setattr(host, "compute_metrics", metrics)
    lora = ["checkpoint", data, "-a", f"{arch}-lora", *ckpt, "--no-adapt"]
    got, _ = run(ours.main, lora + ["--lmbda", "0.01"], capsys)
    for key in ("psnr-rgb", "bpp"):
        assert got["results"][key] == expected["results"][key], key


def test_parity_vbr(env, tmp_path, capsys):
    torch.manual_seed(0)
    net = ScaleHyperpriorVbr(8, 8, vr_entbttlnck=True).eval()
    path = tmp_path / "vbr.pth.tar"
    torch.save({"state_dict": net.state_dict()}, path)
    argv = ["checkpoint", env["data"] / "ee", "-a", "bmshj2018-hyperprior-vbr"]
    argv += ["-p", path, "--vbr_quantstep", "4,1"]
    expected, _ = run(host.main, argv, capsys)
    got, _ = run(ours.main, argv, capsys)
    assert got["name"] == expected["name"]
    for key in COMPARED:
        assert got["results"][key] == pytest.approx(expected["results"][key], abs=1e-4)


@pytest.mark.parametrize("arch", sorted(lora_zoo.image_models))
def test_base_checkpoints_load_into_lora(env, tmp_path, capsys, arch):
    base = arch[: -len("-lora")]
    cls = host_zoo.model_architectures[base]
    torch.manual_seed(0)
    net = (cls(8) if base.startswith("cheng2020") else cls(8, 8)).eval()
    net.update(force=True)
    path = tmp_path / "base.pth.tar"
    torch.save({"state_dict": net.state_dict(), "meta": {"lmbda": LMBDA}}, path)
    _save_image(tmp_path / "img" / "a.png", 64, 64, 0)
    argv = ["checkpoint", tmp_path / "img", "-a", arch, "-p", path]
    got, _ = run(ours.main, [*argv, "--no-adapt", "--compare-base"], capsys)
    # the -lora model without adaptation codes as the host class does
    assert got["results"]["delta_psnr-rgb"] == [0.0]
    assert 0 <= got["results"]["delta_bpp"][0] <= 8 / 64**2 + 1e-9


# -- adaptation run, plot, compare-base -----------------------------------------
def test_lora_run_plots(env, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["pretrained", env["data"] / "small", "-a", "bmshj2018-factorized-lora"]
    argv += ["-q", "1,2,3,4", "--refine-steps", "2", "--adapt-steps", "2"]
    argv += ["--compare-base", "-d", out, "--per-image", "-v", "--seed", "3"]
    argv += ["--threads", "1"]
    got, err = run(ours.main, argv, capsys)

    keys = list(got["results"])
    assert keys[:5] == list(HOST_KEYS)
    for key in ("base_bpp", "base_psnr-rgb", "delta_bpp", "delta_psnr-rgb"):
        assert key in keys and keys.index(key) > 4
    assert all(len(v) == 4 for v in got["results"].values())
    # images <= 160 px: MS-SSIM is undefined (pytorch_msssim), PSNR is not
    assert got["results"]["ms-ssim-rgb"] == [None] * 4
    assert all(np.isfinite(got["results"]["psnr-rgb"]))
    assert got["adaptation"]["refine_steps"] == 2
    assert got["adaptation"]["lmbda"] == [0.0018, 0.0035, 0.0067, 0.0130]
    assert "small/a.png [bmshj2018-factorized-lora]" in err  # -v lines

    per_image = json.loads(
        (out / "a-bmshj2018-factorized-lora-mse-1-ans.json").read_text()
    )
    assert per_image["settings"]["seed"] == 3
    assert per_image["adaptation"]["choice"] in ("base", "refined", "update")
    for key in ("update_bpp", "open_gates", "adaptation_time"):
        assert key in per_image["results"]
        assert len(got["results"][key]) == 4 and None not in got["results"][key]
    assert sum(sum(c.values()) for c in got["adaptation"]["choices"]) == 4 * 2

    json_file = out / "bmshj2018-factorized-lora-ans.json"
    assert json.loads(json_file.read_text()) == got
    assert (out / "bmshj2018-factorized-ans.json").is_file()  # base curve
    assert (out / "bmshj2018-factorized-lora-ans.png").stat().st_size > 0
    # the host's plot tool, in this process (a new one spends ~10 s importing)
    matplotlib.use("Agg")
    from compressai.utils.plot import __main__ as plot

    base_file = out / "bmshj2018-factorized-ans.json"
    plot.main(["-f", str(json_file), str(base_file), "-o", str(out / "plot.png")])
    plot.plt.close("all")
    assert (out / "plot.png").stat().st_size > 0


def test_adaptation_statistics(env, tmp_path, capsys, monkeypatch):
    # A real adaptation (2 + 2 steps): settings from the flags, the progress
    # callback, and per-image statistics from model.last_adaptation.
    steps = []

    class RecordingBar(StepBar):
        def __call__(self, info):
            steps.append((info["phase"], info["step"], info["steps"]))
            super().__call__(info)

    monkeypatch.setattr(ours, "StepBar", RecordingBar)
    argv = ["pretrained", env["data"] / "small", "-a", "bmshj2018-factorized-lora"]
    argv += ["-q", "2", "--refine-steps", "2", "--adapt-steps", "2", "--threads", "1"]
    argv += ["--lr", "0.01", "--adapt-lr", "0.005", "--rank", "3", "--lmbda", "0.02"]
    argv += ["--per-image", "-d", tmp_path]
    got, _ = run(ours.main, argv, capsys)
    settings = got["adaptation"]
    assert settings["refine_lr"] == 0.01 and settings["adapt_lr"] == 0.005
    assert settings["rank"] == 3 and settings["enabled"] and settings["threads"] == 1
    assert settings["lmbda"] == [0.02]
    per_image = [("refine", 1, 2), ("refine", 2, 2), ("adapt", 1, 2), ("adapt", 2, 2)]
    assert steps == per_image * 2  # two images

    results = got["results"]
    assert list(results)[:8] == [
        *HOST_KEYS,
        "update_bpp",
        "open_gates",
        "adaptation_time",
    ]
    assert sum(got["adaptation"]["choices"][0].values()) == 2
    stored = []
    for stem, pixels in (("a", 64 * 64), ("b", 24 * 40)):
        path = tmp_path / f"{stem}-bmshj2018-factorized-lora-mse-2-ans.json"
        image = json.loads(path.read_text())
        stats, rv = image["adaptation"], image["results"]
        assert stats["choice"] in ("base", "refined", "update")
        assert stats["lmbda"] == 0.02
        assert rv["update_bpp"] == pytest.approx(stats["update_bits"] / pixels)
        assert rv["open_gates"] == len(stats["open_gates"])
        assert rv["adaptation_time"] == pytest.approx(
            stats["refine_time"] + stats["adapt_time"]
        )
        assert rv["encoding_time"] >= rv["adaptation_time"]
        stored.append(rv)
    for key in ("update_bpp", "open_gates", "adaptation_time"):
        assert results[key][0] == pytest.approx((stored[0][key] + stored[1][key]) / 2)


def test_compare_base_bd_rate(env, capsys):
    argv = ["pretrained", env["data"] / "small", "-a", "bmshj2018-factorized-lora"]
    argv += ["-q", "1,2,3,4", "--no-adapt", "--compare-base"]
    got, _ = run(ours.main, argv, capsys)
    # same codec (plus at most one byte): BD-rate >= 0 and tiny
    assert 0 <= got["bd-rate"]["psnr-rgb"] < 5
    assert got["results"]["delta_psnr-rgb"] == pytest.approx([0] * 4, abs=1e-6)
    assert all(d >= 0 for d in got["results"]["delta_bpp"])
    assert "ms-ssim-rgb" not in got["bd-rate"]  # undefined on small images


def test_checkpoint_lmbda(env, capsys):
    argv = ["checkpoint", env["data"] / "small", "-a", "bmshj2018-hyperprior-lora"]
    argv += ["-p", env["ckpt"] / "hyper.pth.tar"]
    zero = ["--refine-steps", "0", "--adapt-steps", "0"]
    err = fails([*argv, *zero], capsys)
    assert "pass --lmbda" in err
    got, _ = run(ours.main, [*argv, *zero, "--lmbda", "0.01"], capsys)
    assert got["adaptation"]["lmbda"] == [0.01]


# -- resume ---------------------------------------------------------------------
def test_resume(env, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    argv = ["checkpoint", env["data"] / "small", "-a", "bmshj2018-factorized-lora"]
    argv += ["-p", env["ckpt"] / "fact.pth.tar", "--no-adapt"]
    argv += ["--per-image", "-d", out]
    first, _ = run(ours.main, argv, capsys)
    a, b = out / "a-fact-ans.json", out / "b-fact-ans.json"

    calls = []
    inference = seam.inference

    def counting(*args, **kwargs):
        calls.append(1)
        return inference(*args, **kwargs)

    monkeypatch.setattr(seam, "inference", counting)
    # a: stored results are used (marked with a fake PSNR); b: recomputed
    stored = json.loads(a.read_text())
    psnr_a = stored["results"]["psnr-rgb"]
    stored["results"]["psnr-rgb"] = psnr_a + 10
    a.write_text(json.dumps(stored))
    b.unlink()
    second, _ = run(ours.main, argv, capsys)
    assert len(calls) == 1
    assert second["results"]["psnr-rgb"][0] == pytest.approx(
        first["results"]["psnr-rgb"][0] + 5
    )
    assert json.loads(b.read_text())["results"]["bpp"] == pytest.approx(
        json.loads(a.read_text())["results"]["bpp"], rel=10
    )

    # --overwrite recomputes everything
    calls.clear()
    third, _ = run(ours.main, [*argv, "--overwrite"], capsys)
    assert len(calls) == 2
    assert third["results"]["psnr-rgb"] == pytest.approx(first["results"]["psnr-rgb"])

    # other adaptation settings: stored results do not count
    calls.clear()
    run(ours.main, [*argv, "--seed", "7"], capsys)
    assert len(calls) == 2


def test_interrupted_run_resumes(env, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    argv = ["checkpoint", env["data"] / "small", "-a", "bmshj2018-factorized"]
    argv += ["-p", env["ckpt"] / "fact.pth.tar", "--per-image", "-d", out]
    inference = seam.inference
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return inference(*args, **kwargs)

    monkeypatch.setattr(seam, "inference", interrupted)
    err = fails(argv, capsys, code=130)
    assert "resume" in err
    assert [p.name for p in out.iterdir()] == ["a-fact-ans.json"]  # no temp files
    json.loads((out / "a-fact-ans.json").read_text())

    calls.clear()
    got, _ = run(ours.main, argv, capsys)
    assert len(calls) == 1  # only b.png
    assert len(got["results"]["bpp"]) == 1


# -- images ---------------------------------------------------------------------
def test_read_image_modes(tmp_path):
    rgb = tmp_path / "rgb.png"
    _save_image(rgb, 20, 30, 0)
    for mode in ("L", "RGBA", "P"):
        path = tmp_path / f"{mode}.png"
        Image.open(rgb).convert(mode).save(path)
        x = ours.read_image(path)
        assert x.shape == (3, 20, 30)
        assert torch.equal(x, host.read_image(path))  # the host's conversion

    # 16-bit grayscale: PIL's convert("RGB") clips at 255; we scale
    values = np.array([[0, 257, 128 * 257, 65535]], dtype=np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    x = ours.read_image(path)
    assert x.shape == (3, 1, 4)
    expected = torch.tensor([0, 1, 128, 255], dtype=torch.float32) / 255
    assert torch.equal(x[0, 0], expected) and torch.equal(x[2, 0], expected)
    assert host.read_image(path)[0, 0, 1:].eq(1).all()  # what we avoid


def test_mixed_modes_and_small_images(env, tmp_path, capsys):
    data = tmp_path / "data"
    _save_image(data / "rgb.png", 48, 40, 0)
    _save_image(data / "gray.png", 33, 17, 1, mode="L")
    _save_image(data / "rgba.png", 64, 8, 2, mode="RGBA")
    _save_image(data / "palette.png", 16, 70, 3, mode="P")
    Image.fromarray(
        (np.random.RandomState(4).rand(30, 30) * 65535).astype(np.uint16)
    ).save(data / "deep.png")
    for ee in ([], ["--entropy-estimation"]):
        argv = ["checkpoint", data, "-a", "bmshj2018-hyperprior"]
        argv += ["-p", env["ckpt"] / "hyper.pth.tar", "--per-image", "-d", tmp_path]
        got, _ = run(ours.main, [*argv, *ee], capsys)
        assert got["results"]["ms-ssim-rgb"] == [None]
        assert np.isfinite(got["results"]["psnr-rgb"][0])
        assert got["results"]["bpp"][0] > 0
    assert len(list(tmp_path.glob("*-hyper-ans.json"))) == 5


# -- bad input ------------------------------------------------------------------
def test_missing_and_empty_dataset(env, tmp_path, capsys):
    ckpt = ["-p", env["ckpt"] / "fact.pth.tar"]
    arch = ["-a", "bmshj2018-factorized"]
    err = fails(["checkpoint", tmp_path / "nope", *arch, *ckpt], capsys)
    assert "dataset folder not found" in err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    err = fails(["checkpoint", tmp_path / "empty", *arch, *ckpt], capsys)
    assert "no images found" in err


def test_unreadable_files_are_skipped(env, tmp_path, capsys):
    data = tmp_path / "data"
    _save_image(data / "good.png", 32, 32, 0)
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    (data / "text.jpg").write_text("not an image")
    argv = ["checkpoint", data, "-a", "bmshj2018-factorized"]
    argv += ["-p", env["ckpt"] / "fact.pth.tar"]
    got, err = run(ours.main, argv, capsys)
    assert "skipping 2 unreadable" in err
    assert "broken.png" in err and "text.jpg" in err
    (data / "good.png").unlink()
    assert "no readable images" in fails(argv, capsys)


def test_unknown_architecture(env, capsys):
    argv = ["pretrained", env["data"] / "small", "-a", "bmshj2018-nope"]
    assert "invalid choice" in fails(argv, capsys, code=2)


@pytest.mark.parametrize(
    "arch", ["bmshj2018-factorized", "bmshj2018-factorized-lora", "cheng2020-attn"]
)
def test_wrong_architecture_checkpoint(env, capsys, arch):
    argv = ["checkpoint", env["data"] / "small", "-a", arch]
    err = fails([*argv, "-p", env["ckpt"] / "hyper.pth.tar"], capsys)
    assert "cannot load checkpoint" in err and "another architecture" in err
    assert len(err.strip().splitlines()[-1]) < 400
    err = fails([*argv, "-p", env["ckpt"] / "missing.pth.tar"], capsys)
    assert "checkpoint not found" in err
    err = fails([*argv, "-p", env["data"] / "small" / "a.png"], capsys)
    assert "cannot load checkpoint" in err


def test_bad_options(env, capsys):
    data = env["data"] / "small"
    lora = ["-a", "bmshj2018-factorized-lora", "-q", "1"]
    assert "--per-image needs" in fails(
        ["pretrained", data, *lora, "--per-image"], capsys
    )
    assert "invalid adaptation settings" in fails(
        ["pretrained", data, *lora, "--rank", "0"], capsys
    )
    err = fails(
        ["pretrained", data, "-a", "bmshj2018-factorized", "--compare-base"], capsys
    )
    assert "needs a -lora architecture" in err
    assert "invalid qualities" in fails(
        ["pretrained", data, "-a", "bmshj2018-factorized", "-q", "x"], capsys
    )


def test_step_bar():
    bar = StepBar()
    for phase, steps in (("refine", 3), ("adapt", 2)):
        for step in range(steps):
            bar(
                {"phase": phase, "step": step, "steps": steps, "loss": 1.0, "gates": []}
            )
        assert bar.bar.total == steps and bar.bar.n == steps
    bar.close()
