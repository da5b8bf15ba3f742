"""python -m compressai_lora.utils.bench: aggregation on hand-made statistics,
subset selection, and a tiny end-to-end run (random N = 8 cheng2020-attn
checkpoints, two 64x64 domains)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compressai_lora.utils.bd import bd_psnr, bd_rate
from compressai_lora.utils.bench import __main__ as bench
from compressai_lora.utils.bench.errors import BenchError

LAYER = "g_s.1.conv1"


def _stats(J, bpp, dist, choice, update_bits=8, gates=(), lmbda=0.01):
    return {
        "lmbda": lmbda,
        "choice": choice,
        "J": J,
        "bpp": bpp,
        "dist": dist,
        "update_bits": update_bits,
        "open_gates": list(gates),
        "refine_time": 1.0,
        "adapt_time": 2.0,
    }


def _psnr(dist: float) -> float:
    return 10 * math.log10(255**2 / dist)


# -- aggregation -------------------------------------------------------------
def test_image_points_refine_is_better_of_base_and_refined():
    st = _stats(
        {"base": 1.0, "refined": 0.9, "update": 0.8},
        {"base": 0.5, "refined": 0.45, "update": 0.6},
        {"base": 50.0, "refined": 45.0, "update": 20.0},
        "update",
    )
    p = bench.image_points(st)
    assert [p[m]["candidate"] for m in bench.METHODS] == ["base", "refined", "update"]
    assert p["full"]["bpp"] == 0.6
    assert p["full"]["psnr-rgb"] == pytest.approx(_psnr(20.0))
    # refinement lost: refinement-only sends the base latents
    st["J"]["refined"] = 1.2
    assert bench.image_points(st)["refine"]["candidate"] == "base"
    # no refined candidate at all (refine_steps 0)
    del st["J"]["refined"]
    assert bench.image_points(st)["refine"]["candidate"] == "base"


def test_image_points_refine_counts_earlier_refined_latents():
    st = _stats(
        {"base": 1.0, "refined": 0.9, "refined@500": 0.85, "update": 0.8},
        {"base": 0.5, "refined": 0.45, "refined@500": 0.44, "update": 0.6},
        {"base": 50.0, "refined": 45.0, "refined@500": 44.0, "update": 20.0},
        "update",
    )
    assert bench.image_points(st)["refine"]["candidate"] == "refined@500"
    st["J"]["refined@500"] = 0.95
    assert bench.image_points(st)["refine"]["candidate"] == "refined"


def test_aggregate_rate_point_by_hand():
    a = _stats(
        {"base": 1.0, "refined": 0.9, "update": 0.8},
        {"base": 0.5, "refined": 0.4, "update": 0.6},
        {"base": 50.0, "refined": 45.0, "update": 20.0},
        "update",
        update_bits=1000,
        gates=[LAYER, "g_s.2.conv"],
    )
    b = _stats(
        {"base": 1.0, "refined": 1.1},
        {"base": 0.3, "refined": 0.2},
        {"base": 30.0, "refined": 40.0},
        "base",
        update_bits=8,
    )
    records = [
        {
            "stats": a,
            "results": {"encoding_time": 4.0, "decoding_time": 0.5, "bpp": 0.6},
            "base_results": {"encoding_time": 1.0, "decoding_time": 0.4},
            "pixels": 10000,
        },
        {
            "stats": b,
            "results": {"encoding_time": 2.0, "decoding_time": 0.3, "bpp": 0.3},
            "base_results": {"encoding_time": 1.0, "decoding_time": 0.2},
            "pixels": 10000,
        },
    ]
    row = bench.aggregate_rate_point(records)
    assert row["images"] == 2 and row["lmbda"] == 0.01
    assert row["base"]["bpp"] == pytest.approx(0.4)
    assert row["refine"]["bpp"] == pytest.approx((0.4 + 0.3) / 2)
    assert row["full"]["bpp"] == pytest.approx((0.6 + 0.3) / 2)
    assert row["base"]["psnr-rgb"] == pytest.approx((_psnr(50) + _psnr(30)) / 2)
    assert row["refine"]["psnr-rgb"] == pytest.approx((_psnr(45) + _psnr(30)) / 2)
    assert row["full"]["psnr-rgb"] == pytest.approx((_psnr(20) + _psnr(30)) / 2)
    assert row["update_bpp"] == pytest.approx((0.1 + 0.0008) / 2)
    assert row["update_share"] == pytest.approx(row["update_bpp"] / 0.45)
    assert row["choices"] == {"update": 1, "base": 1}
    assert row["open_gates"] == {LAYER: 1, "g_s.2.conv": 1}
    assert row["time"]["encode"] == pytest.approx(3.0)
    assert row["time"]["base_decode"] == pytest.approx(0.3)
    assert row["time"]["adapt"] == pytest.approx(2.0)
    assert row["check"]["max_abs_bpp_stats_vs_bitstream"] == pytest.approx(0.0)


def test_find_per_image_tells_base_from_lora(tmp_path):
    cpt = "cheng2020-attn-N64-q1"
    files = {
        f"a-{cpt}-ans.json": {"source": "a", "name": "cheng2020-attn-lora"},
        f"a-{cpt}-cheng2020-attn-ans.json": {"source": "a", "name": "cheng2020-attn"},
        f"a-b-{cpt}-ans.json": {"source": "a-b", "name": "cheng2020-attn-lora"},
        f"a-{cpt}0-ans.json": {"source": "a", "name": "cheng2020-attn-lora"},
    }
    for name, data in files.items():
        (tmp_path / name).write_text(json.dumps({**data, "file": name}))
    lora = bench.find_per_image(tmp_path, "a", cpt, "cheng2020-attn-lora")
    base = bench.find_per_image(tmp_path, "a", cpt, "cheng2020-attn")
    assert lora["file"] == f"a-{cpt}-ans.json"
    assert base["file"] == f"a-{cpt}-cheng2020-attn-ans.json"
    assert bench.find_per_image(tmp_path, "a", "other", "cheng2020-attn") is None


def _domain(factor: float) -> list[list[dict]]:
    """4 rate points; the update sends the base quality at ``factor`` x bits."""
    rate_points = []
    for i, (b, d) in enumerate([(0.1, 80.0), (0.2, 50.0), (0.4, 30.0), (0.8, 15.0)]):
        st = _stats(
            {"base": 1.0, "refined": 1.0, "update": 0.5},
            {"base": b, "refined": b, "update": factor * b},
            {"base": d, "refined": d, "update": d},
            "update",
            gates=[LAYER],
            lmbda=0.001 * (i + 1),
        )
        rate_points.append([{"stats": st, "results": {}, "pixels": 100}])
    return rate_points


def test_aggregate_domain_bd_rate():
    d = bench.aggregate_domain(_domain(0.9))
    assert d["bd_rate"]["full"]["value"] == pytest.approx(-10.0)
    assert d["bd_rate"]["refine"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert d["bd_rate"]["full"]["psnr"] > 0
    assert d["bd_rate"]["refine"]["psnr"] == pytest.approx(0.0, abs=1e-9)
    assert d["open_gates"] == {LAYER: 4}
    assert d["choices"] == {"update": 4}
    assert d["curves"]["full"]["bpp"] == pytest.approx([0.09, 0.18, 0.36, 0.72])
    assert "base_vs_host_base" not in d["bd_rate"]  # no host base results
    # fewer than 4 rate points: no BD-rate, and it says why
    short = bench.aggregate_domain(_domain(0.9)[:3])
    assert short["bd_rate"]["full"]["value"] is None
    assert "rate points" in short["bd_rate"]["full"]["why"]


def test_bd_rate_undefined_says_why():
    """4 rate points whose PSNR ranges do not overlap: None, and the reason."""
    rate_points = _domain(0.9)
    for records in rate_points:  # the update 60 dB higher: no shared range
        records[0]["stats"]["dist"]["update"] /= 1e6
    d = bench.aggregate_domain(rate_points)
    assert d["bd_rate"]["full"]["value"] is None
    assert d["bd_rate"]["full"]["why"]["value"] == "the two curves do not overlap"
    assert d["bd_rate"]["refine"]["value"] == pytest.approx(0.0, abs=1e-9)


def test_summarize_and_markdown():
    domains = {}
    for name, factor in (("kodak", 1.0), ("pixel", 0.8), ("screen", 0.9)):
        d = bench.aggregate_domain(_domain(factor))
        d["images"] = 1
        domains[name] = d
    s = bench.summarize(domains)
    assert s["ood_mean_bd_rate_full"] == pytest.approx(-15.0)
    assert s["ood_mean_bd_rate_refine"] == pytest.approx(0.0, abs=1e-9)
    assert s["paired_mean_bd_rate_full"] == pytest.approx(-15.0)
    assert s["kodak_bd_rate_full"] == pytest.approx(0.0, abs=1e-9)
    assert s["ood_domains_bd_rate_full"] == 2
    assert s["paired_domains_bd_rate"] == ["pixel", "screen"]
    # a domain where only one method has a value is left out of the paired mean
    domains["screen"]["bd_rate"]["full"] = {"value": None, "psnr": None, "why": "x"}
    s2 = bench.summarize(domains)
    assert s2["paired_domains_bd_rate"] == ["pixel"]
    assert s2["paired_mean_bd_rate_full"] == pytest.approx(-20.0)
    assert s2["ood_domains_bd_rate_refine"] == 2
    md = bench.markdown(
        {"domains": domains, "summary": s, "rate_points": ["q1", "q2", "q3", "q4"]}
    )
    assert "| pixel | 1 | +0.00% | -20.00% | +0.000 / +" in md
    assert f"| {LAYER} | 4 | 4 | 4 |" in md


# -- subset ------------------------------------------------------------------
def _save_image(path: Path, h: int, w: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    low = rng.rand(h // 8 + 1, w // 8 + 1, 3)
    img = np.kron(low, np.ones((8, 8, 1)))[:h, :w] * 200 + rng.rand(h, w, 3) * 55
    Image.fromarray(img.astype(np.uint8)).save(path)


def test_prepare_subset_first_sorted_centre_crop(tmp_path):
    data = tmp_path / "data"
    _save_image(data / "ood" / "pixel" / "b.png", 40, 100, 0)
    _save_image(data / "ood" / "pixel" / "a.png", 80, 60, 1)
    (data / "ood" / "pixel" / "README.txt").write_text("not an image")
    args = bench.setup_args().parse_args(
        ["--data", str(data), "-o", str(tmp_path / "out"), "--crop", "50"]
    )
    subset = bench.prepare_subset(args, ["pixel"])
    assert subset == {
        "pixel": [
            {
                "source": "a.png",
                "image": "a.png",
                "box": [5, 15, 55, 65],
                "size": [50, 50],
            }
        ]
    }
    with Image.open(data / "ood" / "pixel" / "a.png") as img:
        expected = np.asarray(img)[15:65, 5:55]
    with Image.open(tmp_path / "out" / "images" / "pixel" / "a.png") as img:
        assert np.array_equal(np.asarray(img), expected)
    args.images_per_domain = 2  # b.png is 40 px high: that side is kept
    assert [e["size"] for e in bench.prepare_subset(args, ["pixel"])["pixel"]] == [
        [50, 50],
        [40, 50],
    ]
    args.full = True
    assert [e["size"] for e in bench.prepare_subset(args, ["pixel"])["pixel"]] == [
        [80, 60],
        [40, 100],
    ]


def test_crops_of_16_bit_grayscale_keep_its_range(tmp_path):
    """A 16-bit source is scaled to 8 bits (Pillow's convert("RGB") clips it)."""
    data = tmp_path / "data"
    src = data / "ood" / "line" / "g16.png"
    src.parent.mkdir(parents=True)
    ramp = np.linspace(0, 65535, 80 * 60).round().astype(np.uint16).reshape(80, 60)
    Image.fromarray(ramp).save(src)
    with Image.open(src) as img:
        assert img.mode.startswith("I")  # stored as 16 bits
    args = bench.setup_args().parse_args(
        ["--data", str(data), "-o", str(tmp_path / "out"), "--crop", "50"]
    )
    assert bench.prepare_subset(args, ["line"])["line"][0]["box"] == [5, 15, 55, 65]
    with Image.open(tmp_path / "out" / "images" / "line" / "g16.png") as img:
        assert img.mode == "RGB"
        crop = np.asarray(img)
    gray = np.rint(ramp[15:65, 5:55] * (255 / 65535)).astype(np.uint8)
    assert np.array_equal(crop, np.repeat(gray[:, :, None], 3, axis=2))
    assert crop.min() < 64 and crop.max() > 192  # the range, not clipped to 255


def test_missing_domain_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--data", str(tmp_path), "-o", str(tmp_path / "out")])
    assert exc.value.code == 1
    assert capsys.readouterr().err.startswith("Error: ")


@pytest.mark.parametrize("failure", ["cli", "oserror", "argparse"])
def test_eval_model_failure_is_a_bench_error(monkeypatch, capsys, failure):
    from compressai_lora.utils.bench import evaluation
    from compressai_lora.utils.bench.errors import BenchError
    from compressai_lora.utils.eval_model import CLIError
    from compressai_lora.utils.eval_model import __main__ as eval_model

    def evaluate(argv):
        if failure == "cli":
            raise CLIError("no checkpoint given (-p)")
        if failure == "oserror":
            raise OSError(28, "No space left on device", "out/a.json")
        raise SystemExit(2)

    monkeypatch.setattr(eval_model, "evaluate", evaluate)
    with pytest.raises(BenchError) as exc:
        evaluation.run_eval_model(["checkpoint", "imgs"])
    status = 2 if failure == "argparse" else 1
    assert str(exc.value) == f"eval_model exited with status {status}: checkpoint imgs"
    err = capsys.readouterr().err
    if failure == "cli":
        assert err == "Error: no checkpoint given (-p)\n"
    elif failure == "oserror":
        assert err == "Error: cannot access out/a.json: No space left on device\n"


# -- end to end --------------------------------------------------------------
def _checkpoints(folder: Path) -> list[Path]:
    """4 random-weight cheng2020-attn (N = 8) checkpoints with meta['lmbda']."""
    from compressai.models import Cheng2020Attention

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for q, lmbda in enumerate((0.0018, 0.0035, 0.0067, 0.013), start=1):
        torch.manual_seed(q)
        net = Cheng2020Attention(8).eval()
        with torch.no_grad():  # latents large enough to carry content
            last = [m for m in net.g_a.modules() if isinstance(m, torch.nn.Conv2d)]
            last[-1].weight.mul_(10)
        net.update(force=True)
        path = folder / f"tiny-q{q}.pth.tar"
        torch.save({"state_dict": net.state_dict(), "meta": {"lmbda": lmbda}}, path)
        paths.append(path)
    return paths


def _check_bd(d: dict) -> None:
    """BD-rate of 4 rate points: finite, and bd_rate of the curves in results.json;
    BD-PSNR: bd_psnr of the curves, or None with the reason."""
    base = d["curves"]["base"]
    for m in ("refine", "full"):
        c, bd = d["curves"][m], d["bd_rate"][m]
        args = (base["bpp"], base["psnr-rgb"], c["bpp"], c["psnr-rgb"])
        assert isinstance(bd["value"], float) and math.isfinite(bd["value"]), bd
        assert bd["value"] == pytest.approx(bd_rate(*args), rel=1e-12)
        try:
            expected = bd_psnr(*args)
        except ValueError as err:
            assert bd["psnr"] is None and bd["why"]["psnr"] == str(err), bd
        else:
            assert bd["psnr"] == pytest.approx(expected, rel=1e-12), bd


@pytest.mark.slow
def test_end_to_end(tmp_path, capsys):
    data = tmp_path / "data"
    _save_image(data / "kodak" / "k.png", 64, 64, 0)
    _save_image(data / "ood" / "pixel" / "p.png", 80, 72, 1)
    _checkpoints(tmp_path / "ckpt")
    out = tmp_path / "out"
    argv = ["--data", str(data), "--domains", "kodak", "pixel", "-o", str(out)]
    argv += ["--weights", str(tmp_path / "ckpt" / "tiny-q{q}.pth.tar")]
    argv += ["--crop", "64", "--refine-steps", "1", "--adapt-steps", "1"]
    argv += ["--threads", "1"]
    bench.main(argv)
    table = capsys.readouterr().out
    assert "| kodak | 1 |" in table and "| pixel | 1 |" in table
    assert (out / "results.md").read_text() == table
    results = json.loads((out / "results.json").read_text())
    assert list(results["domains"]) == ["kodak", "pixel"]
    assert results["rate_points"] == [f"tiny-q{q}" for q in range(1, 5)]
    for name, d in results["domains"].items():
        assert (out / d["plot"]).stat().st_size > 0
        assert len(d["rate_points"]) == 4
        assert d["sizes"] == [[64, 64]]
        assert "problems" not in d
        assert d["time"]["base_encode"] < d["time"]["encode"]  # adaptation
        _check_bd(d)
        for row in d["rate_points"]:
            for m in bench.METHODS:
                assert row[m]["bpp"] > 0 and math.isfinite(row[m]["psnr-rgb"])
            # the statistics agree with eval_model's real bitstream
            assert row["check"]["max_abs_bpp_stats_vs_bitstream"] < 1e-9
            assert row["check"]["max_abs_psnr_stats_vs_bitstream"] < 1e-3
    assert not results["failed"]
    # crops of the data are in the work dir, never beside the data
    assert (out / "images" / "pixel" / "p.png").is_file()
    # a rerun resumes from the per-image results; another crop is refused
    bench.main([*argv, "--report-only"])
    capsys.readouterr()
    crop = out / "images" / "pixel" / "p.png"
    before = crop.read_bytes()
    with pytest.raises(SystemExit) as exc:
        bench.main([*argv, "--crop", "32"])
    assert exc.value.code == 1
    assert "another subset" in capsys.readouterr().err
    assert crop.read_bytes() == before  # the crops of the first run are kept


# -- checkpoints per architecture ----------------------------------------------
def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_checkpoints_found_by_arch_and_quality(tmp_path):
    from compressai_lora.utils.bench.weights import find_checkpoints

    w = tmp_path / "w"
    _touch(w, *(f"mbt2018-mean-N64-q{q}.pth.tar" for q in (1, 2, 3, 4)))
    _touch(w, "mbt2018-N192-q1.pth.tar", "mbt2018-mean-N64-q1.json")
    _touch(w, "cheng2020-attn-N128-q2.pth.tar", "cheng2020-attn-N64-q12.pth.tar")
    found = find_checkpoints(w, "mbt2018-mean-lora", [1, 2, 3, 4])
    assert [p.name for p in found] == [f"mbt2018-mean-N64-q{q}.pth.tar" for q in "1234"]
    # another width is found, a longer quality number is not q1
    assert find_checkpoints(w, "cheng2020-attn-lora", [2])[0].name == (
        "cheng2020-attn-N128-q2.pth.tar"
    )
    assert find_checkpoints(w, "mbt2018-lora", [1])[0].name == "mbt2018-N192-q1.pth.tar"
    with pytest.raises(BenchError, match=r"no checkpoint cheng2020-attn-N\*-q1"):
        find_checkpoints(w, "cheng2020-attn-lora", [1, 2])
    _touch(w, "mbt2018-mean-N128-q3.pth.tar")
    with pytest.raises(BenchError, match="several checkpoints for mbt2018-mean q3"):
        find_checkpoints(w, "mbt2018-mean-lora", [3])


def test_weights_patterns_and_lists(tmp_path):
    from compressai_lora.utils.bench.weights import weight_paths

    _touch(tmp_path, *(f"{a}-N8-q{q}.pth.tar" for a in ("x", "y") for q in (1, 2)))

    def paths(*argv):
        args = bench.setup_args().parse_args(["--qualities", "1,2", *argv])
        return {a: [p.name for p in weight_paths(args, a)] for a in args.architecture}

    two = ["-a", "x-lora", "y-lora"]
    pattern = str(tmp_path / "{arch}-N8-q{q}.pth.tar")
    expected = {a: [f"{a[0]}-N8-q1.pth.tar", f"{a[0]}-N8-q2.pth.tar"] for a in two[1:]}
    assert paths(*two, "--weights", pattern) == expected
    assert paths(*two, "--weights-dir", str(tmp_path)) == expected
    one = str(tmp_path / "x-N8-q1.pth.tar")
    assert paths("-a", "y-lora", "--weights", one) == {"y-lora": ["x-N8-q1.pth.tar"]}
    bad = {
        "needs '{arch}'": [*two, "--weights", str(tmp_path / "x-N8-q{q}.pth.tar")],
        "lists paths for one architecture": [*two, "--weights", one],
        "only '{q}' and '{arch}'": ["-a", "x-lora", "--weights", "{q}{n}"],
        "not found": ["-a", "x-lora", "--weights", str(tmp_path / "{q}.pth.tar")],
        "invalid --qualities": ["-a", "x-lora", "--qualities", "1,a"],
    }
    for why, argv in bad.items():
        with pytest.raises(BenchError, match=re.escape(why)):
            paths(*argv)


# -- tables of several architectures and anchors -------------------------------
def test_markdown_several_architectures_and_anchors(tmp_path):
    from compressai_lora.utils.bench.compare import bd_vs_anchors, cross_summary
    from compressai_lora.utils.bench.plots import plot_combined, plot_domain

    archs = {}
    for arch, factors in (("a-lora", (1.0, 0.8)), ("b-lora", (0.9, 0.5))):
        domains = {}
        for name, factor in zip(("kodak", "pixel"), factors):
            d = bench.aggregate_domain(_domain(factor))
            d["images"], d["plot"] = 1, f"{arch}/rd-{name}.png"
            domains[name] = d
        archs[arch] = {
            "domains": domains,
            "summary": bench.summarize(domains),
            "rate_points": ["q1", "q2", "q3", "q4"],
        }
    # an anchor at twice the base's bits (same PSNR); one 30 dB above it
    base = archs["a-lora"]["domains"]["kodak"]["curves"]["base"]
    twice = {"bpp": [2 * b for b in base["bpp"]], "psnr-rgb": base["psnr-rgb"]}
    far = {"bpp": base["bpp"], "psnr-rgb": [p + 30 for p in base["psnr-rgb"]]}
    anchors = {
        "qualities": [10, 50, 90, 95],
        "codecs": {
            "jpeg": {"label": "JPEG", "options": {}, "pillow": "13.0.0"},
            "webp": {"label": "WebP", "options": {"method": 6}, "pillow": "13.0.0"},
        },
        "skipped": {"avif": "AVIF: Pillow 13.0.0 has no avif"},
        "domains": {
            n: {"jpeg": {"curves": twice}, "webp": {"curves": far, "lossless": [95]}}
            for n in ("kodak", "pixel")
        },
    }
    for r in archs.values():
        for n, d in r["domains"].items():
            d["bd_vs_anchors"] = bd_vs_anchors(d["curves"], anchors["domains"][n])
    results = {
        "architectures": archs,
        "anchors": anchors,
        "cross": cross_summary(archs),
        "plots": {"kodak": "rd-kodak.png"},
    }
    md = bench.markdown(results)
    lines = md.splitlines()
    assert lines[0] == "## Across architectures: BD-rate vs each one's base codec"
    assert lines[2] == (
        "| domain | a-lora refine-only | a-lora full | b-lora refine-only "
        "| b-lora full |"
    )
    assert "| kodak | +0.0% | +0.0% | +0.0% | -10.0% |" in lines
    assert "| pixel | +0.0% | -20.0% | +0.0% | -50.0% |" in lines
    assert "| OOD mean (paired) | +0.0% | -20.0% | +0.0% | -50.0% |" in lines
    assert "![kodak](rd-kodak.png)" in lines
    assert lines.index("## a-lora") < lines.index("## b-lora")
    assert "![pixel](b-lora/rd-pixel.png)" in lines
    # per architecture: our base and full vs each anchor; dB* where no overlap
    head = "| domain | base vs JPEG | full vs JPEG | base vs WebP | full vs WebP |"
    assert md.count(head) == 2
    b_kodak = archs["b-lora"]["domains"]["kodak"]["bd_vs_anchors"]
    assert b_kodak["jpeg"]["base"]["value"] == pytest.approx(-50.0)
    assert b_kodak["jpeg"]["full"]["value"] == pytest.approx(-55.0)
    psnr = b_kodak["webp"]["full"]["psnr"]
    assert psnr == pytest.approx(-30.0, abs=2.0)
    assert f"| kodak | -50.0% | -55.0% | -30.00 dB* | {psnr:+.2f} dB* |" in lines
    assert "Skipped: AVIF: Pillow 13.0.0 has no avif." in lines
    assert "kodak webp q95 (lossless)" in md
    # one architecture: its tables first, as before several were possible
    one = bench.markdown(
        {"architectures": {"a-lora": archs["a-lora"]}, "anchors": anchors}
    )
    assert one.startswith("| domain | images | BD-rate refine-only |")
    assert "Across architectures" not in one and one.count(head) == 1
    # the plots: ours and the anchors' curves
    kodak = {a: r["domains"]["kodak"] for a, r in archs.items()}
    plot_domain(tmp_path / "one.png", "kodak", kodak["a-lora"], anchors)
    plot_combined(tmp_path / "all.png", "kodak", kodak, anchors)
    for name in ("one.png", "all.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


# -- several architectures end to end (tiny models, one 32x32 crop) -----------
ARCHS = ("bmshj2018-factorized-lora", "bmshj2018-hyperprior-lora")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, helpers):
    """Data (one Kodak image) and N = 8 checkpoints of two architectures, named
    as the weights folder names them."""
    root = tmp_path_factory.mktemp("bench")
    _save_image(root / "data" / "kodak" / "k.png", 40, 48, 0)
    for arch in ARCHS:
        host = arch[: -len("-lora")]
        for q, lmbda in enumerate((0.0018, 0.0035, 0.0067, 0.013), start=1):
            net = helpers.build_host(host, seed=q)
            ckpt = {"state_dict": net.state_dict(), "meta": {"lmbda": lmbda}}
            (root / "w").mkdir(exist_ok=True)
            torch.save(ckpt, root / "w" / f"{host}-N8-q{q}.pth.tar")
    argv = ["--data", str(root / "data"), "--domains", "kodak", "--crop", "32"]
    argv += ["--weights-dir", str(root / "w"), "--threads", "1"]
    argv += ["--refine-steps", "1", "--adapt-steps", "1"]
    argv += ["--anchors", "jpeg", "webp", "--anchor-qualities", "10,30,50,70,90"]
    return root, argv


@pytest.fixture
def no_render(monkeypatch):
    """Plots are written without rendering (a few seconds each on a busy CPU);
    test_markdown_several_architectures_and_anchors renders them."""
    from matplotlib.figure import Figure

    monkeypatch.setattr(Figure, "savefig", lambda self, f, **kw: f.write(b"PNG"))


def _anchor_cells(d: dict, anchors: dict) -> list[str]:
    """The anchor table's cells of one domain, recomputed from the curves."""
    from compressai_lora.utils.bench.compare import bd_cell

    cells = []
    for codec in ("jpeg", "webp"):
        a = anchors["domains"]["kodak"][codec]["curves"]
        for m in ("base", "full"):
            ours = d["curves"][m]
            got = d["bd_vs_anchors"][codec][m]
            try:
                value = bd_rate(a["bpp"], a["psnr-rgb"], ours["bpp"], ours["psnr-rgb"])
            except ValueError:
                assert got["value"] is None
            else:
                assert got["value"] == pytest.approx(value, rel=1e-12)
            cells.append(bd_cell(got))
    return cells


def test_several_architectures(tiny, capsys, monkeypatch, no_render):
    from compressai_lora.utils.bench import anchors as anchor_codecs

    root, argv = tiny
    out = root / "multi"
    argv = [*argv, "-a", *ARCHS, "-o", str(out)]
    bench.main(argv)
    md = capsys.readouterr().out
    assert (out / "results.md").read_text() == md
    results = json.loads((out / "results.json").read_text())
    assert list(results["architectures"]) == list(ARCHS)
    assert "domains" not in results and not results["failed"]
    assert not (out / "kodak").exists()  # each architecture in its own folder
    for arch in ARCHS:
        host = arch[: -len("-lora")]
        r = results["architectures"][arch]
        assert r["rate_points"] == [f"{host}-N8-q{q}" for q in range(1, 5)]
        d = r["domains"]["kodak"]
        assert d["plot"] == f"{arch}/rd-kodak.png" and (out / d["plot"]).is_file()
        names = {p.name for p in (out / arch / "kodak").glob("k-*.json")}
        assert names == {
            f"k-{host}-N8-q{q}-{x}ans.json"
            for q in range(1, 5)
            for x in ("", host + "-")
        }
        _check_bd(d)
        assert results["cross"]["domains"]["kodak"][arch] == {
            m: d["bd_rate"][m] for m in ("refine", "full")
        }
        line = "| kodak | " + " | ".join(_anchor_cells(d, results["anchors"])) + " |"
        section = md.split(f"\n## {arch}\n")[1].split("\n## ")[0]
        assert section.count(line) == 1 and "| domain | base vs JPEG |" in section
    assert (out / "rd-kodak.png").is_file() and results["plots"] == {
        "kodak": "rd-kodak.png"
    }
    cross = [c for a in ARCHS for m in ("refine", "full") for c in [f"{a} {m}"]]
    assert (
        md.splitlines()[2]
        == "| domain | " + " | ".join(cross).replace("refine", "refine-only") + " |"
    )
    # anchors: real bytes, cached per image; a rerun codes nothing again
    jpeg = results["anchors"]["domains"]["kodak"]["jpeg"]
    cache = json.loads((out / "anchors" / "kodak" / "k-jpeg.json").read_text())
    assert jpeg["qualities"] == [10, 30, 50, 70, 90]
    assert jpeg["curves"]["bpp"] == [
        8 * cache["points"][str(q)]["bytes"] / (32 * 32) for q in jpeg["qualities"]
    ]

    def refuse(*args):
        raise AssertionError("coded again")

    monkeypatch.setattr(anchor_codecs, "code_image", refuse)
    bench.main(argv)
    assert capsys.readouterr().out == md


def test_one_architecture_keeps_its_layout(tiny, capsys, no_render):
    root, argv = tiny
    out = root / "one"
    bench.main([*argv, "-a", ARCHS[0], "-o", str(out), "--anchors", "jpeg"])
    md = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert md.startswith("| domain | images | BD-rate refine-only |")
    assert "Across architectures" not in md and "| domain | base vs JPEG |" in md
    assert (out / "kodak").is_dir() and (out / "rd-kodak.png").is_file()
    assert results["settings"]["architecture"] == ARCHS[0]
    assert results["domains"] == results["architectures"][ARCHS[0]]["domains"]
    assert results["domains"]["kodak"]["plot"] == "rd-kodak.png"
    assert list(results["domains"]["kodak"]["bd_vs_anchors"]) == ["jpeg"]
    assert results["rate_points"][0] == "bmshj2018-factorized-N8-q1"


def test_one_records_file_resumes_the_run_elsewhere(
    tiny, capsys, monkeypatch, no_render
):
    """records.jsonl alone (the per-job files gone) resumes the run without
    coding anything again, to the same results; a broken line is refused."""
    import shutil

    from compressai_lora.utils.bench import anchors as anchor_codecs
    from compressai_lora.utils.eval_model.shard import Shard

    root, argv = tiny
    out, moved = root / "records-a", root / "records-b"
    run = [*argv, "-a", ARCHS[0], "--anchors", "jpeg"]
    bench.main([*run, "-o", str(out)])
    md = capsys.readouterr().out
    lines = (out / "records.jsonl").read_text().splitlines()
    files = sorted(
        p.relative_to(out).as_posix()
        for p in out.rglob("*.json")
        if p.parent != out and p.parts[-3:-1] != ("images", "kodak")
    )
    assert [json.loads(x)["file"] for x in lines] == files
    assert any(f.endswith("-jpeg.json") for f in files)  # the anchors' too
    assert sum(f.startswith("kodak/k-") for f in files) == 8  # 4 rates x 2
    # the process's peak after each adapted image, in its per-image file
    host = ARCHS[0][: -len("-lora")]
    ours = json.loads((out / "kodak" / f"k-{host}-N8-q1-ans.json").read_text())
    assert ours["peak_rss_bytes"] > 2**20
    assert "| peak memory |" in md and " MB (0.00 MP) |" in md
    moved.mkdir()
    shutil.copy(out / "records.jsonl", moved / "records.jsonl")

    def refuse(*args):
        raise AssertionError("coded again")

    monkeypatch.setattr(anchor_codecs, "code_image", refuse)
    monkeypatch.setattr(Shard, "computing", refuse)
    bench.main([*run, "-o", str(moved)])
    assert capsys.readouterr().out == md
    assert (moved / "records.jsonl").read_text() == (out / "records.jsonl").read_text()
    (moved / "records.jsonl").write_text(lines[0] + "\n{not json\n")
    with pytest.raises(SystemExit) as exc:
        bench.main([*run, "-o", str(moved), "--report-only"])
    assert exc.value.code == 1
    assert "records.jsonl line 2 is not a record" in capsys.readouterr().err
    assert (moved / "records.jsonl").read_text() == lines[0] + "\n{not json\n"


def test_images_per_domain_and_skip(tmp_path):
    from compressai_lora.utils.bench.subset import counts

    assert counts(["2", "kodak=4"], ["kodak", "pixel"]) == {"kodak": 4, "pixel": 2}
    assert counts(["kodak=3"], ["kodak", "line"]) == {"kodak": 3, "line": 1}
    assert counts(3, ["line"]) == {"line": 3}
    for bad, why in (("moon=2", "unknown domain 'moon'"), ("0", "N >= 1"),
                     ("kodak=x", "N >= 1")):  # fmt: skip
        with pytest.raises(BenchError, match=why):
            counts([bad], ["kodak"])
    data = tmp_path / "data"
    for i, name in enumerate("abcd"):
        _save_image(data / "ood" / "pixel" / f"{name}.png", 40, 40, i)
    _save_image(data / "kodak" / "k1.png", 40, 40, 5)
    args = bench.setup_args().parse_args(
        [
            "--data",
            str(data),
            "-o",
            str(tmp_path / "out"),
            "--skip",
            "1",
            "--images-per-domain",
            "2",
            "kodak=1",
        ]  # fmt: skip
    )
    with pytest.raises(BenchError, match="no images in .*kodak after the first 1"):
        bench.plan_subset(args, ["pixel", "kodak"])
    subset = bench.plan_subset(args, ["pixel"])
    assert [e["source"] for e in subset["pixel"]] == ["b.png", "c.png"]


@pytest.mark.parametrize("rank", [0, 1])
def test_each_rank_codes_its_share_of_the_anchors(tmp_path, monkeypatch, rank):
    """Under torchrun the ranks deal the anchor images round-robin (no image
    coded twice); the main process then only codes what is still missing."""
    coded = []

    def run_anchors(out, share, codecs, qualities, compute=True, overwrite=False):
        coded.append((share, compute))
        return {}, {}

    monkeypatch.setattr(bench, "run_anchors", run_anchors)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", str(rank))
    subset = {"kodak": [{"image": "k1"}, {"image": "k2"}], "line": [{"image": "l1"}]}
    args = bench.setup_args().parse_args(["--anchors", "jpeg", "-o", str(tmp_path)])
    bench._code_anchor_share(args, subset)
    mine = {0: {"kodak": [{"image": "k1"}], "line": [{"image": "l1"}]},
            1: {"kodak": [{"image": "k2"}]}}  # fmt: skip
    assert coded == [(mine[rank], True)]
    bench._anchors(args, subset)  # the report: only rank 0 codes what is missing
    assert coded[1] == (subset, rank == 0)
