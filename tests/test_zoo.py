"""Zoo factories: the host's signatures, errors and pretrained loading."""

import inspect
import os
import re
from urllib.parse import urlparse

import compressai.zoo
import compressai.zoo.image
import pytest
import torch
import torch.hub

from compressai_lora.adapt import AdaptConfig, lmbda_for
from compressai_lora.zoo import image_models, model_architectures


def _host_factory(name):
    return compressai.zoo.image_models[model_architectures[name].host_arch]


def _bad_qualities(host_arch):
    top = max(compressai.zoo.image.cfgs[host_arch])
    return sorted({0, 9, top + 1})  # 7 for cheng2020


def _host_error(factory, **kwargs):
    with pytest.raises(ValueError) as err:
        factory(**kwargs)
    return str(err.value)


def test_signature_is_the_hosts(name):
    ours = inspect.signature(image_models[name])
    host = inspect.signature(_host_factory(name))
    assert ours == host


def test_bad_quality_like_the_host(name, host_arch):
    qualities = _bad_qualities(host_arch)
    if host_arch.startswith("cheng2020"):
        assert 7 in qualities
    for quality in qualities:
        message = _host_error(_host_factory(name), quality=quality)
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            image_models[name](quality=quality)


@pytest.mark.parametrize("quality", [1, 0, 9])
def test_bad_metric_like_the_host(name, quality):
    message = _host_error(_host_factory(name), quality=quality, metric="psnr")
    assert "psnr" in message
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        image_models[name](quality=quality, metric="psnr")


def test_builds_the_host_architecture(name, host_arch):
    """quality 1 has the host's layer shapes (and keys); adapters start empty."""
    torch.manual_seed(0)
    model = image_models[name](quality=1)
    host = _host_factory(name)(quality=1)
    assert type(model) is model_architectures[name]
    ours = {k: v.shape for k, v in model.state_dict().items()}
    assert ours == {k: v.shape for k, v in host.state_dict().items()}
    assert not any(m.gate for m in model.adapters().values())
    assert model.default_lmbda == lmbda_for(1, "mse")


def test_adapt_config_from_kwargs():
    name = "bmshj2018-factorized-lora"
    model = image_models[name](quality=2, metric="ms-ssim", rank=3, enabled=False)
    assert model.adapt_config == AdaptConfig(metric="ms-ssim", rank=3, enabled=False)
    assert all(m.rank == 3 for m in model.adapters().values())
    assert model.default_lmbda == lmbda_for(2, "ms-ssim")
    cfg = AdaptConfig().replace(enabled=False, form="full")
    model = image_models[name](quality=2, adapt=cfg)
    assert model.adapt_config == cfg
    assert all(m.form == "full" for m in model.adapters().values())


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """An empty torch.hub cache in ``tmp_path``; downloading fails the test."""

    def no_download(url, *args, **kwargs):
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(torch.hub, "_hub_dir", torch.hub.get_dir())
    torch.hub.set_dir(str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path


@pytest.mark.parametrize(
    "name, quality, metric",
    [("bmshj2018-hyperprior-lora", 3, "mse"), ("cheng2020-attn-lora", 2, "ms-ssim")],
)
def test_pretrained_loads_from_hub_cache(hub_dir, helpers, name, quality, metric):
    host_arch = model_architectures[name].host_arch
    url = compressai.zoo.image.model_urls[host_arch][metric][quality]
    base = helpers.build_host(host_arch)
    path = hub_dir / "checkpoints" / os.path.basename(urlparse(url).path)
    path.parent.mkdir()
    torch.save(base.state_dict(), path)

    model = image_models[name](quality=quality, metric=metric, pretrained=True)

    assert type(model) is model_architectures[name]
    loaded = model.state_dict()
    assert list(loaded) == list(base.state_dict())
    for key, value in base.state_dict().items():
        assert torch.equal(loaded[key], value), key
    assert not any(m.gate for m in model.adapters().values())
    assert model.adapt_config.metric == metric
    assert model.default_lmbda == lmbda_for(quality, metric)
    # The host factory reads the very same file.
    host = _host_factory(name)(quality=quality, metric=metric, pretrained=True)
    assert type(host) is compressai.zoo.image.model_architectures[host_arch]
