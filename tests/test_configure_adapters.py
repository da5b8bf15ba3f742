"""Reconfiguring merged adapters leaves no update in the host kernels."""

import pytest
import torch

from compressai_lora.adapt import AdaptConfig

NAME = "bmshj2018-hyperprior-lora"


@pytest.fixture
def merged_pair(helpers):
    """Host model, -lora model with a nonzero update merged, original kernels."""
    host = helpers.build_host("bmshj2018-hyperprior")
    lora = helpers.build_lora(NAME, host.state_dict())
    kernels = {p: m.base.weight.detach().clone() for p, m in lora.adapters().items()}
    assert helpers.set_random_update(lora)
    lora.merge_adapters()
    assert any(m.merged for m in lora.adapters().values())
    changed = [
        p
        for p, m in lora.adapters().items()
        if not torch.equal(m.base.weight, kernels[p])
    ]
    assert changed  # the merged update really sits in some base kernels
    return host, lora, kernels


# the adapt_config setter reconfigures only when rank or form change
CASES = [
    ("configure_adapters", 3, "full"),
    ("configure_adapters", 2, "full"),
    ("configure_adapters", 3, "separable"),
    ("configure_adapters", 2, "separable"),
    ("adapt_config", 3, "full"),
    ("adapt_config", 2, "full"),
    ("adapt_config", 3, "separable"),
]


@pytest.mark.parametrize("via, rank, form", CASES)
def test_reconfigure_restores_the_exact_host_kernels(
    merged_pair, image, via, rank, form
):
    host, lora, kernels = merged_pair
    if via == "configure_adapters":
        lora.configure_adapters(rank, form)
    else:
        lora.adapt_config = AdaptConfig().replace(enabled=False, rank=rank, form=form)
    adapters = lora.adapters()
    for path, m in adapters.items():
        assert (m.rank, m.form) == (rank, form), path
        assert not m.merged and not m.gate, path
        assert torch.equal(m.base.weight, kernels[path]), path
    # the host's own modules hold the original kernels too (no stale copies)
    host_params = dict(host.named_parameters())
    for path in adapters:
        weight = lora.get_submodule(path).base.weight
        assert torch.equal(weight, host_params[f"{path}.weight"]), path
    with torch.no_grad():
        ref = host.compress(image)
        ref_hat = host.decompress(ref["strings"], ref["shape"])["x_hat"]
        out = lora.compress(image)
        x_hat = lora.decompress(out["strings"], out["shape"])["x_hat"]
        assert torch.equal(lora(image)["x_hat"], host(image)["x_hat"])
    assert out["strings"] == ref["strings"] + [[b""]]
    assert torch.equal(x_hat, ref_hat)
