"""The seam to CompressAI (compressai_lora.host): what it protects exists."""

import importlib
import re
from pathlib import Path

import pytest
import torch

from compressai_lora import host

PACKAGE = Path(__file__).resolve().parents[1] / "compressai_lora"
INTERNALS = re.compile(
    r"_get_medians|\._compress_ar|\._likelihood|_CXX|_quantized_cdf|_cdf_length"
    r"|_offset\b"
    r"|compressai.utils.eval_model.__main__|\._actions"
)


def _resolve(module: str, path: str):
    obj = importlib.import_module(module)
    for step in path.split("."):
        if step.endswith("()"):
            cls = getattr(obj, step[:-2])
            obj = cls(4) if module == "compressai.entropy_models" else cls()
        else:
            obj = getattr(obj, step)
    return obj


@pytest.mark.parametrize("module,path", host.PROTECTED, ids=lambda v: str(v))
def test_protected_symbol_exists(module, path):
    threads = torch.get_num_threads()
    try:
        assert _resolve(module, path) is not None
    finally:
        torch.set_num_threads(threads)


def test_no_internals_outside_the_seam():
    found = [
        f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "host.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if INTERNALS.search(line)
    ]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    "arch,expected",
    [
        ("bmshj2018-factorized", (16,)),
        ("bmshj2018-hyperprior", (16, 64)),
        ("mbt2018-mean", (16, 64)),
        ("mbt2018", (16, 64)),
        ("cheng2020-anchor", (16, 64)),
    ],
)
def test_latent_strides_match_the_shapes_compress_returns(arch, expected):
    from compressai.zoo.image import model_architectures

    cls = model_architectures[arch]
    net = (cls(8) if arch.startswith("cheng") else cls(8, 8)).eval()
    net.update(force=True)
    assert host.latent_strides(net) == expected
    x = torch.rand(1, 3, 128, 192)
    with torch.no_grad():
        y = net.g_a(x)
        out = net.compress(x)
    assert tuple(y.shape[-2:]) == (128 // expected[0], 192 // expected[0])
    assert tuple(out["shape"]) == (128 // expected[-1], 192 // expected[-1])


def test_inference_with_metrics_runs_the_host_code_without_patching_it():
    from compressai.zoo.image import model_architectures

    script = host.eval_script(keep_threads=True)
    original = script.compute_metrics
    torch.manual_seed(0)
    net = model_architectures["bmshj2018-factorized"](8, 8).eval()
    net.update(force=True)
    x = torch.rand(3, 170, 180)
    seen = []

    def metrics(org, rec, max_val=255):
        seen.append(tuple(org.shape))
        return original(org, rec, max_val)

    ours = host.inference(net, x, metrics=metrics)
    theirs = script.inference(net, x)
    assert seen == [(1, 3, 170, 180)]
    assert script.compute_metrics is original
    for key in ("psnr-rgb", "ms-ssim-rgb", "bpp"):
        assert ours[key] == theirs[key]
