"""Importing the package registers the models; the host version is checked."""

import os
import subprocess
import sys
from pathlib import Path

import compressai
import pytest

import compressai_lora

ROOT = Path(compressai_lora.__file__).resolve().parent.parent

SCRIPT = """
import compressai.registry, compressai.zoo
assert "cheng2020-attn-lora" not in compressai.zoo.image_models
import compressai_lora
model = compressai.zoo.image_models["cheng2020-attn-lora"](quality=1)
assert type(model).__name__ == "Cheng2020AttentionLoRA", type(model)
assert isinstance(model, compressai.zoo.image.model_architectures["cheng2020-attn"])
assert compressai.registry.MODELS["cheng2020-attn-lora"] is type(model)
assert model.g_a[0].conv1.weight.shape[0] == 128
print("ok")
"""


def test_import_registers_in_a_fresh_interpreter():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), env.get("PYTHONPATH")])
    )
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("found", ["1.3.0", "1.2.7", "2.0.0", "0.9", "unknown"])
def test_unsupported_host_version_raises(monkeypatch, found):
    monkeypatch.setattr(compressai, "__version__", found)
    with pytest.raises(ImportError, match=r"compressai>=1\.2\.8,<1\.3") as err:
        compressai_lora.host.check_version()
    assert f"found {found}" in str(err.value)
    assert "pip install" in str(err.value)


@pytest.mark.parametrize("found", ["1.2.8", "1.2.9", "1.2.8+cu121", "1.2.10.dev0"])
def test_supported_host_version_passes(monkeypatch, found):
    monkeypatch.setattr(compressai, "__version__", found)
    compressai_lora.host.check_version()
