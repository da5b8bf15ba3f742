"""Base (host) checkpoints load strictly; the state dict has the host's keys."""

import compressai.zoo.image
import torch

from compressai_lora.zoo import model_architectures


def _assert_weights_equal(state_dict, reference):
    assert list(state_dict) == list(reference)
    for key, value in reference.items():
        assert torch.equal(state_dict[key], value), key


def test_from_state_dict_loads_base_checkpoint(name, host_model):
    model = model_architectures[name].from_state_dict(host_model.state_dict())
    assert type(model) is model_architectures[name]
    _assert_weights_equal(model.state_dict(), host_model.state_dict())


def test_strict_load_state_dict(name, host_arch, host_model, helpers):
    model = model_architectures[name](*helpers.host_args(host_arch))
    result = model.load_state_dict(host_model.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    _assert_weights_equal(model.state_dict(), host_model.state_dict())


def test_state_dict_has_exactly_the_host_keys(name, host_arch, helpers):
    args = helpers.host_args(host_arch)
    model = model_architectures[name](*args)
    host = compressai.zoo.image.model_architectures[host_arch](*args)
    assert list(model.state_dict()) == list(host.state_dict())


def test_state_dict_carries_no_adapter_state(lora_model, helpers):
    """An open update is per-image state: it is not saved with the weights."""
    keys = list(lora_model.state_dict())
    helpers.set_random_update(lora_model)
    assert list(lora_model.state_dict()) == keys
    assert not any(".base." in k or k.endswith((".A", ".B", ".K")) for k in keys)


def test_lora_checkpoint_loads_into_host(host_arch, lora_model, helpers):
    host = compressai.zoo.image.model_architectures[host_arch](
        *helpers.host_args(host_arch)
    )
    host.load_state_dict(lora_model.state_dict(), strict=True)
    _assert_weights_equal(host.state_dict(), lora_model.state_dict())
