"""CompressAI's own plot tool (``python -m compressai.utils.plot``) reads the
JSON our eval_model writes with ``-d``, and the ``-base`` JSON of
``--compare-base``.  A tiny random model, two rate points, one 32x32 image."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from compressai.models import FactorizedPrior
from compressai.utils.plot.__main__ import parse_json_file
from PIL import Image

from compressai_lora.utils.eval_model import __main__ as eval_model


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, Path]:
    """eval_model's JSON files of a tiny -lora run with --compare-base."""
    root = tmp_path_factory.mktemp("plot")
    rng = np.random.RandomState(0)
    (root / "images").mkdir()
    Image.fromarray((rng.rand(32, 32, 3) * 255).astype(np.uint8)).save(
        root / "images" / "a.png"
    )
    paths = []
    for q, lmbda in ((1, 0.0018), (2, 0.0067)):
        torch.manual_seed(q)
        net = FactorizedPrior(8, 8).eval()
        net.update(force=True)
        path = root / f"tiny-q{q}.pth.tar"
        torch.save({"state_dict": net.state_dict(), "meta": {"lmbda": lmbda}}, path)
        paths.append(str(path))
    argv = ["checkpoint", str(root / "images"), "-a", "bmshj2018-factorized-lora"]
    argv += ["-p", *paths, "--compare-base", "-d", str(root / "out")]
    argv += ["-o", "ours.json", "--refine-steps", "1", "--adapt-steps", "1"]
    printed = eval_model.evaluate(argv)
    out = root / "out"
    files = {"ours": out / "ours.json", "base": out / "ours-base.json"}
    assert all(p.is_file() for p in files.values())
    assert json.loads(files["ours"].read_text())["results"] == printed["results"]
    return {**files, "root": root}


def test_host_plot_tool_reads_both_files(outputs):
    fig = outputs["root"] / "rd.png"
    env = {**os.environ, "MPLBACKEND": "Agg"}
    files = [str(outputs["ours"]), str(outputs["base"])]
    proc = subprocess.run(
        [sys.executable, "-m", "compressai.utils.plot", "-f", *files, "-o", str(fig)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("which", ["ours", "base"])
def test_host_parser_gets_our_curves(outputs, which):
    """What the tool plots: the name, and one finite (bpp, PSNR) per rate point."""
    data = json.loads(outputs[which].read_text())
    curve = parse_json_file(outputs[which], "psnr")
    name = "bmshj2018-factorized" + ("-lora" if which == "ours" else "")
    assert curve["name"] == data["name"] == f"{name}-mse"
    assert curve["xs"] == data["results"]["bpp"] and len(curve["xs"]) == 2
    assert curve["ys"] == data["results"]["psnr-rgb"]
    assert all(math.isfinite(v) and v > 0 for v in curve["xs"] + curve["ys"])
