"""A non-zero update travels in the bitstream and decodes exactly elsewhere."""

import pytest
import torch

from compressai_lora.models import LoRAModelMixin
from compressai_lora.update_stream import DEFAULT_STEP_CODE


@pytest.fixture
def coded(lora_model, image, helpers):
    """Encoder-side strings with a random update (some gates open)."""
    with torch.no_grad():
        latent = lora_model.compress(image)  # gates closed: the host's latents
    opened = helpers.set_random_update(lora_model, seed=1)
    assert 0 < len(opened) < len(lora_model.adapters())
    update = lora_model.encode_update()
    strings = latent["strings"][:-1] + [[update]]
    return {"strings": strings, "shape": latent["shape"], "update": update}


def test_fresh_model_decodes_the_encoders_reconstruction(
    name, host_model, lora_model, coded, helpers
):
    x_hat = lora_model.decompress(coded["strings"], coded["shape"])["x_hat"]
    decoder = helpers.build_lora(name, host_model.state_dict())
    decoded = decoder.decompress(coded["strings"], coded["shape"])["x_hat"]
    assert torch.equal(decoded, x_hat)


def test_update_changes_the_reconstruction(host_model, lora_model, coded):
    with torch.no_grad():
        base = host_model.decompress(coded["strings"][:-1], coded["shape"])["x_hat"]
    x_hat = lora_model.decompress(coded["strings"], coded["shape"])["x_hat"]
    assert x_hat.shape == base.shape
    assert not torch.equal(x_hat, base)


def test_update_bytes_are_counted_in_bpp(coded):
    strings = coded["strings"]
    assert strings[-1] == [coded["update"]]
    assert len(coded["update"]) > 2
    latent_bytes = sum(len(s[0]) for s in strings[:-1])
    total = sum(len(s[0]) for s in strings)  # the host's eval_model formula
    assert total == latent_bytes + len(coded["update"])


def test_decompress_leaves_the_model_unchanged(lora_model, coded, helpers):
    weights = helpers.clone_state_dict(lora_model)
    adapters = helpers.adapter_state(lora_model)
    lora_model.decompress(coded["strings"], coded["shape"])
    helpers.assert_same_state(lora_model, weights, adapters)


def test_decoded_update_is_the_quantized_encoder_update(lora_model, coded):
    decoded = lora_model.decode_update(coded["update"])
    expected = lora_model.quantized_update(DEFAULT_STEP_CODE)
    assert decoded.keys() == expected.keys()
    for i, update in expected.items():
        assert decoded[i].step == update.step
        assert decoded[i].symbols.keys() == update.symbols.keys()
        for key, value in update.symbols.items():
            assert torch.equal(decoded[i].symbols[key], value), (i, key)


def test_decompress_restores_the_model_when_decoding_fails(
    lora_model, coded, helpers, monkeypatch
):
    """Even if the host decoder raises with the update merged in."""
    mro = type(lora_model).__mro__
    after_mixin = mro[mro.index(LoRAModelMixin) + 1 :]
    host_cls = next(c for c in after_mixin if "decompress" in vars(c))

    def broken(self, strings, shape):
        assert any(m.merged for m in self.adapters().values())
        raise RuntimeError("host decoder failed")

    weights = helpers.clone_state_dict(lora_model)
    adapters = helpers.adapter_state(lora_model)
    monkeypatch.setattr(host_cls, "decompress", broken)
    with pytest.raises(RuntimeError, match="host decoder failed"):
        lora_model.decompress(coded["strings"], coded["shape"])
    helpers.assert_same_state(lora_model, weights, adapters)
